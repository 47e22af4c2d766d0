"""The local launcher: each rank's variables, a rendezvous on loopback, signals passed on, a failing rank."""

import importlib.util
import json
import signal
import subprocess
import sys
import time

import pytest

LAUNCHER = [sys.executable, "-m", "{{ cookiecutter.package_name }}.local_ranks"]
# Each rank prints the variables its launcher gave it, as one JSON line.
PRINT_ENV = (
    "import json, os; print(json.dumps({k: v for k, v in os.environ.items() "
    "if k.startswith(('HOROVOD_', 'RANK', 'WORLD_SIZE', 'LOCAL_', 'MASTER_', 'GLOO_'))}), flush=True)"
)


def rank_environments(backend: str, processes: int) -> list[dict]:
    result = subprocess.run(
        [*LAUNCHER, "--backend", backend, "--processes", str(processes), "--", sys.executable, "-c", PRINT_ENV],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"{processes} {backend} rank(s)" in result.stdout and "(loopback only)" in result.stdout
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_torch_ddp_ranks_meet_at_loopback():
    ranks = rank_environments("torch_ddp", 3)
    assert sorted(int(env["RANK"]) for env in ranks) == [0, 1, 2]
    assert {(env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["MASTER_ADDR"], env["GLOO_SOCKET_IFNAME"])
            for env in ranks} == {("3", "3", "127.0.0.1", "lo")}
    assert len({env["MASTER_PORT"] for env in ranks}) == 1
    assert all(env["LOCAL_RANK"] == env["RANK"] for env in ranks)


@pytest.mark.skipif(importlib.util.find_spec("horovod") is None, reason="Horovod is not installed")
def test_horovod_ranks_meet_at_a_loopback_rendezvous():
    ranks = rank_environments("horovod", 2)
    assert sorted(int(env["HOROVOD_RANK"]) for env in ranks) == [0, 1]
    assert {(env["HOROVOD_SIZE"], env["HOROVOD_LOCAL_SIZE"], env["HOROVOD_GLOO_RENDEZVOUS_ADDR"],
             env["HOROVOD_GLOO_IFACE"], env["HOROVOD_CONTROLLER"]) for env in ranks} == {
        ("2", "2", "127.0.0.1", "lo", "gloo")}


def test_a_failing_rank_stops_the_others_and_sets_the_status():
    # Rank 1 fails at once; rank 0 would sleep for a minute, and notes the SIGTERM it gets instead.
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('rank 0 stopped', flush=True), sys.exit(143)))\n"
        "sys.exit(3) if os.environ['RANK'] == '1' else time.sleep(60)\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [*LAUNCHER, "--backend", "torch_ddp", "--processes", "2", "--", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "rank 1 exited with status 3; stopping the other 1 rank(s)" in result.stderr
    assert "rank 0 stopped" in result.stdout
    assert time.monotonic() - started < 30


def test_sigterm_reaches_every_rank():
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('stopped', os.environ['RANK'], flush=True), sys.exit(143)))\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    launcher = subprocess.Popen(
        [*LAUNCHER, "--backend", "torch_ddp", "--processes", "2", "--", sys.executable, "-c", code],
        stdout=subprocess.PIPE, text=True,
    )
    ready = 0
    for line in launcher.stdout:
        ready += line.strip() == "ready"
        if ready == 2:
            break
    launcher.send_signal(signal.SIGTERM)
    output = launcher.communicate(timeout=30)[0]
    assert launcher.returncode == 143
    assert sorted(line for line in output.splitlines() if line.startswith("stopped")) == ["stopped 0", "stopped 1"]


def test_a_launch_without_a_command_is_refused():
    result = subprocess.run([*LAUNCHER, "--backend", "torch_ddp", "--processes", "2"], capture_output=True, text=True)
    assert result.returncode == 2 and "no command: give it after --" in result.stderr
