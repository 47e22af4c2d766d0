"""The local launcher: each rank's variables, a rendezvous on loopback, signals passed on, a failing rank."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import {{ cookiecutter.package_name }}

LAUNCHER = [sys.executable, "-m", "{{ cookiecutter.package_name }}.local_ranks"]
# The package for the launcher and its ranks, also where it is not installed (pytest finds it by its pythonpath).
SOURCE = str(Path({{ cookiecutter.package_name }}.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SOURCE, os.environ.get("PYTHONPATH")]))}
# Each rank prints the variables its launcher gave it, as one JSON line. The ranks share the pipe: every line is
# one os.write (atomic up to the pipe's buffer), so lines do not run together.
PRINT_ENV = (
    "import json, os; os.write(1, (json.dumps({k: v for k, v in os.environ.items() "
    "if k.startswith(('HOROVOD_', 'RANK', 'WORLD_SIZE', 'LOCAL_', 'MASTER_', 'GLOO_'))}) + '\\n').encode())"
)


def rank_environments(backend: str, processes: int) -> list[dict]:
    result = subprocess.run(
        [*LAUNCHER, "--backend", backend, "--processes", str(processes), "--", sys.executable, "-c", PRINT_ENV],
        capture_output=True, text=True, timeout=120, env=ENV,
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


def test_a_failing_rank_stops_the_others_and_sets_the_status(tmp_path):
    # Rank 0 would sleep for a minute, and notes the SIGTERM it gets instead; rank 1 fails once rank 0 listens for it.
    armed = tmp_path / "rank-0-armed"
    code = (
        "import os, pathlib, signal, sys, time\n"
        f"armed = pathlib.Path({str(armed)!r})\n"
        "stop = lambda *_: (os.write(1, b'rank 0 stopped\\n'), sys.exit(143))\n"
        "if os.environ['RANK'] == '0':\n"
        "    signal.signal(signal.SIGTERM, stop); armed.touch(); time.sleep(60)\n"
        "while not armed.exists():\n"
        "    time.sleep(0.05)\n"
        "sys.exit(3)\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [*LAUNCHER, "--backend", "torch_ddp", "--processes", "2", "--", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, env=ENV,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "rank 1 exited with status 3; stopping the other 1 rank(s)" in result.stderr
    assert "rank 0 stopped" in result.stdout
    assert time.monotonic() - started < 30


def test_sigterm_reaches_every_rank():
    code = (
        "import os, signal, sys, time\n"
        "stop = lambda *_: (os.write(1, f'stopped {os.environ[\"RANK\"]}\\n'.encode()), sys.exit(143))\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "os.write(1, b'ready\\n'); time.sleep(60)\n"
    )
    launcher = subprocess.Popen(
        [*LAUNCHER, "--backend", "torch_ddp", "--processes", "2", "--", sys.executable, "-c", code],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )
    ready = 0
    for line in launcher.stdout:
        ready += line.strip() == "ready"
        if ready == 2:
            break
    launcher.send_signal(signal.SIGTERM)
    output = launcher.communicate(timeout=30)[0]
    assert launcher.returncode == 143
    assert sorted(re.findall(r"stopped (\d)", output)) == ["0", "1"], output


def test_the_launcher_knows_the_packages_backends():
    from {{ cookiecutter.package_name }} import backends, local_ranks

    assert local_ranks.BACKENDS == tuple(backends.BACKENDS)


def test_a_launch_without_a_command_is_refused():
    result = subprocess.run([*LAUNCHER, "--backend", "torch_ddp", "--processes", "2"], capture_output=True, text=True,
                            env=ENV)
    assert result.returncode == 2 and "no command: give it after --" in result.stderr
