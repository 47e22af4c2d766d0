"""A generated project's whole pipeline through Slurm with the LUMI profile, on the suite's own mini-LUMI cluster.

Checked from the accounting database (sacct), as a user would: every step ran as a Slurm job on the partition the
LUMI mapping chose, under the project account, with the intended task and CPU counts; training ran 2 ranks on each
of the two nodes (each node in its own network namespace), with the lumi profile's own launcher (srun) for both
backends, met at the first node's address, and trained the same model as one rank.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from conftest import BIN_DIR, generate, project_helper, run
from slurm_cluster import CLUSTER_NAME

pytestmark = pytest.mark.slurm

ACCOUNT = "project_465000001"
RULES = ("prepare_data", "train_model", "evaluate_model")
# The download from the DVC remote and the bookkeeping steps run where Snakemake runs (localrules), not as Slurm
# jobs: compute nodes often have no internet.
LOCAL_RULES = ("fetch_data", "start_tracking", "log_training", "record_provenance", "register_model")


BACKENDS = ("horovod", "torch_ddp")
# Training spans both nodes of mini-LUMI, two ranks (stand-in GPUs) on each, started by srun as the lumi profile
# does by default: Horovod's Open MPI ranks get srun --mpi=pmix, found by the launch itself (cluster.mpi: auto).
TRAIN_RESOURCES = {"gpus": 2, "nodes": 2, "runtime": 30}


def cluster_env(cluster) -> dict[str, str]:
    path = os.pathsep.join([str(cluster.bin_dir), str(BIN_DIR), os.environ["PATH"]])
    # Open MPI refuses to start as root unless told; CI runs as root.
    return {**cluster.env, "PATH": path, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def configure(project, **train_resources) -> None:
    """The settings a user edits in config/config.yaml for a small two-node run."""
    config_path = project / "config/config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["resources"]["train_model"] = {**TRAIN_RESOURCES, **train_resources}
    config["resources"]["default"]["mem_mb"] = 2000
    config["train"]["hyperparameters"]["epochs"] = 8
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module", params=BACKENDS)
def lumi_run(request, slurm_cluster, tmp_path_factory):
    slurm_cluster.require_isolation()
    project = generate(
        tmp_path_factory.mktemp("slurm"), cluster="lumi", slurm_account=ACCOUNT, training_backend=request.param
    )
    configure(project)
    result = run(["snakemake", "--profile", "profiles/lumi"], project, timeout=900, **cluster_env(slurm_cluster))
    return project, result, slurm_cluster


def slurm_job_ids(project) -> dict[str, str]:
    """rule -> Slurm job id, from the kept per-job logs logs/slurm/rule_<rule>/<jobid>.log."""
    ids = {}
    for log in (project / "logs/slurm").rglob("*.log"):
        match = re.search(r"rule_(\w+)", str(log.relative_to(project)))
        if match and int(log.stem) > int(ids.get(match.group(1), 0)):
            ids[match.group(1)] = log.stem  # the latest job of the rule
    return ids


def sacct(cluster, job_id: str, fields: str) -> list[dict[str, str]]:
    """The job's sacct rows, allocation first, then its steps (polled until the record is complete)."""
    return cluster.sacct(job_id, ["Account", *fields.split(",")], steps=True)


def test_every_step_ran_as_a_slurm_job(lumi_run):
    project, _, cluster = lumi_run
    ids = slurm_job_ids(project)
    assert set(RULES) <= set(ids), ids
    for rule in RULES:
        job = sacct(cluster, ids[rule], "JobID,Partition,Account,State")[0]
        assert job["State"] == "COMPLETED", (rule, job)
        assert job["Account"] == ACCOUNT, (rule, job)
        assert job["Partition"] == ("standard-g" if rule == "train_model" else "small"), (rule, job)  # 2 nodes


def test_bookkeeping_steps_ran_without_a_slurm_job(lumi_run):
    project, _, _ = lumi_run
    assert not set(LOCAL_RULES) & set(slurm_job_ids(project))
    assert (project / "results/mlflow/registered_model.json").is_file()


def test_cpu_steps_got_one_task_one_cpu(lumi_run):
    project, _, cluster = lumi_run
    ids = slurm_job_ids(project)
    for rule in ("prepare_data", "evaluate_model"):
        job = sacct(cluster, ids[rule], "JobID,AllocCPUS,AllocTRES")[0]
        assert job["AllocCPUS"] == "1", (rule, job)
        assert "gres/gpu" not in job["AllocTRES"]


def test_training_ran_two_ranks_on_each_of_two_nodes(lumi_run):
    project, _, cluster = lumi_run
    rows = sacct(cluster, slurm_job_ids(project)["train_model"], "JobID,JobName,NTasks,NNodes,NodeList,AllocCPUS,AllocTRES")
    allocation = rows[0]
    assert allocation["Partition"] == "standard-g" and allocation["NNodes"] == "2", allocation
    assert "gres/gpu=4" in allocation["AllocTRES"], allocation
    # The srun step that started the ranks: 4 tasks on both nodes.
    assert any(row["NTasks"] == "4" and row["NodeList"] == "nid[001-002]" for row in rows[1:]), rows
    log = (project / "logs/train_model.log").read_text()
    assert "on 4 rank(s)" in log
    # Each node reports its ranks (from inside the ranks), and the rendezvous is the first node's own address.
    assert "node nid001: 2 of 4 rank(s)" in log and "node nid002: 2 of 4 rank(s)" in log, log[-3000:]
    address = cluster.node_address("nid001")
    assert re.search(rf"rendezvous: MASTER_ADDR={re.escape(address)} \(first node nid001\) MASTER_PORT=1\d{{4}}", log), log[:2000]
    backend = yaml.safe_load((project / "config/config.yaml").read_text())["train"]["backend"]
    if backend == "horovod":
        assert "mpi: Horovod's MPI needs srun --mpi=pmix (detected; cluster.mpi: auto)" in log, log[:2000]
    history = json.loads((project / "results/model/history.json").read_text())
    assert history["world_size"] == 4
    # mini-LUMI's GPUs are stand-in files: Slurm allocates them, torch sees none, and the ranks train on the CPU,
    # warning once per node, as on a real node whose container lacks --rocm.
    assert history["device"] == "cpu"
    assert log.count("WARNING: training on the CPU although GPUs were allocated") == 2, log[-3000:]
    assert history["backend"] == backend
    assert json.loads((project / "results/metrics.json").read_text())["accuracy"] >= 0.9


def test_efficiency_report_lists_the_jobs(lumi_run):
    """The lumi profile asks the plugin for its efficiency report (CPU and memory used against requested)."""
    import csv

    project, _, _ = lumi_run
    (report,) = (project / "logs/slurm").glob("efficiency_report_*.csv")
    rows = list(csv.DictReader(report.open()))
    jobs = set(slurm_job_ids(project).values())
    assert jobs <= {row["JobID"].split(".")[0] for row in rows}, rows  # every step's Slurm job
    assert all(0 <= float(row["CPU Efficiency (%)"]) for row in rows if row["JobID"] in jobs), rows


def test_provenance_names_each_steps_slurm_job(lumi_run):
    """The MLflow run and results/provenance.json carry the Slurm job id of every step that logs to MLflow from a
    Slurm job (the bookkeeping steps run locally and have none)."""
    import mlflow

    project, _, _ = lumi_run
    ids = slurm_job_ids(project)
    info = json.loads((project / "results/mlflow/run.json").read_text())
    tags = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}").get_run(info["run_id"]).data.tags
    expected = {"prepare": ids["prepare_data"], "train": ids["train_model"], "evaluate": ids["evaluate_model"]}
    assert {key[len("slurm.job_id."):]: value for key, value in tags.items() if key.startswith("slurm.job_id.")} == expected
    assert tags["snakemake.profile"] == "lumi"
    prov = json.loads((project / "results/provenance.json").read_text())
    assert prov["slurm"]["cluster"] == CLUSTER_NAME
    assert prov["slurm"]["job_ids"] == expected


def test_two_nodes_match_one_rank(lumi_run):
    """The model trained by 4 ranks on 2 nodes equals one rank's at the same global batch (test_training_equivalence's
    tolerance for rank counts)."""
    import torch

    from test_training_equivalence import TOL_RANKS, largest_differences

    project, _, _ = lumi_run
    config = yaml.safe_load((project / "config/config.yaml").read_text())
    backend = config["train"]["backend"]
    command = project_helper(project, "launch").training_command(
        launcher="local", backend=backend, processes=1, package=project.name.replace("-", "_"),
        args=["--train", "data/processed/train.npz", "--out-dir", "results/one-rank",
              "--params", json.dumps(config["train"]["hyperparameters"], sort_keys=True)],
    )
    run(command, project, PYTHONPATH=str(project / "src"), timeout=600)

    def outcome(folder):
        history = json.loads((project / folder / "history.json").read_text())
        state = torch.load(project / folder / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
        return history, state, None

    two_nodes, one_rank = outcome("results/model"), outcome("results/one-rank")
    assert (two_nodes[0]["world_size"], one_rank[0]["world_size"]) == (4, 1)
    metrics, weights = largest_differences(two_nodes, one_rank)
    assert metrics <= TOL_RANKS and weights <= TOL_RANKS, (metrics, weights)


# Last of the tests on lumi_run: it trains again (the tests above read the first run's logs and reports).
def test_torchrun_launcher_trains_on_both_nodes(lumi_run):
    """`launcher: torchrun` (one torchrun per node, c10d rendezvous at the first node), chosen for one run on the
    command line; Horovod cannot use it and the run stops before anything is submitted."""
    project, _, cluster = lumi_run
    backend = yaml.safe_load((project / "config/config.yaml").read_text())["train"]["backend"]
    command = ["snakemake", "--profile", "profiles/lumi", "--config", "cluster={launcher: torchrun}"]
    if backend == "horovod":
        result = run([*command, "-n"], project, check=False, timeout=300, **cluster_env(cluster))
        assert result.returncode != 0
        assert "launcher 'torchrun' starts torch DDP ranks only (backend 'horovod': use srun or mpirun)" in (
            result.stdout + result.stderr)
        return
    before = slurm_job_ids_all(project, "train_model")
    result = run([*command, "--forcerun", "train_model"], project, timeout=900, **cluster_env(cluster))
    assert "torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d -m digits_classifier.train" in result.stdout + result.stderr
    log = (project / "logs/train_model.log").read_text()
    assert "node nid001: 2 of 4 rank(s)" in log and "node nid002: 2 of 4 rank(s)" in log, log[-3000:]
    assert f"rendezvous: MASTER_ADDR={cluster.node_address('nid001')} (first node nid001)" in log, log[:2000]
    (job,) = slurm_job_ids_all(project, "train_model") - before
    rows = sacct(cluster, job, "JobID,NTasks,NodeList")
    assert any(row["NTasks"] == "2" and row["NodeList"] == "nid[001-002]" for row in rows[1:]), rows  # a torchrun per node
    assert json.loads((project / "results/model/history.json").read_text())["world_size"] == 4
    assert json.loads((project / "results/metrics.json").read_text())["accuracy"] >= 0.9


def slurm_job_ids_all(project, rule: str = "*") -> set[str]:
    """Every Slurm job id of `rule` (all rules: *) so far, from the kept per-job logs."""
    return {log.stem for log in (project / "logs/slurm").glob(f"rule_{rule}/**/*.log")}


@pytest.fixture(scope="module")
def lumi_project(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("slurm-bad"), cluster="lumi", training_backend="torch_ddp")


@pytest.mark.parametrize(
    "resources, environ, message",
    [
        ({}, {}, "no Slurm account for lumi"),
        ({}, {"SBATCH_ACCOUNT": "465000001"}, "Slurm account '465000001' does not match lumi's account format"),
        ({"partition": "gpu-huge"}, {"SBATCH_ACCOUNT": ACCOUNT}, "partition 'gpu-huge' is not a partition of lumi"),
        ({"partition": "small", "gpus": 1}, {"SBATCH_ACCOUNT": ACCOUNT}, "requested on partition 'small', which has no GPUs"),
        ({"gpus": 1, "runtime": 5000}, {"SBATCH_ACCOUNT": ACCOUNT}, "runtime 5000 min is over the 4320 min limit"),
    ],
    ids=["missing-account", "malformed-account", "unknown-partition", "gpu-on-cpu-partition", "runtime-over-limit"],
)
@pytest.mark.reliability(
    tried="A bad Slurm request under `--profile lumi`",
    sees="the error, exit 1",
    left="nothing: no Slurm job submitted (sacct), no logs",
)
def test_bad_requests_stop_before_anything_is_submitted(lumi_project, slurm_cluster, resources, environ, message):
    config_path = lumi_project / "config/config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["resources"]["train_model"] = {"nodes": 1, "runtime": 60, **resources} if resources else config["resources"]["train_model"]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {key: value for key, value in cluster_env(slurm_cluster).items()}
    before = slurm_cluster.run(["sacct", "-X", "-n", "-P", "-a", "--starttime", "now-1days", "--format=JobID"]).stdout
    result = run(["snakemake", "--profile", "profiles/lumi"], lumi_project, check=False, timeout=300,
                 **{"SBATCH_ACCOUNT": "", **env, **environ})
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    after = slurm_cluster.run(["sacct", "-X", "-n", "-P", "-a", "--starttime", "now-1days", "--format=JobID"]).stdout
    assert after == before, "a job was submitted"
    assert not (lumi_project / "logs/slurm").exists()
