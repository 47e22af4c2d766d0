"""benchmarks/gpu_figures.py on a machine without a GPU: its arguments, its plan, and its refusal. The figures
themselves need a GPU (none on the test machines); these checks keep the prepared script runnable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import TEMPLATE_DIR

SCRIPT = TEMPLATE_DIR / "benchmarks/gpu_figures.py"
NO_GPU = {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": "", "ROCR_VISIBLE_DEVICES": ""}


def script(*args: str, tmp_path):
    import os

    env = {**os.environ, **NO_GPU}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def test_help_names_every_option(tmp_path):
    result = script("--help", tmp_path=tmp_path)
    assert result.returncode == 0
    for option in ("--json", "--repeats", "--gpus", "--dry-run", "--allow-cpu", "--keep"):
        assert option in result.stdout


def test_without_a_gpu_it_refuses_before_generating_anything(tmp_path):
    result = script("--json", "figures.json", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "ERROR: no GPU is visible to torch" in result.stderr and "--allow-cpu" in result.stderr
    assert not (tmp_path / "figures.json").exists() and list(tmp_path.iterdir()) == []


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    result = script("--dry-run", "--gpus", "4", "--json", "f.json", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "visible GPUs: 0" in out and "would write f.json" in out
    for case in ("torch_ddp 1 rank, gpu: torch_ddp, 1 rank(s), --device gpu",
                 "horovod 1 rank, gpu: horovod, 1 rank(s), --device gpu",
                 "torch_ddp 4 ranks, gpu: torch_ddp, 4 rank(s), --device gpu",
                 "horovod 4 ranks, gpu: horovod, 4 rank(s), --device gpu",
                 "torch_ddp 1 rank, cpu: torch_ddp, 1 rank(s), --device cpu"):
        assert case in out, case
    assert "a real run would stop" in out
    assert list(tmp_path.iterdir()) == []
    allowed = script("--dry-run", "--allow-cpu", tmp_path=tmp_path)
    assert "--device gpu" not in allowed.stdout and "a real run would stop" not in allowed.stdout


@pytest.mark.parametrize("args, message", [
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--gpus", "0"], "--gpus must be at least 1"),
    (["--backend", "x"], "unrecognized arguments: --backend x"),
])
def test_bad_arguments_are_refused(tmp_path, args, message):
    result = script(*args, tmp_path=tmp_path)
    assert result.returncode == 2 and message in result.stderr


def test_plan_ratios_and_device_line():
    sys.path.insert(0, str(TEMPLATE_DIR / "benchmarks"))
    import gpu_figures

    assert [case.name for case in gpu_figures.plan(1, 16)] == [
        "torch_ddp 1 rank, gpu", "horovod 1 rank, gpu", "torch_ddp 1 rank, cpu"]
    assert gpu_figures.plan(1, 16)[-1].threads == 16  # the CPU side gets every core
    values = {"torch_ddp 1 rank, gpu": [1000.0, 1200.0], "torch_ddp 1 rank, cpu": [100.0, 100.0],
              "torch_ddp 2 ranks, gpu": [1900.0, 2400.0], "horovod 1 rank, gpu": [900.0, 1000.0],
              "horovod 2 ranks, gpu": [1700.0, 1900.0]}
    rows = {row["name"]: row for row in gpu_figures.ratio_rows(values, 2)}
    assert rows["gpu / cpu (torch_ddp, 1 rank)"]["median"] == 11.0
    assert rows["torch_ddp: 2 ranks / 1 rank (ideal 2)"]["samples"] == [1.9, 2.0]
    assert rows["horovod / torch_ddp (2 ranks)"]["median"] == pytest.approx((1700 / 1900 + 1900 / 2400) / 2, abs=1e-4)
    log = "training with torch_ddp on 2 rank(s), global batch 8192, 4 epochs, 65536 samples, on cuda:0 (NVIDIA H200), 1 thread(s) per rank"
    assert gpu_figures.device_line(log) == "cuda:0 (NVIDIA H200)"
    assert gpu_figures.device_line("nothing") == "unknown"
