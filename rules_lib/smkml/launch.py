"""Compose the training command line: launcher -> (container runtime) -> python -m <package>.train.

This is the one place that decides how ranks are started. The launcher comes from the profile
(`config: launcher`), the backend from config/config.yaml.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

LAUNCHERS = ("local", "srun", "mpirun")
BACKENDS = ("horovod", "torch_ddp")


def _check(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} '{value}' is not supported (allowed: {', '.join(allowed)})")


def launcher_prefix(launcher: str, backend: str, processes: int, options: Sequence[str] = ()) -> list[str]:
    """The words that start `processes` ranks of the command that follows (`options`: extra srun options)."""
    _check("launcher", launcher, LAUNCHERS)
    _check("backend", backend, BACKENDS)
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if launcher == "srun":
        # Inside a Slurm allocation: srun starts one rank per task; rank, size and rendezvous come from SLURM_*.
        # One rank already runs inside the executor's own job step: no nested srun.
        return ["srun", f"--ntasks={processes}", *options] if processes > 1 else []
    if launcher == "mpirun":
        # Inside a Slurm allocation, Open MPI's mpirun starts the ranks on the allocated nodes (Horovod with an MPI
        # that lacks Slurm PMI, as Debian's). Rank and size reach Horovod through MPI, DDP through OMPI_COMM_WORLD_*.
        return ["mpirun", "-np", str(processes), "--bind-to", "none", *options] if processes > 1 else []
    if processes == 1:
        return []
    if backend == "horovod":
        return ["horovodrun", "-np", str(processes), "-H", f"localhost:{processes}", "--gloo"]
    return ["torchrun", "--standalone", "--nnodes=1", f"--nproc-per-node={processes}"]


def training_command(
    *,
    launcher: str,
    backend: str,
    processes: int,
    package: str,
    args: Sequence[str],
    launcher_options: Sequence[str] = (),
) -> str:
    """A shell-quoted command line that trains with `processes` ranks."""
    prefix = launcher_prefix(launcher, backend, processes, launcher_options)
    if prefix[:1] == ["torchrun"]:
        python = ["-m", f"{package}.train"]
    else:
        python = ["python", "-m", f"{package}.train"]
    return shlex.join([*prefix, *python, "--backend", backend, *args])
