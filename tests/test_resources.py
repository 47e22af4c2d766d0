"""The resource vocabulary mapped to Slurm and Kubernetes: golden resource sets, launch lines and clear errors."""

from __future__ import annotations

import re

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from smkml import resources
from smkml.launch import training_command

from conftest import PROFILES, cluster_description, project_config

ACCOUNT = "project_465000001"
LUMI_MASK = (
    "mask_cpu:0x00fe000000000000,0xfe00000000000000,0x0000000000fe0000,0x00000000fe000000,"
    "0x00000000000000fe,0x000000000000fe00,0x000000fe00000000,0x0000fe0000000000"
)
RESOURCES = {
    "default": {"cpus": 1, "mem_mb": 4000, "runtime": 30},
    "one_gpu": {"gpus": 1, "nodes": 1, "runtime": 60},
    "two_nodes": {"gpus": 8, "nodes": 2, "runtime": 120},
}


def config_for(cluster: str | None, resources_: dict | None = None, **cluster_changes) -> dict:
    """A validated config on `cluster` (None: this machine) with these resources and cluster settings."""
    config = project_config(cluster, resources=resources_ or RESOURCES)
    config["cluster"].update(cluster_changes)
    return config


def plan(config: dict, rule: str, ranks: int = 1, account: str = ACCOUNT) -> resources.Step:
    return resources.Step.plan(config, rule, ranks, account if resources.scheduler(config["cluster"]) == "slurm" else "")


@pytest.fixture(params=["lumi", "slurm"])
def cluster(request):
    return request.param


def mapped(cluster, rule, ranks=1):
    return plan(config_for(cluster), rule, ranks).request


GOLDEN = {
    ("lumi", "cpu_step"): {
        "slurm_partition": "small", "runtime": 30, "slurm_account": ACCOUNT, "cpus_per_task": 1, "mem_mb": 4000,
    },
    ("lumi", "one_gpu"): {
        "slurm_partition": "small-g", "runtime": 60, "slurm_account": ACCOUNT, "nodes": 1, "tasks": 1,
        "cpus_per_task": 7, "mem_mb": 0, "slurm_extra": "--gpus-per-node=1 --mem-per-gpu=60G",
    },
    ("lumi", "two_nodes"): {
        "slurm_partition": "standard-g", "runtime": 120, "slurm_account": ACCOUNT, "nodes": 2, "tasks_per_node": 8,
        "cpus_per_task": 7, "mem_mb": 0, "slurm_extra": "--gpus-per-node=8 --mem-per-gpu=60G", "mpi": "srun",
    },
    ("slurm", "cpu_step"): {
        "slurm_partition": "small", "runtime": 30, "slurm_account": ACCOUNT, "cpus_per_task": 1, "mem_mb": 4000,
    },
    ("slurm", "one_gpu"): {
        "slurm_partition": "gpu", "runtime": 60, "slurm_account": ACCOUNT, "nodes": 1, "tasks": 1,
        "cpus_per_task": 10, "mem_mb": 0, "gres": "gpu:1",
    },
    ("slurm", "two_nodes"): {
        "slurm_partition": "gpu", "runtime": 120, "slurm_account": ACCOUNT, "gres": "gpu:8", "nodes": 2,
        "cpus_per_task": 10, "mem_mb": 0, "tasks_per_node": 8, "mpi": "srun", "slurm_extra": "--exclusive",
    },
}

GOLDEN_LAUNCH = {  # the inner srun's layout (after the host-side slurm_launch.py)
    "lumi": {
        "one_gpu": "python -m demo.train --backend horovod",
        "two_nodes": f"srun --nodes=2 --ntasks-per-node=8 --cpus-per-task=7 --cpu-bind={LUMI_MASK} "
        "python -m demo.train --backend horovod",
    },
    "slurm": {
        "one_gpu": "python -m demo.train --backend horovod",
        "two_nodes": "srun --nodes=2 --ntasks-per-node=8 --cpus-per-task=10 python -m demo.train --backend horovod",
    },
}


@pytest.mark.parametrize("rule", ["cpu_step", "one_gpu", "two_nodes"])
def test_golden_resources_and_launch_line(cluster, rule):
    assert mapped(cluster, rule) == GOLDEN[(cluster, rule)]
    if rule in GOLDEN_LAUNCH[cluster]:
        config = config_for(cluster)
        step = plan(config, rule, resources.ranks(resources.step_needs(config, rule), config["cluster"], 2))
        line = training_command(
            launcher="srun", backend="horovod", processes=step.ranks, package="demo", args=[],
            layout=step.layout,
        )
        assert line.split(" -- ", 1)[-1] == GOLDEN_LAUNCH[cluster][rule]


def test_a_full_node_on_a_shared_partition_is_requested_whole():
    """All 8 GPUs of a small-g node: the node itself too (--exclusive), as LUMI binds CPUs to GPUs only on whole
    nodes; then the ranks get LUMI's binding mask. standard-g gives whole nodes anyway: no --exclusive there."""
    config = config_for("lumi", {**RESOURCES, "full_node": {"gpus": 8, "nodes": 1}})
    step = plan(config, "full_node", ranks=8)
    assert step.request["slurm_partition"] == "small-g"
    assert step.request["slurm_extra"] == "--gpus-per-node=8 --mem-per-gpu=60G --exclusive"
    assert step.layout == {"nodes": 1, "tasks_per_node": 8, "cpus_per_task": 7, "cpu_bind": LUMI_MASK}
    line = " ".join(plugin_sbatch_line(step.request).split())
    assert line == (f"sbatch -A {ACCOUNT} -p small-g -t 30 --nodes=1 --ntasks-per-node=8 --cpus-per-task=7 "
                    "--gpus-per-node=8 --mem-per-gpu=60G --exclusive")
    assert "--exclusive" not in mapped("lumi", "two_nodes").get("slurm_extra", "")  # standard-g: whole nodes
    assert "--exclusive" not in mapped("lumi", "one_gpu").get("slurm_extra", "")  # a part of a node


def test_cpu_training_on_slurm_launches_its_own_ranks():
    config = config_for("lumi", {**RESOURCES, "train_model": {"gpus": 0}})
    needs = resources.step_needs(config, "train_model")
    assert resources.ranks(needs, config["cluster"], processes=2) == 2
    result = plan(config, "train_model", ranks=2).request
    assert (result["slurm_partition"], result["tasks"], result["nodes"], result["mpi"]) == ("small", 2, 1, "srun")


def test_local_runs_ignore_gpus_and_start_the_configured_processes():
    config = config_for(None)
    assert config["cluster"] == {"name": "local", "scheduler": "local", "launcher": "local", "mpi": "auto", "cache_dir": "", "pack": {
        "members_per_job": 1}, "container": {"gpu": "none", "apptainer_binds": []}}
    assert resources.ranks(resources.step_needs(config, "one_gpu"), config["cluster"], processes=2) == 2
    step = plan(config, "one_gpu", ranks=2)
    assert (step.partition, step.request, step.layout, step.threads) == (None, {"runtime": 60, "mem_mb": 4000}, {}, 2)


@pytest.mark.parametrize(
    "resources_, rule, message",
    [
        ({"x": {"partition": "gpu-huge"}}, "x",
         "partition 'gpu-huge' is not a partition of lumi (allowed: small, standard, small-g, standard-g, dev-g)"),
        ({"x": {"partition": "small", "gpus": 2}}, "x",
         "x: 2 GPU(s) requested on partition 'small', which has no GPUs (GPU partitions: small-g, standard-g, dev-g)"),
        ({"x": {"gpus": 1, "runtime": 5000}}, "x",
         "x: runtime 5000 min is over the 4320 min limit of partition 'small-g'"),
        ({"x": {"gpus": 8, "partition": "dev-g", "runtime": 240}}, "x",
         "x: runtime 240 min is over the 180 min limit of partition 'dev-g'"),
        ({"x": {"gpus": 9}}, "x", "x: 9 GPUs per node requested; 'small-g' nodes have 8"),
    ],
)
@pytest.mark.reliability(
    tried="A resource request the cluster cannot satisfy",
    sees="an error naming the step and the limit",
    left="nothing",
)
def test_bad_requests_are_named(resources_, rule, message):
    with pytest.raises(resources.ResourceError) as error:
        plan(config_for("lumi", {**RESOURCES, **resources_}), rule)
    assert message in str(error.value)


@pytest.mark.reliability(tried="A misspelt resource key", sees="the schema error naming the key", left="nothing")
def test_unknown_resource_key_is_named_by_the_schema():
    with pytest.raises(WorkflowError, match="Additional properties are not allowed \\('gpu' was unexpected\\)"):
        config_for("lumi", {**RESOURCES, "x": {"gpu": 1}})


def test_resource_defaults_come_from_the_schema():
    needs = resources.step_needs(config_for(None), "cpu_step")
    assert needs == {"cpus": 1, "mem_mb": 4000, "runtime": 30, "gpus": 0, "nodes": 1}
    assert set(needs) < set(resources.VOCABULARY) == {"cpus", "mem_mb", "runtime", "gpus", "nodes", "partition"}


@pytest.mark.parametrize(
    "value, environ, message",
    [
        ("", {}, "no Slurm account for lumi: set account.value in profiles/lumi/cluster.yaml or $SBATCH_ACCOUNT"),
        ("", {"SBATCH_ACCOUNT": "465000001"}, "Slurm account '465000001' does not match lumi's account format"),
        ("project_12345", {}, "Slurm account 'project_12345' does not match lumi's account format"),
    ],
)
@pytest.mark.reliability(
    tried="A missing or malformed Slurm account",
    sees="an error naming the account and where to set it",
    left="nothing",
)
def test_account_errors(value, environ, message):
    cluster = config_for("lumi")["cluster"]
    cluster["account"]["value"] = value
    with pytest.raises(resources.ResourceError, match=message.replace("$", r"\$").replace("(", r"\(")):
        resources.account(cluster, environ)


def test_account_from_answer_or_environment():
    cluster = config_for("lumi")["cluster"]
    assert cluster["account"]["env"] == "SBATCH_ACCOUNT" and cluster["account"]["required"] is True  # defaults
    assert resources.account(cluster, {"SBATCH_ACCOUNT": ACCOUNT}) == ACCOUNT
    cluster["account"]["value"] = "project_465000002"
    assert resources.account(cluster, {"SBATCH_ACCOUNT": ACCOUNT}) == "project_465000002"


class JobResources(dict):
    """Resources as the plugin reads them: `.get(name)` and attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def plugin_sbatch_line(resources_: dict, threads: int = 1) -> str:
    """The sbatch line snakemake-executor-plugin-slurm 2.8.0 renders for a job with these resources."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    job = SimpleNamespace(resources=JobResources(resources_), threads=threads)
    validate_slurm_extra(job)  # what the plugin checks before submitting
    params = {
        "run_uuid": "RUN", "slurm_logfile": "LOG", "comment_str": "RULE", "workdir": None,
        "account": f"-A {resources_['slurm_account']}", "partition": f"-p {resources_['slurm_partition']}",
    }
    line = get_submit_command(job, params) + set_gres_string(job)
    return line.replace("sbatch --parsable --job-name RUN --output LOG --export=ALL --comment RULE ", "sbatch ")


GOLDEN_SBATCH = {
    ("lumi", "cpu_step"): f"sbatch -A {ACCOUNT} -p small -t 30 --mem 4000 --ntasks=1 --cpus-per-task=1",
    ("lumi", "one_gpu"): f"sbatch -A {ACCOUNT} -p small-g -t 60 --nodes=1 --ntasks=1 --cpus-per-task=7 "
    "--gpus-per-node=1 --mem-per-gpu=60G",
    ("lumi", "two_nodes"): f"sbatch -A {ACCOUNT} -p standard-g -t 120 --nodes=2 --ntasks-per-node=8 "
    "--cpus-per-task=7 --gpus-per-node=8 --mem-per-gpu=60G",
    ("slurm", "cpu_step"): f"sbatch -A {ACCOUNT} -p small -t 30 --mem 4000 --ntasks=1 --cpus-per-task=1",
    ("slurm", "one_gpu"): f"sbatch -A {ACCOUNT} -p gpu -t 60 --nodes=1 --ntasks-per-gpu=1 --cpus-per-task=10 --gres=gpu:1",
    ("slurm", "two_nodes"): f"sbatch -A {ACCOUNT} -p gpu -t 120 --nodes=2 --ntasks-per-node=8 --cpus-per-task=10 "
    "--exclusive --gres=gpu:8",
}


@pytest.mark.parametrize("key", sorted(GOLDEN_SBATCH), ids=lambda key: "-".join(key))
def test_golden_sbatch_lines_rendered_by_the_slurm_plugin(key):
    name, rule = key
    line = plugin_sbatch_line(mapped(name, rule))
    assert " ".join(line.split()) == GOLDEN_SBATCH[key]


MLFLOW_WRITERS = {"start_tracking", "log_training", "register_model",
                  "start_member", "train_member", "evaluate_member", "train_pack", "aggregate_sweep", "register_best_member"}


def test_mlflow_writers_take_the_one_mlflow_db_slot():
    """Each rule that writes to the MLflow store says so itself (mlflow_db: 1), and every profile caps mlflow_db at 1:
    no concurrent SQLite writers on a parallel filesystem. Other rules do not hold it."""
    from conftest import TEMPLATE_DIR

    holders = set()
    for module in (TEMPLATE_DIR / "rules_lib/rules").glob("*.smk"):
        for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", module.read_text(), re.M):
            if re.search(r"^    resources:\n(?:        .*\n)*        mlflow_db=1,", body, re.M):
                holders.add(rule)
    assert holders == MLFLOW_WRITERS
    for profile in ("local", "lumi", "slurm", "kubernetes"):
        assert yaml.safe_load((PROFILES / profile / "profile.yaml").read_text())["resources"] == {"mlflow_db": 1}


# Kubernetes: the same vocabulary mapped to pod resources (the manifests themselves: tests/test_kubernetes_profile.py).


@pytest.mark.parametrize(
    "rule, cluster_changes, expected",
    [
        ("cpu_step", {}, {"runtime": 30, "mem_mb": 4000}),
        ("one_gpu", {}, {"runtime": 60, "mem_mb": 4000, "gpu": 1, "gpu_manufacturer": "nvidia", "scale": 0}),
        (
            "one_gpu",
            {"gpu": {"manufacturer": "amd", "max_per_pod": 8}, "machine_type": {"cpu": "c2-standard-8", "gpu": "mi250x"}},
            {"runtime": 60, "mem_mb": 4000, "gpu": 1, "gpu_manufacturer": "amd", "scale": 0, "machine_type": "mi250x"},
        ),
        (
            "cpu_step",
            {"machine_type": {"cpu": "c2-standard-8", "gpu": "mi250x"}},
            {"runtime": 30, "mem_mb": 4000, "machine_type": "c2-standard-8"},
        ),
    ],
    ids=["cpu", "nvidia", "amd-machine-type", "cpu-machine-type"],
)
def test_kubernetes_golden(rule, cluster_changes, expected):
    config = config_for("kubernetes", **cluster_changes)
    step = plan(config, rule)
    assert step.request == expected
    # Nothing Slurm-only leaks into a Kubernetes run: no account, no partition, no srun options.
    assert resources.account(config["cluster"], {"SBATCH_ACCOUNT": ACCOUNT}) == ""
    assert (step.partition, step.layout) == (None, {})


@pytest.mark.parametrize(
    "rule, message",
    [
        ("two_nodes", "two_nodes: 2 nodes requested; the Kubernetes executor runs each step in one pod"),
        ("nine_gpus", "nine_gpus: 9 GPUs requested; pods on kubernetes have at most 8"),
        ("on_partition", "on_partition: partition 'small-g' is a Slurm setting; Kubernetes places pods by machine type"),
    ],
)
@pytest.mark.reliability(
    tried="A request Kubernetes pods cannot satisfy",
    sees="an error naming the step and the limit",
    left="nothing",
)
def test_kubernetes_errors(rule, message):
    config = config_for("kubernetes", {**RESOURCES, "nine_gpus": {"gpus": 9}, "on_partition": {"partition": "small-g"}})
    with pytest.raises(resources.ResourceError, match=re.escape(message)):
        plan(config, rule)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"scheduler": "pbs"}, "'pbs' is not one of ['local', 'slurm', 'kubernetes']"),
        ({"gpu": {"manufacturer": "intel", "max_per_pod": 8}}, "'intel' is not one of ['nvidia', 'amd']"),
        ({"launcher": "srun"}, "'local' was expected"),
        ({"nodes": 2}, "Additional properties are not allowed ('nodes' was unexpected)"),
    ],
)
@pytest.mark.reliability(
    tried="A bad cluster description (profiles/*/cluster.yaml)",
    sees="the schema error naming the value",
    left="nothing",
)
def test_bad_cluster_descriptions_are_named_by_the_schema(changes, message):
    description = cluster_description("kubernetes")
    description["cluster"].update(changes)
    with pytest.raises(WorkflowError, match=re.escape(message)):
        project_config(**description)


def test_threads_are_cpus_per_rank_times_ranks():
    config = config_for(None, {"default": {"cpus": 3, "mem_mb": 100, "runtime": 1}, "train_model": {"cpus": 2}})
    assert plan(config, "prepare_data").threads == 3
    assert plan(config, "train_model", ranks=4).threads == 8


def test_pod_image_must_not_be_snakemakes_default():
    kubernetes = config_for("kubernetes")["cluster"]
    with pytest.raises(resources.ResourceError, match="pod image 'snakemake/snakemake:v9.27.1' is Snakemake's default"):
        resources.check_pod_image(kubernetes, "snakemake/snakemake:v9.27.1")
    resources.check_pod_image(kubernetes, "registry.example.org/digits:1")
    resources.check_pod_image(config_for("lumi")["cluster"], "snakemake/snakemake:v9.27.1")  # not used there
    resources.check_pod_image(config_for(None)["cluster"], "snakemake/snakemake:v9.27.1")


@pytest.mark.parametrize("executor, cluster", [("slurm", None), ("kubernetes", "lumi"), ("slurm", "kubernetes")])
@pytest.mark.reliability(
    tried="An executor run without its profile's cluster description",
    sees="an error naming both",
    left="nothing",
)
def test_an_executor_without_its_cluster_description_stops(executor, cluster):
    with pytest.raises(resources.ResourceError, match=f"the {executor} executor runs the steps, but the resources are mapped"):
        resources.check_executor(config_for(cluster)["cluster"], executor)
    resources.check_executor(config_for(executor)["cluster"], executor)
    resources.check_executor(config_for(cluster)["cluster"], "local")


# Retries: runtime and memory grow with the attempt (the profiles set `retries:`).


def at_attempt(resources_, attempt):
    return {k: (v(None, attempt) if callable(v) else v) for k, v in resources_.items()}


def test_retries_double_runtime_and_memory_within_the_partition_limit():
    lumi = config_for("lumi")
    cpu = plan(lumi, "cpu_step").resources
    assert at_attempt(cpu, 1) == mapped("lumi", "cpu_step")  # the first attempt is the golden request
    assert at_attempt(cpu, 2) == {**mapped("lumi", "cpu_step"), "runtime": 60, "mem_mb": 8000}
    # dev-g allows 180 minutes: the third attempt of a 120-minute step is held at 180.
    dev = config_for("lumi", {**RESOURCES, "dev": {"gpus": 1, "runtime": 120, "partition": "dev-g"}})
    gpu = plan(dev, "dev").resources
    assert [at_attempt(gpu, n)["runtime"] for n in (1, 2, 3)] == [120, 180, 180]
    assert at_attempt(gpu, 2)["mem_mb"] == 0  # memory per GPU (--mem-per-gpu): nothing to grow
    # Locally and on Kubernetes nothing caps the runtime.
    local = plan(config_for(None), "cpu_step").resources
    assert at_attempt(local, 3) == {"runtime": 90, "mem_mb": 12000}
    pod = plan(config_for("kubernetes"), "one_gpu").resources
    assert at_attempt(pod, 2) == {"runtime": 120, "mem_mb": 8000, "gpu": 1, "gpu_manufacturer": "nvidia", "scale": 0}
