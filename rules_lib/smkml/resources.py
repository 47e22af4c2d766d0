"""One resource vocabulary for every step, mapped once per backend.

Steps state what they need in `config/config.yaml` under `resources:` (`default` plus one entry per rule):

    cpus      CPU cores per task
    mem_mb    memory per node for CPU steps (MB)
    runtime   wall-clock limit (minutes)
    gpus      GPUs per node (0: CPU only)
    nodes     nodes (GPU training only)
    partition optional: a partition by name instead of the cluster's choice

A cluster profile names a cluster description, `profiles/<cluster>/cluster.yaml`, which says how this vocabulary
maps to that cluster's scheduler (`scheduler:`, default slurm). For Slurm: partitions and their limits, GPU request
style, CPU binding, account format, mapped by `slurm_resources`. For Kubernetes: the GPU resource name, GPUs per
pod and node selectors, mapped by `kubernetes_resources`. Each backend is mapped in that one function; everything
it rejects is rejected while the workflow is parsed, before anything is submitted. `step_threads` gives a rule's
threads (CPU cores for all of its ranks), which Snakemake uses locally and the Kubernetes plugin as the pod's CPU.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

VOCABULARY = ("cpus", "mem_mb", "runtime", "gpus", "nodes", "partition")
SCHEDULERS = ("slurm", "kubernetes")
GPU_MANUFACTURERS = ("nvidia", "amd")  # the Kubernetes plugin's gpu_manufacturer: nvidia.com/gpu, amd.com/gpu


class ResourceError(ValueError):
    """A resource request that the cluster cannot satisfy, named with what is allowed."""


def step_needs(config: dict, rule: str) -> dict:
    """The merged request of one rule: `resources.default` overridden by `resources.<rule>`."""
    table = config.get("resources", {})
    needs = {"cpus": 1, "mem_mb": 1000, "runtime": 30, "gpus": 0, "nodes": 1, **table.get("default", {})}
    needs.update(table.get(rule, {}))
    unknown = sorted(set(needs) - set(VOCABULARY))
    if unknown:
        raise ResourceError(f"resources.{rule}: unknown key(s) {unknown} (allowed: {', '.join(VOCABULARY)})")
    return needs


def load_cluster(name: str | None, profiles_dir: Path) -> dict | None:
    """The cluster description a profile names (config key `cluster`); None runs locally."""
    if not name:
        return None
    path = Path(profiles_dir) / name / "cluster.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in Path(profiles_dir).glob("*/cluster.yaml"))
        raise ResourceError(f"cluster '{name}' has no description {path} (known clusters: {', '.join(known)})")
    cluster = yaml.safe_load(path.read_text())
    cluster.setdefault("name", name)
    cluster.setdefault("scheduler", "slurm")
    if cluster["scheduler"] not in SCHEDULERS:
        raise ResourceError(
            f"scheduler '{cluster['scheduler']}' of {path} is not supported (allowed: {', '.join(SCHEDULERS)})"
        )
    if cluster["scheduler"] == "kubernetes":
        manufacturer = (cluster.get("gpu") or {}).get("manufacturer")
        if manufacturer not in GPU_MANUFACTURERS:
            raise ResourceError(
                f"gpu.manufacturer '{manufacturer}' of {path} is not supported (allowed: {', '.join(GPU_MANUFACTURERS)})"
            )
    return cluster


def scheduler(cluster: dict | None) -> str:
    """The scheduler a cluster description maps to (`scheduler:`, set by `load_cluster`); "local" without one."""
    return cluster["scheduler"] if cluster else "local"


def account(cluster: dict, environ: dict | None = None) -> str:
    """The Slurm account: the cluster description's `account.value`, else $SBATCH_ACCOUNT; checked for format.
    Empty for a scheduler other than Slurm."""
    if scheduler(cluster) != "slurm":
        return ""
    environ = os.environ if environ is None else environ
    spec = cluster.get("account", {})
    variable = spec.get("env", "SBATCH_ACCOUNT")
    value = spec.get("value") or environ.get(variable, "")
    pattern = spec.get("pattern")
    example = spec.get("example", "")
    where = f"set account.value in profiles/{cluster['name']}/cluster.yaml or ${variable}"
    if not value:
        if spec.get("required", True):
            raise ResourceError(f"no Slurm account for {cluster['name']}: {where} (e.g. {example})")
        return ""
    if pattern and not re.fullmatch(pattern, value):
        raise ResourceError(
            f"Slurm account '{value}' does not match {cluster['name']}'s account format {pattern} (e.g. {example}): {where}"
        )
    return value


def choose_partition(needs: dict, cluster: dict) -> str:
    partitions = cluster["partitions"]
    if needs.get("partition"):
        name = needs["partition"]
    elif needs["gpus"] and needs["nodes"] > 1:
        name = cluster["choose"]["multi_node_gpu"]
    elif needs["gpus"]:
        name = cluster["choose"]["gpu"]
    else:
        name = cluster["choose"]["cpu"]
    if name not in partitions:
        raise ResourceError(
            f"partition '{name}' is not a partition of {cluster['name']} (allowed: {', '.join(partitions)})"
        )
    return name


def check_limits(rule: str, needs: dict, partition: str, cluster: dict) -> None:
    limits = cluster["partitions"][partition]
    gpus_per_node = limits.get("gpus_per_node", 0)
    if needs["gpus"] and not gpus_per_node:
        gpu_partitions = [name for name, spec in cluster["partitions"].items() if spec.get("gpus_per_node")]
        raise ResourceError(
            f"{rule}: {needs['gpus']} GPU(s) requested on partition '{partition}', which has no GPUs "
            f"(GPU partitions: {', '.join(gpu_partitions)})"
        )
    if needs["gpus"] > gpus_per_node:
        raise ResourceError(f"{rule}: {needs['gpus']} GPUs per node requested; '{partition}' nodes have {gpus_per_node}")
    max_runtime = limits.get("max_runtime")
    if max_runtime and needs["runtime"] > max_runtime:
        raise ResourceError(
            f"{rule}: runtime {needs['runtime']} min is over the {max_runtime} min limit of partition '{partition}'"
        )
    max_nodes = limits.get("max_nodes")
    if max_nodes and needs["nodes"] > max_nodes:
        raise ResourceError(f"{rule}: {needs['nodes']} nodes requested; partition '{partition}' allows {max_nodes}")


def ranks(needs: dict, processes: int) -> int:
    """Training ranks: one per GPU, or `processes` CPU ranks on one node."""
    return needs["gpus"] * needs["nodes"] if needs["gpus"] else processes


def slurm_resources(rule: str, needs: dict, cluster: dict, slurm_account: str, tasks: int = 1) -> dict:
    """Resources for snakemake-executor-plugin-slurm.

    A step with more than one rank (GPU training: one rank per GPU; CPU training: `tasks`) gets the plugin's `mpi`
    resource, so the plugin does not wrap it in srun and the rule's own `srun` starts the ranks. A single-rank
    step runs inside the plugin's own `srun -n1` step.
    """
    partition = choose_partition(needs, cluster)
    check_limits(rule, needs, partition, cluster)
    resources = {"slurm_partition": partition, "runtime": int(needs["runtime"])}
    if slurm_account:
        resources["slurm_account"] = slurm_account
    if needs["gpus"]:
        gpu = cluster["gpu"]
        extra = []
        if gpu["request"] == "gpus-per-node":
            extra.append(f"--gpus-per-node={needs['gpus']}")
        else:  # the plugin manages --gres itself
            resources["gres"] = f"gpu:{needs['gpus']}"
        if gpu.get("mem_per_gpu"):
            extra.append(f"--mem-per-gpu={gpu['mem_per_gpu']}")
        resources.update(
            nodes=int(needs["nodes"]),
            cpus_per_task=int(gpu.get("cpus_per_gpu", needs["cpus"])),
            mem_mb=0,  # memory comes per GPU (--mem-per-gpu); --mem would conflict
        )
        if extra:
            resources["slurm_extra"] = " ".join(extra)
        gpu_ranks = needs["gpus"] * needs["nodes"]
        if needs["gpus"] > 1:
            resources.update(tasks_per_node=int(needs["gpus"]), mpi="srun")
        elif gpu_ranks > 1:
            resources.update(tasks=int(gpu_ranks), mpi="srun")
        else:
            resources["tasks"] = 1
    else:
        resources.update(cpus_per_task=int(needs["cpus"]), mem_mb=int(needs["mem_mb"]))
        if tasks > 1:
            resources.update(nodes=1, tasks=int(tasks), mpi="srun")
    return resources


def kubernetes_resources(rule: str, needs: dict, cluster: dict) -> dict:
    """Resources for snakemake-executor-plugin-kubernetes: one pod per step.

    The pod's CPU request comes from the rule's threads (`step_threads`), memory from `mem_mb`. A GPU step asks for
    `gpu` GPUs of the cluster's manufacturer (the plugin writes nvidia.com/gpu or amd.com/gpu and the matching
    toleration) with `scale: 0`, so that the plugin also writes limits: Kubernetes accepts GPUs only as limits
    (equal to the requests), and limits hold the pod to what it asked for. `machine_type` becomes the node selector
    node.kubernetes.io/instance-type when the cluster description names one for the kind of step.
    """
    where = f"profiles/{cluster['name']}/cluster.yaml"
    if needs.get("partition"):
        raise ResourceError(
            f"{rule}: partition '{needs['partition']}' is a Slurm setting; Kubernetes places pods by machine type "
            f"(machine_type in {where})"
        )
    if needs["nodes"] != 1:
        raise ResourceError(
            f"{rule}: {needs['nodes']} nodes requested; the Kubernetes executor runs each step in one pod "
            "(allowed: nodes 1; more ranks come from more GPUs per pod)"
        )
    gpu = cluster.get("gpu") or {}
    max_gpus = int(gpu.get("max_per_pod", 0))
    if needs["gpus"] > max_gpus:
        raise ResourceError(f"{rule}: {needs['gpus']} GPUs requested; pods on {cluster['name']} have at most {max_gpus}")
    resources = {"runtime": int(needs["runtime"]), "mem_mb": int(needs["mem_mb"])}
    if needs["gpus"]:
        resources.update(gpu=int(needs["gpus"]), gpu_manufacturer=gpu["manufacturer"], scale=0)
    machine_type = (cluster.get("machine_type") or {}).get("gpu" if needs["gpus"] else "cpu")
    if machine_type:
        resources["machine_type"] = str(machine_type)
    return resources


def step_threads(config: dict, rule: str, tasks: int = 1) -> int:
    """A rule's threads: `cpus` per rank times its ranks (`tasks`; for GPU training on a cluster, one per GPU)."""
    needs = step_needs(config, rule)
    return int(needs["cpus"]) * max(1, int(tasks))


def check_pod_image(cluster: dict | None, image: str | None) -> None:
    """On Kubernetes every step runs in the pod image: Snakemake's default image has no PyTorch, MLflow or project."""
    if scheduler(cluster) != "kubernetes":
        return
    if not image or image.startswith("snakemake/snakemake:"):
        which = f"pod image '{image}' is Snakemake's default, which lacks the project's environment" if image else (
            "no pod image is set"
        )
        raise ResourceError(
            f"{which}: pass --container-image REGISTRY/IMAGE:TAG (an image with requirements.lock and the project "
            f"installed) or set container-image: in profiles/{cluster['name']}/config.yaml"
        )


def srun_options(needs: dict, cluster: dict | None) -> list[str]:
    """Options for the srun that starts training ranks inside the allocation (LUMI: the CPU-binding mask)."""
    if scheduler(cluster) != "slurm":
        return []
    binding = cluster.get("gpu", {}).get("cpu_bind") if needs["gpus"] else None
    full_node = needs["gpus"] == cluster["partitions"][choose_partition(needs, cluster)].get("gpus_per_node")
    return [f"--cpu-bind={binding}"] if binding and full_node else []


# Steps that write to the MLflow store. Each takes one unit of the global resource `mlflow_db`, which every
# profile caps at 1: never two writers at once, so an SQLite store on a parallel filesystem (Lustre, NFS), whose
# file locks cannot be trusted across nodes, never sees concurrent writes.
MLFLOW_WRITERS = frozenset(
    {"start_tracking", "prepare_data", "train_model", "evaluate_model", "record_provenance", "register_model"}
)


def grow_with_attempts(resources: dict, cluster: dict | None) -> dict:
    """The resources with runtime and memory growing on each retry: attempt n asks for n times the request, as
    nf-core's `task.attempt` idiom does, so a step killed at its time or memory limit gets more the next time.

    Runtime stays within the Slurm partition's `max_runtime`; memory 0 (Slurm GPU steps: memory per GPU) stays 0.
    Snakemake calls the functions with the job's attempt; the cluster profiles set `retries:`.
    """
    grown = dict(resources)
    runtime, memory = int(resources["runtime"]), int(resources.get("mem_mb", 0))
    limit = None
    if scheduler(cluster) == "slurm":
        limit = cluster["partitions"][resources["slurm_partition"]].get("max_runtime")

    def runtime_for(wildcards, attempt):
        return min(runtime * attempt, limit) if limit else runtime * attempt

    def memory_for(wildcards, attempt):
        return memory * attempt

    grown["runtime"] = runtime_for
    if memory:
        grown["mem_mb"] = memory_for
    return grown


def step_resources(config: dict, cluster: dict | None, slurm_account: str, rule: str, tasks: int = 1) -> dict:
    """What the rule module gives Snakemake: `scheduler_resources`, growing with the attempt."""
    return grow_with_attempts(scheduler_resources(config, cluster, slurm_account, rule, tasks), cluster)


def scheduler_resources(config: dict, cluster: dict | None, slurm_account: str, rule: str, tasks: int = 1) -> dict:
    """A rule's resources for the executor in use: Slurm's through `slurm_resources`, Kubernetes' through
    `kubernetes_resources`, else (local) runtime and memory."""
    needs = step_needs(config, rule)
    writer = {"mlflow_db": 1} if rule in MLFLOW_WRITERS else {}
    if scheduler(cluster) == "local":
        return {"runtime": int(needs["runtime"]), "mem_mb": int(needs["mem_mb"]), **writer}
    if scheduler(cluster) == "kubernetes":
        return {**kubernetes_resources(rule, needs, cluster), **writer}
    return {**slurm_resources(rule, needs, cluster, slurm_account, tasks), **writer}
