"""One resource vocabulary for every step, mapped once per scheduler.

Steps state what they need in `config/config.yaml` under `resources:` (`default` plus one entry per rule), in the
keys of `step_resources` in workflow/schemas/config.schema.yaml (cpus, mem_mb, runtime, gpus, nodes, partition).

Where the steps run is the cluster description the profile loads as config (`cluster:`, from
profiles/<name>/cluster.yaml; without a cluster profile, this machine). It says how the vocabulary maps to its
scheduler: for Slurm, partitions and their limits, GPU request style, CPU binding and account format
(`slurm_resources`); for Kubernetes, the GPU resource name, GPUs per pod and node selectors
(`kubernetes_resources`); locally, runtime and memory. A rule module plans each of its steps once (`Step`): the
partition is chosen there, the threads, resources and launch options all follow from that one plan, and everything
the cluster cannot satisfy is rejected while the workflow is parsed, before anything is submitted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from . import schemas

VOCABULARY = tuple(schemas.node("config", "$defs", "step_resources", "properties"))


class ResourceError(ValueError):
    """A resource request that the cluster cannot satisfy, named with what is allowed."""


def step_needs(config: dict, rule: str) -> dict:
    """The merged request of one rule: `resources.default` overridden by `resources.<rule>` (a validated config:
    the schema rejects unknown keys and fills in the defaults)."""
    table = config["resources"]
    return {**table["default"], **table.get(rule, {})}


def scheduler(cluster: dict) -> str:
    """The scheduler a cluster description maps to: local, slurm or kubernetes."""
    return cluster["scheduler"]


def where(cluster: dict) -> str:
    """How errors name the description: the file the profile loads."""
    return f"profiles/{cluster['name']}/cluster.yaml"


def account(cluster: dict, environ: dict | None = None) -> str:
    """The Slurm account: the cluster description's `account.value`, else the variable `account.env`; checked for
    format. Empty for a scheduler other than Slurm."""
    if scheduler(cluster) != "slurm":
        return ""
    environ = os.environ if environ is None else environ
    spec = cluster["account"]
    value = spec.get("value") or environ.get(spec["env"], "")
    hint = f"set account.value in {where(cluster)} or ${spec['env']}"
    if not value:
        if spec["required"]:
            raise ResourceError(f"no Slurm account for {cluster['name']}: {hint} (e.g. {spec['example']})")
        return ""
    if not re.fullmatch(spec["pattern"], value):
        raise ResourceError(
            f"Slurm account '{value}' does not match {cluster['name']}'s account format {spec['pattern']} "
            f"(e.g. {spec['example']}): {hint}"
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
    gpus_per_node = limits["gpus_per_node"]
    if needs["gpus"] and not gpus_per_node:
        gpu_partitions = [name for name, spec in cluster["partitions"].items() if spec["gpus_per_node"]]
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


def ranks(needs: dict, cluster: dict, processes: int) -> int:
    """Training ranks: on a cluster one per GPU (gpus x nodes); CPU training and local runs: `processes`."""
    if scheduler(cluster) == "local" or not needs["gpus"]:
        return processes
    return needs["gpus"] * needs["nodes"]


@dataclass(frozen=True)
class Step:
    """One rule's request (`needs`) planned once for the cluster it runs on: the Slurm partition is chosen here
    and checked against its limits; the rule's threads, resources and launch options all follow from this plan.

    `ranks` is the number of processes the step starts (training: `ranks()`); `account` the Slurm account.
    """

    rule: str
    needs: dict
    cluster: dict
    ranks: int = 1
    account: str = ""
    partition: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if scheduler(self.cluster) == "slurm":
            partition = choose_partition(self.needs, self.cluster)
            check_limits(self.rule, self.needs, partition, self.cluster)
            object.__setattr__(self, "partition", partition)
        elif scheduler(self.cluster) == "kubernetes":
            check_pod_request(self.rule, self.needs, self.cluster)

    @classmethod
    def plan(cls, config: dict, rule: str, ranks: int = 1, account: str = "") -> "Step":
        """The step of `rule` under the config's cluster (a validated config)."""
        return cls(rule, step_needs(config, rule), config["cluster"], ranks, account)

    @property
    def threads(self) -> int:
        """`cpus` per rank times the ranks: Snakemake's threads locally, the pod's CPU request on Kubernetes."""
        return int(self.needs["cpus"]) * max(1, int(self.ranks))

    @property
    def request(self) -> dict:
        """The resources of the first attempt, in the executor's terms."""
        if scheduler(self.cluster) == "slurm":
            return slurm_resources(self)
        if scheduler(self.cluster) == "kubernetes":
            return kubernetes_resources(self)
        return {"runtime": int(self.needs["runtime"]), "mem_mb": int(self.needs["mem_mb"])}

    @property
    def resources(self) -> dict:
        """What the rule gives Snakemake: `request`, with runtime and memory growing on each retry."""
        limit = self.cluster["partitions"][self.partition].get("max_runtime") if self.partition else None
        return grow_with_attempts(self.request, limit)

    @property
    def whole_node(self) -> bool:
        """Whether the step asks for whole nodes (several nodes, all GPUs of a node, or a whole-node partition):
        such a step is its own job, never packed with others (sweep packing)."""
        if self.partition is None:
            return False
        limits = self.cluster["partitions"][self.partition]
        gpus = self.needs["gpus"]
        return self.needs["nodes"] > 1 or limits["whole_node"] or bool(gpus and gpus == limits["gpus_per_node"])

    def packed(self, count: int) -> dict:
        """`resources` of one job running `count` of this step one after another: the runtime times `count`
        (within the partition's limit), the rest as for one."""
        limit = self.cluster["partitions"][self.partition].get("max_runtime") if self.partition else None
        request = dict(self.request)
        runtime = int(request["runtime"]) * max(1, count)
        request["runtime"] = min(runtime, limit) if limit else runtime
        return grow_with_attempts(request, limit)

    @property
    def layout(self) -> dict:
        """Where the ranks of a Slurm step sit: nodes, tasks per node, CPUs per task and (LUMI, on a full node) the
        CPU-binding mask; empty off Slurm. The inner srun gets all of it explicitly (launch.srun_layout)."""
        if self.partition is None:
            return {}
        needs = self.needs
        if not needs["gpus"]:
            return {"nodes": 1, "tasks_per_node": max(1, int(self.ranks)), "cpus_per_task": int(needs["cpus"])}
        binding = self.cluster["gpu"].get("cpu_bind")
        full_node = needs["gpus"] == self.cluster["partitions"][self.partition]["gpus_per_node"]
        layout = {"nodes": int(needs["nodes"]), "tasks_per_node": int(needs["gpus"]),
                  "cpus_per_task": int(self.cluster["gpu"]["cpus_per_gpu"])}
        return {**layout, "cpu_bind": binding} if binding and full_node else layout


def slurm_resources(step: Step) -> dict:
    """Resources for snakemake-executor-plugin-slurm.

    A step with more than one rank (GPU training: one rank per GPU; CPU training: `ranks` tasks) gets the plugin's
    `mpi` resource, so the plugin does not wrap it in srun and the rule's own `srun` starts the ranks. A single-rank
    step runs inside the plugin's own `srun -n1` step.
    """
    needs, cluster = step.needs, step.cluster
    resources = {"slurm_partition": step.partition, "runtime": int(needs["runtime"])}
    if step.account:
        resources["slurm_account"] = step.account
    if needs["gpus"]:
        gpu = cluster["gpu"]
        extra = []
        if gpu["request"] == "gpus-per-node":
            extra.append(f"--gpus-per-node={needs['gpus']}")
        else:  # the plugin manages --gres itself
            resources["gres"] = f"gpu:{needs['gpus']}"
        if gpu["mem_per_gpu"]:
            extra.append(f"--mem-per-gpu={gpu['mem_per_gpu']}")
        limits = cluster["partitions"][step.partition]
        if needs["gpus"] == limits["gpus_per_node"] and not limits["whole_node"]:
            extra.append("--exclusive")  # all GPUs of a node: the node too (LUMI binds CPUs on whole nodes only)
        resources.update(
            nodes=int(needs["nodes"]),
            cpus_per_task=int(gpu["cpus_per_gpu"]),
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
        if step.ranks > 1:
            resources.update(nodes=1, tasks=int(step.ranks), mpi="srun")
    return resources


def check_pod_request(rule: str, needs: dict, cluster: dict) -> None:
    """What one pod cannot hold: a Slurm partition, several nodes, more GPUs than the largest node has."""
    if needs.get("partition"):
        raise ResourceError(
            f"{rule}: partition '{needs['partition']}' is a Slurm setting; Kubernetes places pods by machine type "
            f"(machine_type in {where(cluster)})"
        )
    if needs["nodes"] != 1:
        raise ResourceError(
            f"{rule}: {needs['nodes']} nodes requested; the Kubernetes executor runs each step in one pod "
            "(allowed: nodes 1; more ranks come from more GPUs per pod)"
        )
    max_gpus = cluster["gpu"]["max_per_pod"]
    if needs["gpus"] > max_gpus:
        raise ResourceError(f"{rule}: {needs['gpus']} GPUs requested; pods on {cluster['name']} have at most {max_gpus}")


def kubernetes_resources(step: Step) -> dict:
    """Resources for snakemake-executor-plugin-kubernetes: one pod per step.

    The pod's CPU request comes from the rule's threads (`Step.threads`), memory from `mem_mb`. A GPU step asks for
    `gpu` GPUs of the cluster's manufacturer (the plugin writes nvidia.com/gpu or amd.com/gpu and the matching
    toleration) with `scale: 0`, so that the plugin also writes limits: Kubernetes accepts GPUs only as limits
    (equal to the requests), and limits hold the pod to what it asked for. `machine_type` becomes the node selector
    node.kubernetes.io/instance-type when the cluster description names one for the kind of step.
    """
    needs, cluster = step.needs, step.cluster
    resources = {"runtime": int(needs["runtime"]), "mem_mb": int(needs["mem_mb"])}
    if needs["gpus"]:
        resources.update(gpu=int(needs["gpus"]), gpu_manufacturer=cluster["gpu"]["manufacturer"], scale=0)
    machine_type = (cluster.get("machine_type") or {}).get("gpu" if needs["gpus"] else "cpu")
    if machine_type:
        resources["machine_type"] = str(machine_type)
    return resources


def grow_with_attempts(resources: dict, max_runtime: int | None = None) -> dict:
    """The resources with runtime and memory growing on each retry: attempt n asks for n times the request, as
    nf-core's `task.attempt` idiom does, so a step killed at its time or memory limit gets more the next time.

    Runtime stays within `max_runtime` (the Slurm partition's); memory 0 (Slurm GPU steps: memory per GPU) stays 0.
    Snakemake calls the functions with the job's attempt; the cluster profiles set `retries:`.
    """
    grown = dict(resources)
    runtime, memory = int(resources["runtime"]), int(resources.get("mem_mb", 0))

    def runtime_for(wildcards, attempt):
        return min(runtime * attempt, max_runtime) if max_runtime else runtime * attempt

    def memory_for(wildcards, attempt):
        return memory * attempt

    grown["runtime"] = runtime_for
    if memory:
        grown["mem_mb"] = memory_for
    return grown


def check_pod_image(cluster: dict, image: str | None) -> None:
    """On Kubernetes every step runs in the pod image: Snakemake's default image has no PyTorch, MLflow or project."""
    if scheduler(cluster) != "kubernetes":
        return
    if not image or image.startswith("snakemake/snakemake:"):
        which = f"pod image '{image}' is Snakemake's default, which lacks the project's environment" if image else (
            "no pod image is set"
        )
        raise ResourceError(
            f"{which}: pass --container-image REGISTRY/IMAGE:TAG (an image with requirements.lock and the project "
            f"installed) or set container-image: in profiles/{cluster['name']}/profile.yaml"
        )


def check_executor(cluster: dict, executor: str | None) -> None:
    """Jobs go to the executor the cluster description is mapped for: a Slurm or Kubernetes run without its
    description (e.g. `--configfile` given on the command line replaces the profile's) would submit unmapped jobs."""
    if executor in ("slurm", "kubernetes") and executor != scheduler(cluster):
        raise ResourceError(
            f"the {executor} executor runs the steps, but the resources are mapped for cluster '{cluster['name']}' "
            f"({scheduler(cluster)}): the profile's cluster description is missing. A --configfile on the command "
            f"line replaces the profile's `configfile:`; name it too: --configfile config/config.yaml "
            f"profiles/<cluster>/cluster.yaml ..."
        )
