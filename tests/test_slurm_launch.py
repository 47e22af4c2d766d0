"""The host side of a multi-rank Slurm launch (rules_lib/lib/smkml/slurm_launch.py), on the strict mini-LUMI.

What a training job cannot learn inside its container is worked out here, before the ranks start: the rendezvous
(the first node's own address, a port per job), srun's MPI plugin for Horovod, per-job caches. Checked in real
jobs: as the Slurm jobstep executor leaves them (SLURM_* stripped but the job id), across both nodes, and with two
jobs sharing a node.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest
from smkml import slurm_launch
from smkml.launch import SLURM_LAUNCH

from slurm_cluster import ACCOUNT

# A tiny DDP program: every rank joins the rendezvous the launch set, all-reduces its rank, reports where it ran.
DDP_PROBE = textwrap.dedent(
    """
    import os, socket, time, torch, torch.distributed as dist
    rank, size = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))), int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))
    dist.init_process_group("gloo", init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}", rank=rank, world_size=size)
    total = torch.tensor(float(rank)); dist.all_reduce(total)
    time.sleep(float(os.environ.get("HOLD", "0")))
    print(f"rank {rank}/{size} on {socket.gethostname()} sum {int(total)} at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}", flush=True)
    dist.destroy_process_group()
    """
)


MPICH_LINE = re.compile(r"mpich rank (\d+)/(\d+) on (nid\d+) sum (\d+)")
RANK_LINE = re.compile(r"rank (\d+)/(\d+) on (nid\d+) sum (\d+) at ([\w.]+:\d+)")


def stripped(command: str) -> str:
    """`command` as the jobstep executor runs it: every SLURM_* variable dropped except the job id."""
    keep = "SLURM_JOB_ID=$SLURM_JOB_ID SLURM_CONF=$SLURM_CONF"
    return f"env $(env | grep -o '^SLURM_[A-Z_]*' | sed 's/^/-u /') {keep} {command}"


def submit(cluster, tmp_path, name: str, nodes: int, command: str, *options: str) -> str:
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/bash\nset -e\n{stripped(command)}\n")
    out = tmp_path / f"{name}.out"
    result = cluster.run(["sbatch", "--parsable", "-A", ACCOUNT, "-p", "small", "-N", str(nodes), "--ntasks-per-node=2",
                          "--mem=2000", "-o", str(out), *options, str(script)], timeout=60)
    return result.stdout.strip().split(";")[0]


def wait(cluster, job_ids: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not cluster.run(["squeue", "-h", "-j", ",".join(job_ids)], check=False).stdout.strip():
            return
        time.sleep(1)
    raise AssertionError(f"jobs {job_ids} still running after {timeout} s\n{cluster.logs()}")


def launch(*options: str) -> str:
    return f"{sys.executable} {SLURM_LAUNCH} {' '.join(options)} --"


@pytest.fixture
def probe(tmp_path):
    path = tmp_path / "ddp_probe.py"
    path.write_text(DDP_PROBE)
    return path


def ddp_on_both_nodes(cluster, tmp_path, name: str, program: str) -> tuple[str, str, int]:
    """`python <program>` as 4 torch DDP ranks, 2 on each node, started by the launch (isolated nodes only): the
    job's output, the first node's address and the job's rendezvous port."""
    cluster.require_isolation()
    job = submit(cluster, tmp_path, name, 2,
                 f"{launch('--nodes', '2', '--backend', 'torch_ddp')} srun --nodes=2 --ntasks-per-node=2 "
                 f"{sys.executable} {program}")
    wait(cluster, [job])
    return (tmp_path / f"{name}.out").read_text(), cluster.node_address("nid001"), slurm_launch.rendezvous_port(job)


def ranks_on_both_nodes(address: str, port: int) -> list[tuple[str, ...]]:
    """RANK_LINE's fields of the 4 ranks: 2 per node, each summing 0+1+2+3, met at `address`:`port`."""
    return [(str(r), "4", "nid001" if r < 2 else "nid002", "6", f"{address}:{port}") for r in range(4)]


def test_ranks_on_both_nodes_meet_at_the_first_nodes_address(slurm_cluster, tmp_path, probe):
    out, address, port = ddp_on_both_nodes(slurm_cluster, tmp_path, "two-nodes", str(probe))
    assert f"rendezvous: MASTER_ADDR={address} (first node nid001) MASTER_PORT={port}" in out, out
    ranks = sorted(RANK_LINE.findall(out))  # ranks on two nodes share one output file: lines may run together
    assert ranks == ranks_on_both_nodes(address, port), out


# The project's own DDP start (backends.py: ddp_environment and rendezvous_store), and what listens on MASTER_PORT in
# the first node's network namespace while the ranks are connected (rank 0 reads its own /proc/net/tcp*).
STORE_PROBE = textwrap.dedent(
    """
    import importlib.util, os, socket, sys, torch, torch.distributed as dist
    spec = importlib.util.spec_from_file_location("backends", sys.argv[1])
    backends = importlib.util.module_from_spec(spec); spec.loader.exec_module(backends)
    env = backends.ddp_environment(dict(os.environ))
    rank, size, port = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["MASTER_PORT"])
    dist.init_process_group("gloo", store=backends.rendezvous_store(env), rank=rank, world_size=size)
    if rank == 0:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in open(table).read().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    host = local.rsplit(":", 1)[0]
                    address = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)) if len(host) == 8 else host
                    print(f"store listens at {address}:{port} on {socket.gethostname()}", flush=True)
    total = torch.tensor(float(rank)); dist.all_reduce(total)
    print(f"rank {rank}/{size} on {socket.gethostname()} sum {int(total)} at {env['MASTER_ADDR']}:{port}", flush=True)
    dist.destroy_process_group()
    """
)
BACKENDS = Path(__file__).parents[1] / "{{cookiecutter.project_slug}}/src/{{cookiecutter.package_name}}/backends.py"


def test_the_projects_ddp_store_listens_on_the_first_nodes_address_only(slurm_cluster, tmp_path):
    """`launcher: srun` with torch DDP: rank 0 hosts the ranks' store on MASTER_ADDR (the first node's address),
    not on every interface as torch's own env:// rendezvous would."""
    probe = tmp_path / "store_probe.py"
    probe.write_text(STORE_PROBE)
    out, address, port = ddp_on_both_nodes(slurm_cluster, tmp_path, "store", f"{probe} {BACKENDS}")
    assert re.findall(r"store listens at ([\w.:]+) on (nid\d+)", out) == [(f"{address}:{port}", "nid001")], out
    assert sorted(RANK_LINE.findall(out)) == ranks_on_both_nodes(address, port), out


def test_torchrun_per_node_across_both_nodes(slurm_cluster, tmp_path, probe):
    """The torchrun launcher: one torchrun per node (srun), c10d rendezvous at the first node, from PET_* variables."""
    slurm_cluster.require_isolation()
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    job = submit(slurm_cluster, tmp_path, "torchrun", 2,
                 f"{launch('--nodes', '2', '--backend', 'torch_ddp')} srun --nodes=2 --ntasks-per-node=1 "
                 f"{torchrun} --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d {probe}")
    wait(slurm_cluster, [job])
    out = (tmp_path / "torchrun.out").read_text()
    ranks = RANK_LINE.findall(out)  # ranks on two nodes share one output file: lines may run together
    assert sorted(host for _, _, host, _, _ in ranks) == ["nid001", "nid001", "nid002", "nid002"], out
    assert all(total == "6" for _, _, _, total, _ in ranks), out


def test_two_jobs_on_one_node_do_not_share_a_rendezvous_port(slurm_cluster, tmp_path, probe):
    jobs = [
        submit(slurm_cluster, tmp_path, f"job{i}", 1,
               f"HOLD=5 {launch('--nodes', '1', '--backend', 'torch_ddp')} srun --nodes=1 --ntasks-per-node=2 "
               f"{sys.executable} {probe}", "-w", "nid001")
        for i in range(2)
    ]
    wait(slurm_cluster, jobs)
    outs = [(tmp_path / f"job{i}.out").read_text() for i in range(2)]
    ports = {point.rsplit(":", 1)[1] for out in outs for *_, point in RANK_LINE.findall(out)}
    assert ports == {str(slurm_launch.rendezvous_port(job)) for job in jobs} and len(ports) == 2, outs
    rows = [slurm_cluster.sacct(job, ["NodeList", "Start", "End"])[0] for job in jobs]
    assert all(row["State"] == "COMPLETED" and row["NodeList"] == "nid001" for row in rows), rows
    assert max(row["Start"] for row in rows) < min(row["End"] for row in rows), rows  # they ran at the same time


def test_per_job_caches_are_created_and_passed_on(tmp_path):
    options = slurm_launch.parse(["--cache-dir", str(tmp_path), "--", "true"])
    command, env, messages = slurm_launch.plan(options, {"SLURM_JOB_ID": "4242", "USER": "ada", "MASTER_ADDR": "10.0.0.1"})
    folder = tmp_path / "smkml-ada-4242"
    assert (env["MIOPEN_USER_DB_PATH"], env["TORCH_HOME"], env["HF_HOME"]) == (
        str(folder / "miopen"), str(folder / "torch"), str(folder / "huggingface"))
    assert (folder / "miopen").is_dir() and command == ["true"]
    assert (env["MASTER_PORT"], env["PET_RDZV_ENDPOINT"]) == ("14242", "10.0.0.1:14242")


def test_a_multi_node_job_with_a_loopback_first_node_stops_with_an_error():
    records = {("show", "job", "-o", "77"): "JobId=77 NodeList=nid[001-002] BatchHost=nid001",
               ("show", "hostnames", "nid[001-002]"): "nid001\nnid002\n",
               ("show", "node", "-o", "nid001"): "NodeName=nid001 NodeAddr=127.0.0.1 NodeHostName=nid001"}
    with pytest.raises(slurm_launch.LaunchError, match="spans 2 nodes but its first node nid001 has the loopback"):
        slurm_launch.rendezvous({"SLURM_JOB_ID": "77"}, 2, run=lambda *args: records[args])
    # One node: loopback is right.
    assert slurm_launch.rendezvous({"SLURM_JOB_ID": "77"}, 1, run=lambda *args: records[args])["MASTER_ADDR"] == "127.0.0.1"


def test_outside_a_slurm_job_the_launch_says_so():
    with pytest.raises(slurm_launch.LaunchError, match="not inside a Slurm job"):
        slurm_launch.rendezvous({}, 2)


@pytest.mark.parametrize("mpi, expected", [("pmix", ["srun", "--mpi=pmix", "-n2", "x"]), ("none", ["srun", "-n2", "x"])])
def test_horovod_ranks_get_the_mpi_plugin_right_after_srun(mpi, expected):
    options = slurm_launch.parse(["--backend", "horovod", "--mpi", mpi, "--", "srun", "-n2", "x"])
    command, _, messages = slurm_launch.plan(options, {"SLURM_JOB_ID": "5", "MASTER_ADDR": "10.0.0.1"})
    assert command == expected and f"mpi: srun --mpi={mpi} (cluster.mpi)" in messages


def test_auto_finds_the_mpi_horovod_is_linked_against(monkeypatch, tmp_path):
    """Here Horovod is built on Debian's Open MPI (make env): PMIx. A Python without Horovod: a clear error."""
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    assert slurm_launch.detect_mpi([]) == "pmix"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "python").symlink_to("/usr/bin/python3")
    monkeypatch.setenv("PATH", f"{bare}{os.pathsep}/usr/bin:/bin")
    with pytest.raises(slurm_launch.LaunchError, match="mpi: auto found no MPI that Horovod is linked against in the "
                                                       "workflow's environment"):
        slurm_launch.detect_mpi([])


MPI_HELLO = r"""
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rank, size, sum, one;
    char host[64];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    gethostname(host, sizeof host);
    printf("mpich rank %d/%d on %s sum %d\n", rank, size, host, sum);
    MPI_Finalize();
    return 0;
}
"""


def mpich_compiler() -> str:
    """MPICH's compiler wrapper (Debian's libmpich-dev, installed next to Open MPI when missing; root only)."""
    import shutil

    if not shutil.which("mpicc.mpich"):
        if os.geteuid() != 0:
            pytest.skip("MPICH is not installed (apt-get install libmpich-dev)")
        from system_packages import apt_install

        apt_install(["libmpich-dev"], timeout=600)
    return shutil.which("mpicc.mpich")


def test_mpich_ranks_started_by_srun_get_pmi2_across_both_nodes(slurm_cluster, tmp_path):
    """LUMI's way for the images' MPICH: srun --mpi=pmi2 (cluster.mpi: pmi2, or auto on an MPICH-linked Horovod).
    Without a PMI each MPICH rank starts alone (size 1): why the launch must choose one."""
    import subprocess

    slurm_cluster.require_isolation()
    source = tmp_path / "hello.c"
    source.write_text(MPI_HELLO)
    subprocess.run([mpich_compiler(), "-o", str(tmp_path / "hello"), str(source)], check=True, timeout=120)
    jobs = {
        mpi: submit(slurm_cluster, tmp_path, f"mpich-{mpi}", 2,
                    f"{launch('--nodes', '2', '--backend', 'horovod', '--mpi', mpi)} srun --nodes=2 "
                    f"--ntasks-per-node=2 {tmp_path / 'hello'}")
        for mpi in ("pmi2", "none")
    }
    wait(slurm_cluster, list(jobs.values()))
    with_pmi = (tmp_path / "mpich-pmi2.out").read_text()
    assert "mpi: srun --mpi=pmi2 (cluster.mpi)" in with_pmi
    lines = sorted(MPICH_LINE.findall(with_pmi))
    assert lines == [(str(r), "4", "nid001" if r < 2 else "nid002", "6") for r in range(4)], with_pmi
    alone = (tmp_path / "mpich-none.out").read_text()
    assert sorted(MPICH_LINE.findall(alone)) == [("0", "1", node, "0") for node in ("nid001", "nid001", "nid002", "nid002")], alone


def test_one_horovod_rank_in_the_executors_own_step(slurm_cluster, tmp_path):
    """The default LUMI project trains on 1 GPU: one rank inside the executor's `srun -n1` step. Open MPI takes the
    step's variables for an srun launch without PMI and aborts; started --alone it runs as a singleton, and the job
    id (provenance) stays."""
    pytest.importorskip("horovod.torch")
    code = ("import os, horovod.torch as hvd; hvd.init(); "
            "print('horovod size', hvd.size(), 'job', os.environ.get('SLURM_JOB_ID'), flush=True)")
    script = tmp_path / "lone.sh"
    script.write_text(
        "#!/bin/bash\nexport OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\n"
        f"{launch('--alone')} {sys.executable} -c \"{code}\" || echo alone failed\n"
        f"{sys.executable} -c \"{code}\" > {tmp_path}/plain.out 2>&1 || echo plain failed\n"
    )
    script.chmod(0o755)
    result = slurm_cluster.run(["srun", "-p", "small", "-A", ACCOUNT, "-n1", "--cpu-bind=q", str(script)], timeout=180)
    assert re.search(r"horovod size 1 job \d+", result.stdout), result.stdout + result.stderr
    assert "one rank in this job step: started without the step's Slurm variables" in result.stdout
    assert "plain failed" in result.stdout  # why: without --alone Open MPI refuses
    assert "OMPI was not built with SLURM's PMI support" in (tmp_path / "plain.out").read_text()
