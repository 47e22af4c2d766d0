"""A generated project's whole pipeline through Slurm with the LUMI profile, on the suite's own mini-LUMI cluster.

Checked from the accounting database (sacct), as a user would: every step ran as a Slurm job on the partition the
LUMI mapping chose, under the project account, with the intended task and CPU counts; training ran 2 ranks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

from conftest import BIN_DIR, generate, run

pytestmark = pytest.mark.slurm

ACCOUNT = "project_465000001"
RULES = ("fetch_data", "start_tracking", "prepare_data", "train_model", "evaluate_model")


@pytest.fixture(scope="module")
def lumi_run(slurm_cluster, tmp_path_factory):
    project = generate(
        tmp_path_factory.mktemp("slurm"), cluster="lumi", slurm_account=ACCOUNT, training_backend="torch_ddp"
    )
    config_path = project / "config/config.yaml"
    config = yaml.safe_load(config_path.read_text())
    # Two (stand-in) GPUs on one small-g node: two training ranks started by srun.
    config["resources"]["train_model"] = {"gpus": 2, "nodes": 1, "runtime": 30}
    config["resources"]["default"]["mem_mb"] = 2000
    config["train"]["hyperparameters"]["epochs"] = 10
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**slurm_cluster.env, "PATH": os.pathsep.join([str(slurm_cluster.bin_dir), str(BIN_DIR), os.environ["PATH"]])}
    result = run(["snakemake", "--profile", "profiles/lumi"], project, timeout=900, **env)
    return project, result, slurm_cluster


def slurm_job_ids(project) -> dict[str, str]:
    """rule -> Slurm job id, from the kept per-job logs logs/slurm/rule_<rule>/<jobid>.log."""
    ids = {}
    for log in (project / "logs/slurm").rglob("*.log"):
        match = re.search(r"rule_(\w+)", str(log.relative_to(project)))
        if match:
            ids[match.group(1)] = log.stem
    return ids


def sacct(cluster, job_id: str, fields: str) -> list[dict[str, str]]:
    names = fields.split(",")
    out = subprocess.run(
        ["sacct", "-n", "-P", "-j", job_id, f"--format={fields}"],
        capture_output=True, text=True, check=True, timeout=30, env=cluster.subprocess_env(),
    ).stdout
    return [dict(zip(names, line.split("|"))) for line in out.splitlines() if line]


def test_every_step_ran_as_a_slurm_job(lumi_run):
    project, _, cluster = lumi_run
    ids = slurm_job_ids(project)
    assert set(RULES) <= set(ids), ids
    for rule in RULES:
        job = sacct(cluster, ids[rule], "JobID,Partition,Account,State")[0]
        assert job["State"] == "COMPLETED", (rule, job)
        assert job["Account"] == ACCOUNT
        assert job["Partition"] == ("small-g" if rule == "train_model" else "small"), (rule, job)


def test_cpu_steps_got_one_task_one_cpu(lumi_run):
    project, _, cluster = lumi_run
    ids = slurm_job_ids(project)
    for rule in ("fetch_data", "prepare_data", "evaluate_model"):
        job = sacct(cluster, ids[rule], "JobID,AllocCPUS,AllocTRES")[0]
        assert job["AllocCPUS"] == "1", (rule, job)
        assert "gres/gpu" not in job["AllocTRES"]


def test_training_ran_two_ranks_on_two_gpus(lumi_run):
    project, _, cluster = lumi_run
    rows = sacct(cluster, slurm_job_ids(project)["train_model"], "JobID,JobName,NTasks,AllocCPUS,AllocTRES")
    allocation = rows[0]
    assert "gres/gpu=2" in allocation["AllocTRES"]
    assert allocation["AllocCPUS"] == "14"  # 2 tasks x 7 CPUs per GPU, as on LUMI
    assert any(row["NTasks"] == "2" for row in rows[1:]), rows  # the srun step that started the ranks
    history = json.loads((project / "results/model/history.json").read_text())
    assert (history["backend"], history["world_size"]) == ("torch_ddp", 2)
    assert json.loads((project / "results/metrics.json").read_text())["accuracy"] >= 0.9
