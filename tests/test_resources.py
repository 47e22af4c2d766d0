"""The resource vocabulary mapped to Slurm: golden resource sets, launch lines and clear errors."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from conftest import TEMPLATE_DIR

sys.path.insert(0, str(TEMPLATE_DIR / "rules_lib"))
from smkml import resources  # noqa: E402
from smkml.launch import training_command  # noqa: E402

PROFILES = TEMPLATE_DIR / "profiles"
ACCOUNT = "project_465000001"
LUMI_MASK = (
    "mask_cpu:0x00fe000000000000,0xfe00000000000000,0x0000000000fe0000,0x00000000fe000000,"
    "0x00000000000000fe,0x000000000000fe00,0x000000fe00000000,0x0000fe0000000000"
)
CONFIG = {
    "resources": {
        "default": {"cpus": 1, "mem_mb": 4000, "runtime": 30},
        "one_gpu": {"gpus": 1, "nodes": 1, "runtime": 60},
        "two_nodes": {"gpus": 8, "nodes": 2, "runtime": 120},
    }
}


@pytest.fixture(params=["lumi", "slurm"])
def cluster(request):
    return resources.load_cluster(request.param, PROFILES)


def mapped(cluster, rule, tasks=1):
    return resources.slurm_resources(rule, resources.step_needs(CONFIG, rule), cluster, ACCOUNT, tasks)


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
        "cpus_per_task": 10, "mem_mb": 0, "tasks_per_node": 8, "mpi": "srun",
    },
}

GOLDEN_LAUNCH = {
    "lumi": {
        "one_gpu": "python -m demo.train --backend horovod",
        "two_nodes": f"srun --ntasks=16 --cpu-bind={LUMI_MASK} python -m demo.train --backend horovod",
    },
    "slurm": {
        "one_gpu": "python -m demo.train --backend horovod",
        "two_nodes": "srun --ntasks=16 python -m demo.train --backend horovod",
    },
}


@pytest.mark.parametrize("rule", ["cpu_step", "one_gpu", "two_nodes"])
def test_golden_resources_and_launch_line(cluster, rule):
    assert mapped(cluster, rule) == GOLDEN[(cluster["name"], rule)]
    if rule in GOLDEN_LAUNCH[cluster["name"]]:
        needs = resources.step_needs(CONFIG, rule)
        line = training_command(
            launcher="srun", backend="horovod", processes=resources.ranks(needs, 2), package="demo", args=[],
            launcher_options=resources.srun_options(needs, cluster),
        )
        assert line == GOLDEN_LAUNCH[cluster["name"]][rule]


def test_cpu_training_on_slurm_launches_its_own_ranks():
    cluster = resources.load_cluster("lumi", PROFILES)
    needs = resources.step_needs({"resources": {"train_model": {"gpus": 0}}}, "train_model")
    assert resources.ranks(needs, processes=2) == 2
    result = resources.slurm_resources("train_model", needs, cluster, ACCOUNT, tasks=2)
    assert (result["slurm_partition"], result["tasks"], result["nodes"], result["mpi"]) == ("small", 2, 1, "srun")


def lumi():
    return resources.load_cluster("lumi", PROFILES)


@pytest.mark.parametrize(
    "config, rule, message",
    [
        ({"resources": {"x": {"partition": "gpu-huge"}}}, "x",
         "partition 'gpu-huge' is not a partition of lumi (allowed: small, standard, small-g, standard-g, dev-g)"),
        ({"resources": {"x": {"partition": "small", "gpus": 2}}}, "x",
         "x: 2 GPU(s) requested on partition 'small', which has no GPUs (GPU partitions: small-g, standard-g, dev-g)"),
        ({"resources": {"x": {"gpus": 1, "runtime": 5000}}}, "x",
         "x: runtime 5000 min is over the 4320 min limit of partition 'small-g'"),
        ({"resources": {"x": {"gpus": 8, "partition": "dev-g", "runtime": 240}}}, "x",
         "x: runtime 240 min is over the 180 min limit of partition 'dev-g'"),
        ({"resources": {"x": {"gpus": 9}}}, "x", "x: 9 GPUs per node requested; 'small-g' nodes have 8"),
        ({"resources": {"x": {"gpu": 1}}}, "x", "resources.x: unknown key(s) ['gpu']"),
    ],
)
def test_bad_requests_are_named(config, rule, message):
    with pytest.raises(resources.ResourceError) as error:
        resources.slurm_resources(rule, resources.step_needs(config, rule), lumi(), ACCOUNT)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "value, environ, message",
    [
        ("", {}, "no Slurm account for lumi: set account.value in profiles/lumi/cluster.yaml or $SBATCH_ACCOUNT"),
        ("", {"SBATCH_ACCOUNT": "465000001"}, "Slurm account '465000001' does not match lumi's account format"),
        ("project_12345", {}, "Slurm account 'project_12345' does not match lumi's account format"),
    ],
)
def test_account_errors(value, environ, message):
    cluster = lumi()
    cluster["account"]["value"] = value
    with pytest.raises(resources.ResourceError, match=message.replace("$", r"\$").replace("(", r"\(")):
        resources.account(cluster, environ)


def test_account_from_answer_or_environment():
    cluster = lumi()
    assert resources.account(cluster, {"SBATCH_ACCOUNT": ACCOUNT}) == ACCOUNT
    cluster["account"]["value"] = "project_465000002"
    assert resources.account(cluster, {"SBATCH_ACCOUNT": ACCOUNT}) == "project_465000002"


def test_unknown_cluster_lists_the_known_ones():
    with pytest.raises(resources.ResourceError, match="cluster 'puhti' has no description .* \\(known clusters: kubernetes, lumi, slurm\\)"):
        resources.load_cluster("puhti", PROFILES)


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
    "--gres=gpu:8",
}


@pytest.mark.parametrize("key", sorted(GOLDEN_SBATCH), ids=lambda key: "-".join(key))
def test_golden_sbatch_lines_rendered_by_the_slurm_plugin(key):
    name, rule = key
    line = plugin_sbatch_line(mapped(resources.load_cluster(name, PROFILES), rule))
    assert " ".join(line.split()) == GOLDEN_SBATCH[key]


@pytest.mark.parametrize("cluster_name", [None, "lumi", "slurm"])
def test_mlflow_writers_take_the_one_mlflow_db_slot(cluster_name):
    """Steps writing to the MLflow store hold `mlflow_db`, which every profile caps at 1 (no concurrent SQLite
    writers on a parallel filesystem); other steps do not hold it."""
    import yaml

    cluster = resources.load_cluster(cluster_name, PROFILES) if cluster_name else None
    config = {"resources": {"default": {"cpus": 1, "mem_mb": 1000, "runtime": 10}}}
    for rule in ("start_tracking", "prepare_data", "train_model", "evaluate_model", "record_provenance",
                 "register_model"):
        assert resources.scheduler_resources(config, cluster, ACCOUNT, rule)["mlflow_db"] == 1, rule
    for rule in ("fetch_data", "compare_to_reference"):
        assert "mlflow_db" not in resources.scheduler_resources(config, cluster, ACCOUNT, rule), rule
    for profile in ("local", "lumi", "slurm", "kubernetes"):
        assert yaml.safe_load((PROFILES / profile / "config.yaml").read_text())["resources"] == {"mlflow_db": 1}


# Kubernetes: the same vocabulary mapped to pod resources (the manifests themselves: tests/test_kubernetes_profile.py).


def kubernetes(**changes):
    cluster = resources.load_cluster("kubernetes", PROFILES)
    cluster.update(changes)
    return cluster


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
    cluster = kubernetes(**cluster_changes)
    assert resources.scheduler_resources(CONFIG, cluster, "", rule) == expected
    # Nothing Slurm-only leaks into a Kubernetes run: no account, no srun options.
    assert resources.account(cluster, {"SBATCH_ACCOUNT": ACCOUNT}) == ""
    assert resources.srun_options(resources.step_needs(CONFIG, rule), cluster) == []


@pytest.mark.parametrize(
    "rule, message",
    [
        ("two_nodes", "two_nodes: 2 nodes requested; the Kubernetes executor runs each step in one pod"),
        ("nine_gpus", "nine_gpus: 9 GPUs requested; pods on kubernetes have at most 8"),
        ("on_partition", "on_partition: partition 'small-g' is a Slurm setting; Kubernetes places pods by machine type"),
    ],
)
def test_kubernetes_errors(rule, message):
    config = {"resources": {**CONFIG["resources"], "nine_gpus": {"gpus": 9}, "on_partition": {"partition": "small-g"}}}
    with pytest.raises(resources.ResourceError, match=re.escape(message)):
        resources.scheduler_resources(config, kubernetes(), "", rule)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"scheduler": "pbs"}, "scheduler 'pbs' of {path} is not supported (allowed: slurm, kubernetes)"),
        ({"gpu": {"manufacturer": "intel"}}, "gpu.manufacturer 'intel' of {path} is not supported (allowed: nvidia, amd)"),
    ],
)
def test_bad_cluster_descriptions(tmp_path, changes, message):
    description = yaml.safe_load((PROFILES / "kubernetes/cluster.yaml").read_text())
    (tmp_path / "k8s").mkdir()
    path = tmp_path / "k8s/cluster.yaml"
    path.write_text(yaml.safe_dump({**description, **changes}))
    with pytest.raises(resources.ResourceError, match=re.escape(message.format(path=path))):
        resources.load_cluster("k8s", tmp_path)


def test_threads_are_cpus_per_rank_times_ranks():
    config = {"resources": {"default": {"cpus": 3}, "train_model": {"cpus": 2}}}
    assert resources.step_threads(config, "prepare_data") == 3
    assert resources.step_threads(config, "train_model", tasks=4) == 8
    assert resources.step_threads({}, "train_model", tasks=2) == 2  # cpus defaults to 1


def test_pod_image_must_not_be_snakemakes_default():
    with pytest.raises(resources.ResourceError, match="pod image 'snakemake/snakemake:v9.27.1' is Snakemake's default"):
        resources.check_pod_image(kubernetes(), "snakemake/snakemake:v9.27.1")
    resources.check_pod_image(kubernetes(), "registry.example.org/digits:1")
    resources.check_pod_image(resources.load_cluster("lumi", PROFILES), "snakemake/snakemake:v9.27.1")  # not used there
    resources.check_pod_image(None, "snakemake/snakemake:v9.27.1")


# Retries: runtime and memory grow with the attempt (the profiles set `retries:`).


def at_attempt(resources_, attempt):
    return {k: (v(None, attempt) if callable(v) else v) for k, v in resources_.items()}


def test_retries_double_runtime_and_memory_within_the_partition_limit():
    lumi_cluster = lumi()
    cpu = resources.step_resources(CONFIG, lumi_cluster, ACCOUNT, "cpu_step")
    assert at_attempt(cpu, 1) == mapped(lumi_cluster, "cpu_step")  # the first attempt is the golden request
    assert at_attempt(cpu, 2) == {**mapped(lumi_cluster, "cpu_step"), "runtime": 60, "mem_mb": 8000}
    # dev-g allows 180 minutes: the third attempt of a 120-minute step is held at 180.
    config = {"resources": {"dev": {"gpus": 1, "runtime": 120, "partition": "dev-g"}}}
    gpu = resources.step_resources(config, lumi_cluster, ACCOUNT, "dev")
    assert [at_attempt(gpu, n)["runtime"] for n in (1, 2, 3)] == [120, 180, 180]
    assert at_attempt(gpu, 2)["mem_mb"] == 0  # memory per GPU (--mem-per-gpu): nothing to grow
    # Locally and on Kubernetes nothing caps the runtime.
    local = resources.step_resources(CONFIG, None, "", "cpu_step")
    assert at_attempt(local, 3) == {"runtime": 90, "mem_mb": 12000}
    pod = resources.step_resources(CONFIG, kubernetes(), "", "one_gpu")
    assert at_attempt(pod, 2) == {"runtime": 120, "mem_mb": 8000, "gpu": 1, "gpu_manufacturer": "nvidia", "scale": 0}
