"""Start a training step's ranks inside a Slurm allocation: what only the job itself can know, worked out on the host.

The training rule runs this script (with the workflow's own Python, outside any container) in front of the launcher
that `launch.training_command` composed:

    python slurm_launch.py --nodes 2 --mpi auto --runtime '["ch-run", ...]' --cache-dir /tmp -- srun ... python -m ...

It then

* sets the rendezvous for torch DDP and torchrun: ``MASTER_ADDR`` is the address of the allocation's first node
  (Slurm's ``NodeAddr``, looked up with ``scontrol`` here, since containers have no Slurm tools) and ``MASTER_PORT``
  is derived from the job id as the LUMI AI Guide does (``1${SLURM_JOB_ID:0-4}``: 10000 + the last four digits), so
  two jobs sharing a node use different ports. A job spanning nodes with no address for its first node, or with a
  loopback one, stops here with an error: a rendezvous at 127.0.0.1 would wait forever for the other nodes;
* for Horovod ranks started by ``srun``, gives srun the PMI the ranks' MPI needs (``--mpi=pmix`` for Open MPI,
  ``--mpi=pmi2`` for MPICH and the MPICH ABI, as Cray MPICH and LUMI's images): the cluster description's
  ``mpi``, or with ``auto`` the MPI that Horovod is linked against, seen from inside the runtime the ranks use;
* puts per-job caches (MIOpen's database, ``TORCH_HOME``, ``HF_HOME``) in a folder of this job under ``--cache-dir``
  (node-local ``/tmp`` on LUMI), not on the home quota;
* prints what it chose (the training log keeps it) and replaces itself with the launcher.

With `--alone` (one Horovod rank in the executor's own job step) it only starts the command without the step's
Slurm variables, which would make Open MPI expect a PMI that srun did not give it.

Standard library only: it runs as a plain script, before anything of the project is importable.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import subprocess
import sys

MPI_CHOICES = ("auto", "pmix", "pmi2", "none")
# Run inside the ranks' runtime: which MPI Horovod's extension is linked against (Open MPI's libmpi.so.40, or the
# MPICH ABI's libmpi.so.12 / libmpich), printed as the srun MPI plugin it needs.
DETECT_MPI = """\
import glob, importlib.util, os, subprocess
spec = importlib.util.find_spec("horovod")
where = list(spec.submodule_search_locations) if spec else []
libs = [lib for top in where for lib in glob.glob(os.path.join(top, "torch", "mpi_lib*.so"))]
out = subprocess.run(["ldd", libs[0]], capture_output=True, text=True).stdout if libs else ""
print("pmix" if "libmpi.so.40" in out else "pmi2" if ("libmpi.so.12" in out or "libmpich" in out) else "none")
"""
CACHES = {
    "MIOPEN_USER_DB_PATH": "miopen",
    "MIOPEN_CUSTOM_CACHE_DIR": "miopen",
    "TORCH_HOME": "torch",
    "HF_HOME": "huggingface",
}


class LaunchError(RuntimeError):
    """Something the launch cannot work without, said with what to do."""


def scontrol(*args: str) -> str:
    try:
        result = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise LaunchError(f"scontrol {' '.join(args)} failed: {error}") from error
    if result.returncode != 0:
        raise LaunchError(f"scontrol {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def fields(record: str) -> dict[str, str]:
    """KEY=VALUE pairs of a one-line (`-o`) scontrol record."""
    return dict(item.split("=", 1) for item in record.split() if "=" in item)


def first_node(job_id: str, run=scontrol) -> tuple[str, str]:
    """(name, address) of the first node of job `job_id`'s allocation, from the controller."""
    nodelist = fields(run("show", "job", "-o", job_id)).get("NodeList", "")
    if not nodelist or nodelist == "(null)":
        raise LaunchError(f"Slurm job {job_id} has no nodes allocated (scontrol show job {job_id})")
    name = run("show", "hostnames", nodelist).split()[0]
    address = fields(run("show", "node", "-o", name)).get("NodeAddr") or name
    return name, address


def rendezvous_port(job_id: str) -> int:
    """10000 + the job id's last four digits (the LUMI AI Guide's `1${SLURM_JOB_ID:0-4}`), below the ephemeral ports."""
    return 10000 + int(job_id) % 10000


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def rendezvous(environ: dict[str, str], nodes: int, run=scontrol) -> dict[str, str]:
    """MASTER_ADDR and MASTER_PORT for this job (values already set in the environment win)."""
    job_id = environ.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        raise LaunchError("not inside a Slurm job (no SLURM_JOB_ID): the Slurm launchers start ranks in an allocation")
    if environ.get("MASTER_ADDR"):
        name, address = "(from MASTER_ADDR)", environ["MASTER_ADDR"]
    else:
        name, address = first_node(job_id, run)
    if nodes > 1 and is_loopback(address):
        raise LaunchError(
            f"job {job_id} spans {nodes} nodes but its first node {name} has the loopback address {address}: ranks on "
            "the other nodes cannot reach a rendezvous there; set NodeAddr of the nodes in slurm.conf (or MASTER_ADDR)"
        )
    return {"MASTER_ADDR": address, "MASTER_PORT": environ.get("MASTER_PORT") or str(rendezvous_port(job_id)),
            "_node": name}


def detect_mpi(runtime: list[str]) -> str:
    """The srun MPI plugin Horovod needs, from inside `runtime` (the words that run a command in the container)."""
    command = [*runtime, "python", "-c", DETECT_MPI]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as error:
        raise LaunchError(f"could not look for Horovod's MPI ({shlex.join(command[:-1])} ...): {error}") from error
    flavour = result.stdout.strip().splitlines()[-1:] if result.returncode == 0 else []
    if flavour not in (["pmix"], ["pmi2"]):
        where = "in the container" if runtime else "in the workflow's environment"
        raise LaunchError(
            f"mpi: auto found no MPI that Horovod is linked against {where} ({result.stderr.strip()[-500:]}); "
            "build Horovod with MPI (containers/horovod/build-horovod.sh), or set cluster.mpi to pmix (Open MPI) "
            "or pmi2 (MPICH), or use launcher: mpirun"
        )
    return flavour[0]


def job_caches(cache_dir: str, environ: dict[str, str]) -> dict[str, str]:
    """Per-job cache folders under `cache_dir`. Created here, on the job's first node; on the other nodes (a
    node-local /tmp) MIOpen, torch and Hugging Face create them when they first write."""
    root = os.path.join(cache_dir, f"smkml-{environ.get('USER', 'user')}-{environ.get('SLURM_JOB_ID', os.getpid())}")
    caches = {name: os.path.join(root, sub) for name, sub in CACHES.items() if not environ.get(name)}
    for path in set(caches.values()):
        os.makedirs(path, exist_ok=True)
    return caches


def with_mpi(command: list[str], mpi: str) -> list[str]:
    """`command` with `--mpi=<mpi>` right after its leading srun (unchanged for other launchers or mpi none)."""
    if mpi == "none" or not command or os.path.basename(command[0]) != "srun":
        return command
    return [command[0], f"--mpi={mpi}", *command[1:]]


# What a lone rank keeps of its job step's Slurm variables: the job's identity, recorded as provenance.
ALONE_KEEPS = ("SLURM_JOB_ID", "SLURM_CLUSTER_NAME")


def alone(environ: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The environment of a single rank running inside the executor's own `srun -n1` step, without the step's
    Slurm variables: Open MPI (Horovod's MPI) takes them for an srun launch of a job and, lacking Slurm's PMI there,
    aborts ("OMPI was not built with SLURM's PMI support"); without them it starts as a singleton."""
    dropped = sorted(name for name in environ if name.startswith("SLURM") and name not in ALONE_KEEPS)
    return {name: value for name, value in environ.items() if name not in dropped}, dropped


def plan(options: argparse.Namespace, environ: dict[str, str], run=scontrol) -> tuple[list[str], dict[str, str], list[str]]:
    """(command, environment additions, messages) for the launch."""
    command = list(options.command)
    messages = []
    if options.alone:
        return command, {}, ["one rank in this job step: started without the step's Slurm variables (MPI singleton)"]
    point = rendezvous(environ, options.nodes, run)
    node = point.pop("_node")
    env = dict(point)
    # torchrun reads its rendezvous from PET_* variables: the endpoint and an id shared by the nodes of this job.
    env.update(PET_RDZV_ENDPOINT=f"{point['MASTER_ADDR']}:{point['MASTER_PORT']}", PET_RDZV_ID=environ["SLURM_JOB_ID"])
    messages.append(f"rendezvous: MASTER_ADDR={point['MASTER_ADDR']} (first node {node}) MASTER_PORT={point['MASTER_PORT']}")
    if options.backend == "horovod" and command and os.path.basename(command[0]) == "srun":
        mpi = options.mpi
        if mpi == "auto":
            mpi = detect_mpi(json.loads(options.runtime))
            messages.append(f"mpi: Horovod's MPI needs srun --mpi={mpi} (detected; cluster.mpi: auto)")
        else:
            messages.append(f"mpi: srun --mpi={mpi} (cluster.mpi)")
        command = with_mpi(command, mpi)
    if options.cache_dir:
        caches = job_caches(options.cache_dir, environ)
        env.update(caches)
        if caches:
            messages.append(f"caches: {', '.join(sorted(caches))} under {os.path.dirname(next(iter(caches.values())))}")
    return command, env, messages


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1, help="nodes the ranks span")
    parser.add_argument("--backend", default="", help="training backend (horovod gets an MPI plugin for srun)")
    parser.add_argument("--mpi", choices=MPI_CHOICES, default="auto", help="srun's MPI plugin for Horovod ranks")
    parser.add_argument("--runtime", default="[]", help="JSON list: the words that run a command in the container")
    parser.add_argument("--cache-dir", default="", help="put per-job caches under this folder (e.g. /tmp)")
    parser.add_argument("--alone", action="store_true", help="one rank, in the executor's own job step (see alone())")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the launcher command line")
    options = parser.parse_args(argv)
    if options.command[:1] == ["--"]:
        options.command = options.command[1:]
    if not options.command:
        parser.error("no command to launch after --")
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse(sys.argv[1:] if argv is None else argv)
    try:
        command, env, messages = plan(options, dict(os.environ))
    except LaunchError as error:
        sys.exit(f"ERROR: {error}")
    for message in messages:
        print(message, flush=True)
    environ = alone(dict(os.environ))[0] if options.alone else dict(os.environ)
    os.execvpe(command[0], command, {**environ, **env})


if __name__ == "__main__":
    main()
