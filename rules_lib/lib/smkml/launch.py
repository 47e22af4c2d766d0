"""Compose the training command line: launcher -> container runtime -> python -m <package>.train.

This is the one place that decides how ranks are started and where they run. Each layer is chosen in one place:

    launcher   the cluster description the profile loads (`cluster.launcher`): local (<package>.local_ranks); srun,
               torchrun (per node, started by srun) or mpirun inside a Slurm job; without a cluster profile, local.
               A multi-rank Slurm launch starts with slurm_launch.py on the host: rendezvous address and port from
               the allocation, srun's MPI plugin for Horovod, per-job caches
    runtime    config/config.yaml `container:` (runtime, image, gpu, binds), with per-cluster defaults (GPU flavour,
               host binds) from the cluster description (`cluster.container`)
    python     `python -m <package>.train --backend <train.backend>`

On a cluster the launcher starts one container per rank (`srun ... singularity exec ... python`), as LUMI and LRZ
do; locally the launcher is the package's own Python program, so it runs inside the container
(`ch-run ... -- python -m <package>.local_ranks ... -- python -m <package>.train`) and the ranks share the image's
environment.
The allowed launchers, backends, runtimes and GPU flavours are the schema's (workflow/schemas/).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from . import schemas

LAUNCHERS = schemas.allowed("config", "$defs", "cluster", "properties", "launcher")
BACKENDS = schemas.allowed("config", "properties", "train", "properties", "backend")
RUNTIMES = schemas.allowed("config", "$defs", "runtime")
GPU_FLAVOURS = schemas.allowed("config", "properties", "container", "properties", "gpu")
# The metadata file every image built from containers/ carries (lock hash, base image, template version).
IMAGE_METADATA = "/etc/smkml-image.json"
BUILD_HINTS = {
    "apptainer": "build one with containers/build.sh cuda|lumi (or cotainr on LUMI, see containers/lumi/)",
    "singularity": "build one with containers/build.sh cuda|lumi (or cotainr on LUMI, see containers/lumi/)",
    "charliecloud": "build one with containers/build.sh cpu (containers/cpu/build-charliecloud.sh)",
}


class ContainerError(ValueError):
    """A container setting that cannot work, named with what is allowed."""


def _check(name: str, value: str, allowed: Sequence[str], error=ValueError) -> None:
    if value not in allowed:
        raise error(f"{name} '{value}' is not supported (allowed: {', '.join(allowed)})")


def resolve_container(
    container: dict,
    cluster: dict,
    gpus: int = 0,
    project_dir: str | Path = ".",
    check_image: bool = True,
) -> dict:
    """The container a training step runs in: config `container:` merged with the cluster's defaults (both
    validated against the schemas, so every key is there).

    Returns {runtime, image, gpu (none|rocm|cuda), binds, workdir (the absolute `project_dir`, where jobs run)}.
    `gpu: auto` takes the cluster description's `container.gpu` for steps that request GPUs, else none.
    Apptainer/Singularity get the cluster's `container.apptainer_binds` (on LUMI the Cray MPI and Slingshot
    libraries of the host) before the config's `binds`. Rejects unknown runtimes and GPU flavours, a runtime the
    cluster does not allow (`container.runtimes`), a missing image and GPU flags Charliecloud does not have.
    """
    runtime, gpu = container["runtime"], container["gpu"]
    _check("container.runtime", runtime, RUNTIMES, ContainerError)
    _check("container.gpu", gpu, GPU_FLAVOURS, ContainerError)
    defaults = cluster["container"]
    if "runtimes" in defaults and runtime not in defaults["runtimes"]:  # e.g. Kubernetes: the pod is the container
        raise ContainerError(
            f"container.runtime '{runtime}' is not supported on cluster '{cluster['name']}' "
            f"(allowed: {', '.join(defaults['runtimes'])}){': ' + defaults['why'] if defaults.get('why') else ''}"
        )
    workdir = str(Path(project_dir).absolute())
    if runtime == "none":
        return {"runtime": "none", "image": "", "gpu": "none", "binds": [], "workdir": workdir}
    image = str(container["image"])
    if not image:
        raise ContainerError(f"container.image is empty: runtime '{runtime}' needs an image; {BUILD_HINTS[runtime]}")
    if check_image and "://" not in image and not (Path(workdir) / image).exists():
        raise ContainerError(f"container.image '{image}' does not exist (runtime '{runtime}'); {BUILD_HINTS[runtime]}")
    if gpu == "auto":
        gpu = defaults["gpu"] if gpus and runtime != "charliecloud" else "none"
    if runtime == "charliecloud" and gpu != "none":
        raise ContainerError(
            f"container.gpu '{gpu}' is not supported by charliecloud (allowed: auto, none): ch-run has no GPU flag; "
            "inject the host's GPU libraries into the image with ch-fromhost instead"
        )
    binds = [str(bind) for bind in container["binds"]]
    if runtime in ("apptainer", "singularity"):
        binds = [*map(str, defaults["apptainer_binds"]), *binds]
    return {"runtime": runtime, "image": image, "gpu": gpu, "binds": binds, "workdir": workdir}


def with_data_binds(container: dict, processed_dir: str) -> dict:
    """config `container` with an absolute data.processed_dir (data.processed_dir_outside_project: true) added to its
    binds, so the ranks inside Apptainer/Singularity see it at the same path. Charliecloud cannot bind a path the
    image has no mount point for: an absolute data.processed_dir is refused there, naming both."""
    if not processed_dir.startswith("/") or container.get("runtime", "none") == "none":
        return container
    if container["runtime"] == "charliecloud":
        raise ContainerError(
            f"config data.processed_dir {processed_dir!r} is outside the project, which charliecloud cannot bind (the "
            "image has no mount point for it): use a path inside the project, or runtime apptainer/singularity"
        )
    return {**container, "binds": [*container.get("binds", []), processed_dir]}


def runtime_prefix(container: dict | None) -> list[str]:
    """The words that run the command that follows inside the container (nothing for runtime none)."""
    if not container or container["runtime"] == "none":
        return []
    runtime, image = container["runtime"], container["image"]
    if runtime in ("apptainer", "singularity"):
        # The current directory (the project) is bound by default; the host environment passes through, so
        # rank variables (SLURM_*, OMPI_*, RANK, ...) reach Python.
        flags = {"rocm": ["--rocm"], "cuda": ["--nv"], "none": []}[container["gpu"]]
        binds = [word for bind in container["binds"] for word in ("-B", bind)]
        return [runtime, "exec", *flags, *binds, image]
    # Charliecloud: the project directory at the same path (the image has that mount point, see
    # containers/cpu/build-charliecloud.sh), started there; PATH and friends from the image (/ch/environment).
    workdir = container["workdir"]
    binds = [word for bind in container["binds"] for word in ("-b", bind)]
    return ["ch-run", "--set-env", "-b", workdir, *binds, "-c", workdir, image, "--"]


SLURM_LAUNCH = Path(__file__).with_name("slurm_launch.py")


def srun_layout(layout: dict | None, processes: int) -> list[str]:
    """srun options placing `processes` ranks as `layout` says (from resources.Step.layout).

    Explicit, because the Slurm jobstep executor strips SLURM_* variables before the step's command runs: without
    them an inner srun knows only the job id, not how many tasks go on each node or how many CPUs each one gets.
    """
    if not layout:
        return [f"--ntasks={processes}"]
    options = [f"--nodes={layout['nodes']}", f"--ntasks-per-node={layout['tasks_per_node']}",
               f"--cpus-per-task={layout['cpus_per_task']}"]
    return [*options, f"--cpu-bind={layout['cpu_bind']}"] if layout.get("cpu_bind") else options


# One Horovod rank without a launcher: the Gloo controller, which needs no rendezvous for a world of one.
HOROVOD_ONE_RANK = ["HOROVOD_CONTROLLER=gloo", "HOROVOD_CPU_OPERATIONS=gloo"]


def launcher_prefix(
    launcher: str, backend: str, processes: int, layout: dict | None = None, *, package: str
) -> tuple[list[str], list[str]]:
    """(words before the container, words after it) that start `processes` ranks of the Python that follows
    (`python -m <package>.train`: a local launch starts them with `python -m <package>.local_ranks`)."""
    _check("launcher", launcher, LAUNCHERS)
    _check("backend", backend, BACKENDS)
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if launcher == "torchrun" and backend != "torch_ddp":
        raise ValueError(f"launcher 'torchrun' starts torch DDP ranks only (backend '{backend}': use srun or mpirun)")
    if processes == 1:
        if launcher == "local" and backend == "horovod":
            # One rank, no launcher: Horovod would start MPI as a singleton, which needs Open MPI's `orted` (not in
            # the project's images, so a one-rank pod or container failed at MPI_Init). Gloo for one rank needs none.
            return ["env", *HOROVOD_ONE_RANK], []
        return [], []  # one rank runs in the executor's own job step (or process): nothing to start
    if launcher == "srun":
        # One rank per task; rank and size from SLURM_* (DDP) or the PMI (Horovod), the rendezvous from outside.
        return ["srun", *srun_layout(layout, processes)], []
    if launcher == "torchrun":
        # One torchrun per node (started by srun), each starting that node's ranks; c10d rendezvous at the first node.
        layout = layout or {"nodes": 1, "tasks_per_node": processes, "cpus_per_task": 1}
        per_node = int(layout["tasks_per_node"])
        node = {"nodes": layout["nodes"], "tasks_per_node": 1, "cpus_per_task": per_node * int(layout["cpus_per_task"])}
        torchrun = ["torchrun", f"--nnodes={layout['nodes']}", f"--nproc-per-node={per_node}", "--rdzv-backend=c10d"]
        return ["srun", *srun_layout(node, processes)], torchrun
    if launcher == "mpirun":
        # Inside a Slurm allocation, Open MPI's mpirun starts the ranks on the allocated nodes (Horovod with an MPI
        # that lacks Slurm PMI, as Debian's). Rank and size reach Horovod through MPI, DDP through OMPI_COMM_WORLD_*.
        return ["mpirun", "-np", str(processes), "--bind-to", "none"], []
    # Local: every rank on this machine, started by the package's own launcher (<package>.local_ranks) with every
    # socket on loopback: its rendezvous server, the ranks' store and Gloo. horovodrun and torchrun would host a
    # rendezvous server on every interface (Horovod 0.28.1, torch 2.13 have no bind option).
    return ["python", "-m", f"{package}.local_ranks", "--backend", backend, "--processes", str(processes), "--"], []


def slurm_launch_prefix(
    backend: str, layout: dict | None, mpi: str, runtime: Sequence[str], cache_dir: str
) -> list[str]:
    """The host-side start of a multi-rank Slurm launch (slurm_launch.py: rendezvous, srun's MPI, per-job caches)."""
    nodes = int(layout["nodes"]) if layout else 1
    caches = ["--cache-dir", cache_dir] if cache_dir else []
    return [sys.executable, str(SLURM_LAUNCH), "--nodes", str(nodes), "--backend", backend, "--mpi", mpi,
            "--runtime", json.dumps(list(runtime)), *caches, "--"]


def lone_rank_prefix() -> list[str]:
    """The host-side start of one Horovod rank in the executor's own Slurm job step (slurm_launch.py --alone)."""
    return [sys.executable, str(SLURM_LAUNCH), "--alone", "--"]


def training_command(
    *,
    launcher: str,
    backend: str,
    processes: int,
    package: str,
    args: Sequence[str],
    layout: dict | None = None,
    mpi: str = "auto",
    cache_dir: str = "",
    container: dict | None = None,
) -> str:
    """A shell-quoted command line that trains with `processes` ranks (in `container`, from resolve_container).

    `layout` places the ranks of a Slurm launch (resources.Step.layout); `mpi` and `cache_dir` are the cluster
    description's (see slurm_launch.py, which runs first on the host for every multi-rank Slurm launch).
    """
    before, after = launcher_prefix(launcher, backend, processes, layout, package=package)
    module = ["-m", f"{package}.train"]
    python = module if after[:1] == ["torchrun"] or before[:1] == ["torchrun"] else ["python", *module]
    runtime = runtime_prefix(container)
    if launcher == "local":
        # Local launchers are Python programs of the image: they run inside the container.
        layers = [*runtime, *before]
    else:
        # Slurm launchers start one container per rank (torchrun: per node), from the host.
        if before:
            host = slurm_launch_prefix(backend, layout, mpi, runtime, cache_dir)
        else:  # one rank: Horovod's MPI must not take the executor's job step for an srun launch without PMI
            host = lone_rank_prefix() if backend == "horovod" else []
        layers = [*host, *before, *runtime, *after]
    return shlex.join([*layers, *python, "--backend", backend, *args])


PROBE = (
    'import os, sys; path = "{path}"; '
    'print("container python:", sys.executable, flush=True); '
    'print("container image:", open(path).read().strip() if os.path.exists(path) else "no " + path, flush=True)'
)


def container_probe(container: dict | None) -> str:
    """A command that reports, from inside the container, its Python and the image's build metadata.

    The training rule writes its output at the top of the training log, so the log says where training ran.
    """
    if not container or container["runtime"] == "none":
        return "true"
    header = f"container: {container['runtime']} {container['image']}"
    code = PROBE.format(path=IMAGE_METADATA)
    return f"echo {shlex.quote(header)}; " + shlex.join([*runtime_prefix(container), "python", "-c", code])

