"""The mini-LUMI Slurm test cluster behaves like LUMI where the generated workflows depend on it."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta

import pytest

from slurm_cluster import ACCOUNT, MiniLumi

pytestmark = pytest.mark.slurm


def sacct_record(cluster: MiniLumi, job_id: str, timeout: float = 60) -> dict[str, str]:
    """The job's allocation record once it is complete in the accounting database."""
    return cluster.sacct(job_id, ["JobID", "Partition", "Account", "AllocTRES", "State"], timeout=timeout)[0]


def test_partitions_and_time_limits(slurm_cluster):
    result = slurm_cluster.run(["sinfo", "-h", "-o", "%P|%l|%a|%D"])
    partitions = {}
    for line in result.stdout.splitlines():
        name, limit, avail, nodes = line.split("|")
        partitions[name] = (limit, avail, nodes)
    assert partitions == {
        "small*": ("3-00:00:00", "up", "2"),
        "small-g": ("3-00:00:00", "up", "2"),
        "standard-g": ("2-00:00:00", "up", "2"),
        "dev-g": ("3:00:00", "up", "2"),
    }


def test_nodes_look_like_lumi_g_nodes(slurm_cluster):
    result = slurm_cluster.run(["sinfo", "-h", "-N", "-p", "standard-g", "-o", "%N|%c|%m|%G"])
    nodes = sorted(tuple(line.split("|")) for line in result.stdout.splitlines())
    assert nodes == [
        ("nid001", "64", "491520", "gpu:8"),
        ("nid002", "64", "491520", "gpu:8"),
    ]


def test_full_node_request_runs_16_ranks_on_two_nodes(slurm_cluster):
    result = slurm_cluster.run(
        "srun -p standard-g -A project_465000001 -N 2 --gpus-per-node=8 --ntasks-per-node=8 "
        "--cpus-per-task=7 --mem-per-gpu=60G bash -c 'echo $SLURM_PROCID $SLURMD_NODENAME'",
        timeout=120,
    )
    ranks = {}
    for line in result.stdout.splitlines():
        rank, node = line.split()
        ranks[int(rank)] = node
    assert sorted(ranks) == list(range(16)), result.stdout
    assert sorted(ranks.values()) == ["nid001"] * 8 + ["nid002"] * 8
    # block distribution: ranks 0-7 on the first node, 8-15 on the second
    assert {ranks[r] for r in range(8)} != {ranks[r] for r in range(8, 16)}


def test_each_node_has_its_own_network(slurm_cluster):
    """As on a real cluster: a service on nid001's 127.0.0.1 is not reachable from nid002, nid001's address is."""
    slurm_cluster.require_isolation()
    address = slurm_cluster.node_address("nid001")
    program = (
        "import os, socket, time\n"
        "if os.environ['SLURM_PROCID'] == '0':\n"
        "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 23456));"
        " s.listen(); time.sleep(4)\n"
        "else:\n"
        "    time.sleep(1)\n"
        "    for host in ('127.0.0.1', '" + address + "'):\n"
        "        try:\n"
        "            socket.create_connection((host, 23456), timeout=2).close(); print(host, 'reached', flush=True)\n"
        "        except OSError:\n"
        "            print(host, 'unreachable', flush=True)\n"
        "print(os.environ['SLURMD_NODENAME'], socket.gethostname(), flush=True)\n"
    )
    result = slurm_cluster.run(["srun", "-p", "small", "-A", ACCOUNT, "-N", "2", "--ntasks-per-node=1", "python3", "-c",
                                program], timeout=120)
    lines = sorted(result.stdout.splitlines())
    assert lines == sorted([f"{address} reached", "127.0.0.1 unreachable", "nid001 nid001", "nid002 nid002"]), result.stdout


def test_without_separate_networks_multi_node_tests_say_why_they_skip(tmp_path_factory):
    cluster = MiniLumi(tmp_path_factory.mktemp("c"))  # short: the cluster's unix sockets live under it
    cluster.isolation_problem = "one network namespace per node needs root (ip netns)"
    with pytest.raises(pytest.skip.Exception, match="mini-LUMI without separate node networks: one network namespace"):
        cluster.require_isolation()


def test_single_gpu_batch_job_is_accounted(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    result = slurm_cluster.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            "small-g",
            "-A",
            ACCOUNT,
            "--gpus-per-node=1",
            "--ntasks-per-node=1",
            "--cpus-per-task=7",
            "-o",
            str(out),
            "--wrap",
            "echo gpus=$SLURM_GPUS_ON_NODE account=$SLURM_JOB_ACCOUNT",
        ]
    )
    job_id = result.stdout.strip().split(";")[0]
    assert job_id.isdigit(), result.stdout

    record = sacct_record(slurm_cluster, job_id)
    assert record["Partition"] == "small-g"
    assert record["Account"] == ACCOUNT
    assert "gres/gpu=1" in record["AllocTRES"].split(","), record
    assert "cpu=7" in record["AllocTRES"].split(","), record
    assert record["State"] == "COMPLETED", record
    assert out.read_text().split() == ["gpus=1", f"account={ACCOUNT}"]


def test_status_query_of_snakemake_slurm_plugin_finds_the_job(slurm_cluster):
    """snakemake-executor-plugin-slurm 2.8.0 names jobs after the run's UUID and polls them with this sacct call."""
    run_uuid = f"minilumi-{uuid.uuid4()}"
    result = slurm_cluster.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            "small",
            "-A",
            ACCOUNT,
            "-J",
            run_uuid,
            "-o",
            "/dev/null",
            "--wrap",
            "true",
        ]
    )
    job_id = result.stdout.strip().split(";")[0]
    starttime = f"{datetime.now() - timedelta(days=2):%Y-%m-%dT%H:00}"
    query = [
        "sacct",
        "-X",
        "--parsable2",
        "--clusters",
        "all",
        "--noheader",
        "--format=JobIdRaw,State",
        "--starttime",
        starttime,
        "--endtime",
        "now",
        "--name",
        run_uuid,
    ]
    deadline = time.monotonic() + 60
    rows: list[str] = []
    while time.monotonic() < deadline:
        rows = slurm_cluster.run(query, timeout=30).stdout.split()
        if f"{job_id}|COMPLETED" in rows:
            break
        time.sleep(1)
    assert rows == [f"{job_id}|COMPLETED"]


def test_unknown_account_is_rejected(slurm_cluster):
    result = slurm_cluster.run(
        ["sbatch", "-p", "small", "-A", "project_999999999", "--wrap", "true"], check=False
    )
    assert result.returncode != 0, result.stdout
    assert "Invalid account" in result.stderr, result.stderr
