"""Start the training ranks of a run on this one machine, every socket on loopback.

`python -m {{ cookiecutter.package_name }}.local_ranks --backend horovod --processes 2 -- python -m ... .train ...`

The workflow's local launch (config `train.processes` > 1 without a cluster, and in a pod) starts ranks with this
instead of `horovodrun --gloo` or `torchrun --standalone`: both host a rendezvous server that listens on every
interface of the machine and take no bind address (Horovod 0.28.1's HTTP rendezvous, torch's TCPStore in the
torchrun agent). Here nothing listens beyond 127.0.0.1:

- horovod: Horovod's own rendezvous server (`horovod.runner.http.http_server`), bound to 127.0.0.1, and the rank
  variables Horovod's own Gloo launch sets (`horovod.runner.gloo_run`); the ranks' Gloo on `lo`.
- torch_ddp: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and a rendezvous at 127.0.0.1 (MASTER_ADDR,
  MASTER_PORT); rank 0 hosts the store on that address only (backends.rendezvous_store); Gloo on `lo`.

Like the launchers it replaces, it passes SIGTERM and SIGINT on to every rank (a rank checkpoints on SIGTERM),
stops the other ranks when one fails, and exits with the first failing rank's status (128 + N for signal N).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading

# backends.BACKENDS, written again so that starting the ranks does not import torch (tests/test_local_ranks.py
# checks the two are equal); free_loopback_port below is backends._free_port for the same reason.
BACKENDS = ("horovod", "torch_ddp")
LOOPBACK, LOOPBACK_INTERFACE = "127.0.0.1", "lo"
# After one rank fails, the others get SIGTERM (they may checkpoint), then SIGKILL after this many seconds.
GRACE_SECONDS = 30


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def torch_environments(processes: int, port: int) -> list[dict[str, str]]:
    """Each rank's torch.distributed variables: all on this machine, the rendezvous at 127.0.0.1:`port`."""
    common = {
        "WORLD_SIZE": str(processes),
        "LOCAL_WORLD_SIZE": str(processes),
        "MASTER_ADDR": LOOPBACK,
        "MASTER_PORT": str(port),
        "GLOO_SOCKET_IFNAME": LOOPBACK_INTERFACE,
    }
    return [{**common, "RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in range(processes)]


def start_horovod_rendezvous(processes: int) -> tuple[object, list[dict[str, str]]]:
    """Horovod's HTTP rendezvous server on 127.0.0.1 (serving in a thread) and each rank's Horovod variables."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.gloo_run import create_run_env_vars, create_slot_env_vars
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

    server = RendezvousHTTPServer((LOOPBACK, 0), RendezvousHandler, 0)
    plan = get_host_assignments(parse_hosts(f"localhost:{processes}"), processes)
    server.init(plan)
    threading.Thread(target=server.serve_forever, name="horovod-rendezvous", daemon=True).start()
    common = {
        key: str(value)
        for key, value in create_run_env_vars(LOOPBACK, [LOOPBACK_INTERFACE], server.server_address[1]).items()
    }
    return server, [{**common, **create_slot_env_vars(slot)} for slot in plan]


def exit_status(returncode: int) -> int:
    """A shell's view of a child's status: 128 + N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_ranks(command: list[str], environments: list[dict[str, str]]) -> int:
    """Start one process per environment, pass signals on, stop the rest when one fails; the run's exit status.

    The ranks are reaped here only (os.waitpid), and signalled by pid while they have not been reaped."""
    ranks: list[subprocess.Popen] = []
    running: dict[int, int] = {}  # pid -> rank, until reaped
    passed_on: list[int] = []

    def send(signum: int) -> None:
        for pid in list(running):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def pass_on(signum, _frame) -> None:
        passed_on.append(signum)
        send(signum)

    # Passed on from before the first rank starts, so no signal leaves a rank behind without its launcher.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, pass_on)
    for environment in environments:
        if passed_on:  # stopped while starting: start no more
            break
        ranks.append(subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1", **environment}))
        running[ranks[-1].pid] = len(ranks) - 1
    if passed_on:  # a rank started while the signal was being passed on gets it too
        send(passed_on[-1])

    status = 128 + passed_on[0] if passed_on and not running else 0
    while running:
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:  # pragma: no cover - every rank was reaped
            break
        if pid not in running:
            continue
        index = running.pop(pid)
        ranks[index].returncode = returncode = os.waitstatus_to_exitcode(wait_status)
        if returncode != 0 and status == 0:
            status = exit_status(returncode)
            if running and not passed_on:  # a rank failed by itself: the others cannot go on without it
                print(
                    f"local ranks: rank {index} exited with status {status}; stopping the other "
                    f"{len(running)} rank(s)",
                    file=sys.stderr,
                    flush=True,
                )
                send(signal.SIGTERM)
                timer = threading.Timer(GRACE_SECONDS, send, (signal.SIGKILL,))
                timer.daemon = True
                timer.start()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.local_ranks",
        description="Start the training ranks on this machine, every socket on loopback.",
    )
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--processes", type=int, required=True, help="ranks to start (at least 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every rank runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, got {args.processes}")
    if not command:
        parser.error("no command: give it after --")
    if args.backend == "horovod":
        server, environments = start_horovod_rendezvous(args.processes)
        rendezvous = f"Horovod rendezvous at {LOOPBACK}:{server.server_address[1]}"
    else:
        port = free_loopback_port()
        environments = torch_environments(args.processes, port)
        rendezvous = f"torch rendezvous at {LOOPBACK}:{port}"
    print(f"local ranks: {args.processes} {args.backend} rank(s), {rendezvous} (loopback only)", flush=True)
    return run_ranks(command, environments)


if __name__ == "__main__":
    sys.exit(main())
