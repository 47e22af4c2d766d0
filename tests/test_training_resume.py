"""A training job killed mid-run resumes from its checkpoint and ends exactly where an uninterrupted run ends.

Through the pipeline, for both backends with 2 ranks: a full `snakemake` run gives the reference; then the training
step is forced to run again and its launcher (`<package>.local_ranks`) and every rank are SIGKILLed as soon as the
first checkpoint is on disk. Snakemake sees the job fail and deletes its declared outputs; the checkpoint, which
is not one of them, survives. A plain rerun of `snakemake` resumes from it and must produce the identical
training history, the identical weights and the identical held-out metrics. A second scenario kills Snakemake
itself with everything under it (a node failure): the stale lock needs `snakemake --unlock`, then the rerun
resumes the same way. A third sends SIGTERM to the launcher (what a scheduler does at a time limit): the ranks
write a checkpoint at an agreed step and stop, and the rerun resumes from exactly there.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from conftest import command_env, generate, project_helper, run

pytestmark = pytest.mark.e2e

CHECKPOINT = "results/checkpoints/train_model/checkpoint.pt"
EVERY = 50  # steps
# Shorter than the demo (30 epochs) to keep the suite quick; 22 steps per epoch with the demo data and 2 ranks.
EPOCHS = 12
STEPS = EPOCHS * 22


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_as_uninterrupted(model_dir: Path, reference: dict) -> dict:
    """The resumed run's every epoch's loss and accuracy and every weight equal the uninterrupted run's."""
    history = json.loads((model_dir / "history.json").read_text())
    assert history["history"] == reference["history"]["history"]
    resumed = weights(model_dir / "model.pt")
    assert resumed.keys() == reference["weights"].keys()
    for name, tensor in reference["weights"].items():
        assert torch.equal(resumed[name], tensor), name
    return history


def kill_training(snakemake: psutil.Process, timeout: float = 120) -> None:
    """SIGKILL the training launcher and all its ranks (the job's processes), as a node failure would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree = snakemake.children(recursive=True)
        launchers = [p for p in tree if _is_training(p) and not _is_training_parent(p, tree)]
        if launchers:
            victims = []
            for launcher in launchers:
                victims += [launcher, *launcher.children(recursive=True)]
            for process in victims:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(victims, timeout=30)
            return
        time.sleep(0.05)
    raise AssertionError("no training process found under snakemake")


def wait_for_checkpoint(workflow: subprocess.Popen, path, timeout: float = 300) -> None:
    """Poll until the running workflow's training has written its first checkpoint; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not (path / CHECKPOINT).exists():
        assert workflow.poll() is None, workflow.stdout.read() if workflow.stdout else "workflow ended first"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def _is_training(process: psutil.Process) -> bool:
    try:
        return any(word.endswith(".train") for word in process.cmdline())
    except psutil.NoSuchProcess:
        return False


def _is_training_parent(process: psutil.Process, tree: list[psutil.Process]) -> bool:
    try:
        return any(_is_training(parent) for parent in process.parents() if parent in tree)
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module", params=["horovod", "torch_ddp"])
def project(request, tmp_path_factory):
    backend = request.param
    path = generate(tmp_path_factory.mktemp(f"resume-{backend}"), training_backend=backend)
    config = path / "config/config.yaml"
    text, count = re.subn(r"checkpoint_every: \d+", f"checkpoint_every: {EVERY}", config.read_text())
    assert count == 1
    text, count = re.subn(r"epochs: \d+", f"epochs: {EPOCHS}", text)
    assert count == 1
    config.write_text(text)
    run(["snakemake", "--profile", "profiles/local"], path)
    reference = {
        "history": json.loads((path / "results/model/history.json").read_text()),
        "weights": weights(path / "results/model/model.pt"),
        "metrics": json.loads((path / "results/metrics.json").read_text()),
    }
    return backend, path, reference


def test_a_finished_run_leaves_no_checkpoint_behind(project):
    _, path, reference = project
    assert reference["history"]["resumed_from_step"] == 0
    assert f"checkpoint at step 50/{STEPS}" in (path / "logs/train_model.log").read_text()
    assert not (path / CHECKPOINT).exists()


@pytest.mark.reliability(
    tried="SIGKILL of the training launcher and all its ranks",
    sees="the rerun resumes from the last checkpoint",
    left="a checkpoint; the resumed model equals the uninterrupted one",
)
def test_killed_training_resumes_to_the_same_result(project):
    backend, path, reference = project
    killed = subprocess.Popen(
        ["snakemake", "--profile", "profiles/local", "--forcerun", "train_model"],
        cwd=path, env=command_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_checkpoint(killed, path)
        kill_training(psutil.Process(killed.pid))
        output, _ = killed.communicate(timeout=120)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode != 0, output
    assert "Error in rule train_model" in output, output
    log = (path / "logs/train_model.log").read_text()
    assert "saved results/model/model.pt" not in log, "training finished before it was killed"
    # Snakemake removed the failed job's declared outputs, not the checkpoint.
    assert not (path / "results/model/model.pt").exists()
    assert (path / CHECKPOINT).is_file()

    rerun = run(["snakemake", "--profile", "profiles/local"], path)
    assert "(Rule: train_model)" in rerun.stdout + rerun.stderr
    log = (path / "logs/train_model.log").read_text()
    match = re.search(rf"resuming from checkpoint step (\d+)/{STEPS}", log)
    assert match, log[-3000:]
    step = int(match.group(1))
    assert 0 < step < STEPS and step % EVERY == 0
    # Exactly the uninterrupted run: every epoch's loss and accuracy, every weight, the held-out metrics.
    history = assert_same_as_uninterrupted(path / "results/model", reference)
    assert history["resumed_from_step"] == step
    assert (history["backend"], history["world_size"]) == (backend, 2)
    metrics = json.loads((path / "results/metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "weighted_f1", "per_class"):
        assert metrics[key] == reference["metrics"][key], key
    assert not (path / CHECKPOINT).exists()


@pytest.mark.reliability(
    tried="SIGKILL of the whole Snakemake run during training",
    sees="the rerun resumes training only",
    left="a checkpoint; finished steps are not redone",
)
def test_resumes_after_the_whole_workflow_was_killed(project):
    """Node loss: Snakemake itself and everything under it SIGKILLed; `snakemake --unlock`, rerun, same result."""
    _, path, reference = project
    killed = subprocess.Popen(
        ["snakemake", "--profile", "profiles/local", "--forcerun", "train_model"],
        cwd=path, env=command_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_checkpoint(killed, path)
        top = psutil.Process(killed.pid)
        everything = [top, *top.children(recursive=True)]
        for process in everything:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(everything, timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
        killed.wait(timeout=30)
    assert "saved results/model/model.pt" not in (path / "logs/train_model.log").read_text()
    assert (path / CHECKPOINT).is_file()

    locked = run(["snakemake", "--profile", "profiles/local"], path, check=False)
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr
    run(["snakemake", "--unlock"], path)
    run(["snakemake", "--profile", "profiles/local"], path)
    log = (path / "logs/train_model.log").read_text()
    assert re.search(rf"resuming from checkpoint step [1-9]\d*/{STEPS}", log), log[-3000:]
    assert_same_as_uninterrupted(path / "results/model", reference)
    assert not (path / CHECKPOINT).exists()


@pytest.mark.reliability(
    tried="SIGTERM (Slurm time limit, scancel) during training",
    sees="a checkpoint at the next agreed step; the rerun resumes",
    left="a checkpoint",
)
def test_sigterm_checkpoints_and_the_rerun_resumes(project, tmp_path):
    """A scheduler's time limit or `scancel` sends SIGTERM: the ranks agree on a step, checkpoint there and stop."""
    import shlex
    import signal

    backend, path, reference = project
    launch = project_helper(path, "launch")
    hyperparameters = yaml.safe_load((path / "config/config.yaml").read_text())["train"]["hyperparameters"]
    command = launch.training_command(
        launcher="local", backend=backend, processes=2, package=path.name.replace("-", "_"),
        args=["--train", "data/processed/train.npz", "--out-dir", str(tmp_path / "model"),
              "--params", json.dumps(hyperparameters), "--checkpoint-dir", str(tmp_path / "checkpoints"),
              "--checkpoint-every", "0"],  # no periodic checkpoints: the only one is written on SIGTERM
    )
    env = command_env(PYTHONPATH=str(path / "src"))
    launcher = subprocess.Popen(shlex.split(command), cwd=path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in launcher.stdout:
            lines.append(line)
            if f"epoch   3/{EPOCHS}" in line:
                launcher.send_signal(signal.SIGTERM)  # to the launcher only: it passes it on to the ranks
                break
        lines.append(launcher.communicate(timeout=120)[0])
    finally:
        if launcher.poll() is None:
            launcher.kill()
    output = "".join(lines)
    # The launcher (<package>.local_ranks) passes SIGTERM on and exits with the ranks' status: 143.
    assert launcher.returncode == 143, output
    match = re.search(r"SIGTERM: stopped at step (\d+) on request", output)
    assert match, output[-3000:]
    step = int(match.group(1))
    assert step % 10 == 0 and 0 < step < STEPS
    assert (tmp_path / "checkpoints" / "checkpoint.pt").is_file()
    assert not (tmp_path / "model" / "model.pt").exists()

    rerun = run(command, path, PYTHONPATH=str(path / "src"))
    assert f"resuming from checkpoint step {step}/{STEPS}" in rerun.stdout + rerun.stderr
    history = json.loads((tmp_path / "model" / "history.json").read_text())
    assert history["history"] == reference["history"]["history"]
