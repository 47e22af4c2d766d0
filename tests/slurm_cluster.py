"""A real, LUMI-shaped ("mini-LUMI") Slurm cluster for tests, started and stopped by the test suite.

Everything runs on this one machine from Debian's packages (slurm-wlm, slurmdbd, munge, mariadb-server):

* a private ``munged`` (own key and socket; ``AuthInfo=socket=...`` points Slurm at it),
* a private ``mariadbd`` (own datadir, socket and TCP port) holding the accounting database,
* ``slurmdbd``, ``slurmctld`` and two ``slurmd`` (``nid001``, ``nid002``) that advertise LUMI-G nodes
  (64 cores, 480 GiB, 8 GPUs as stand-in files) thanks to ``SlurmdParameters=config_overrides``.

As strict as LUMI where the workflows depend on it: each node's ``slurmd`` (and so every job step on that node)
runs in its own network namespace with its own ``127.0.0.1``, its own host name (``nid001``) and its own
``/etc/hosts``, and reaches the other node only at that node's address (``NodeAddr``) on a bridge that exists only
for this cluster; each node has its own temporary folder (``TmpFS``). Creating namespaces needs root: without it,
:attr:`MiniLumi.isolated` is False, :attr:`MiniLumi.isolation_problem` says why, and the nodes share the host's
network (tests that need separate nodes skip with that reason, see :meth:`MiniLumi.require_isolation`).

All configuration, state, spool, logs and pid files live under the work directory given to
:class:`MiniLumi`; nothing in ``/etc/slurm``, ``/etc/munge`` or the system MariaDB is touched, and every
port is picked free at start, so several clusters (or a stale one from an earlier run) never collide.
Client commands find the cluster through ``SLURM_CONF``: merge :attr:`MiniLumi.env` into a subprocess'
environment, or use :meth:`MiniLumi.run`.

Standard library only.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CLUSTER_NAME = "minilumi"
ACCOUNT = "project_465000001"
NODES = ("nid001", "nid002")
NODE_SPEC = "Sockets=1 CoresPerSocket=64 ThreadsPerCore=1 RealMemory=491520 Gres=gpu:8"
GPUS_PER_NODE = 8
# name -> (MaxTime, default partition?)
PARTITIONS = {
    "small": ("72:00:00", True),
    "small-g": ("72:00:00", False),
    "standard-g": ("48:00:00", False),
    "dev-g": ("03:00:00", False),
}

PACKAGES = ("slurm-wlm", "munge", "mariadb-server", "slurmdbd", "iproute2")
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
# A unix socket path must fit in sun_path (108 bytes); slurmd puts step sockets in its spool directory.
_MAX_WORKDIR_LEN = 70


def _which(name: str) -> str | None:
    """Like shutil.which, but also looks in the sbin directories (often missing from a user's PATH)."""
    path = os.environ.get("PATH", "")
    return shutil.which(name, path=os.pathsep.join([path, *_SBIN_DIRS]))


def _missing_programs() -> list[str]:
    wanted = ["slurmctld", "slurmd", "slurmdbd", "munged", "sinfo", "sacctmgr", "mariadb-install-db", "ip"]
    missing = [name for name in wanted if _which(name) is None]
    if _which("mariadbd") is None and _which("mysqld") is None:
        missing.append("mariadbd")
    return missing


def ensure_installed(timeout: int = 900) -> None:
    """Install Slurm, slurmdbd, munge and MariaDB from apt when missing (root only)."""
    missing = _missing_programs()
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(
            f"Slurm test cluster needs {', '.join(missing)}; install the Debian packages "
            f"{' '.join(PACKAGES)} (apt-get install {' '.join(PACKAGES)}) or run the tests as root"
        )
    from system_packages import apt_install

    apt_install(PACKAGES, timeout=timeout)
    still_missing = _missing_programs()
    if still_missing:
        raise RuntimeError(f"after installing {' '.join(PACKAGES)} still missing: {', '.join(still_missing)}")


def _port_is_free(port: int) -> bool:
    for host in ("0.0.0.0", "127.0.0.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports below the usual ephemeral range (so outgoing connections do not take them)."""
    rng = random.Random()
    ports: list[int] = []
    for _ in range(2000):
        port = rng.randint(20000, 32000)
        if port not in ports and _port_is_free(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("could not find free TCP ports for the Slurm test cluster")


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the daemon when the test process dies, even if it is killed without cleanup."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path}: not written)"
    return "\n".join(text[-lines:])


class NodeNetwork:
    """One network namespace per node on a bridge of this cluster's own (root only; see the module docstring).

    Names carry a random tag, and the subnet (10.213.N.0/24) is one no interface of this machine uses, so clusters
    started side by side (or a stale one) never share a namespace, bridge or address.
    """

    def __init__(self, nodes: tuple[str, ...]):
        self.tag = "".join(random.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(5))
        used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
        free = [n for n in range(1, 255) if f" 10.213.{n}." not in used]
        if not free:
            raise RuntimeError("no free 10.213.N.0/24 subnet for the test cluster's bridge")
        self.subnet = random.choice(free)
        self.bridge = f"smk{self.tag}"
        self.host_address = f"10.213.{self.subnet}.1"
        self.addresses = {node: f"10.213.{self.subnet}.{11 + i}" for i, node in enumerate(nodes)}
        self.namespaces = {node: f"smkml-{self.tag}-{node}" for node in nodes}
        self._links: list[str] = []

    def up(self) -> None:
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        self._ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        for i, (node, namespace) in enumerate(self.namespaces.items()):
            outside, inside = f"{self.bridge}v{i}", f"{self.bridge}n{i}"
            self._ip("netns", "add", namespace)
            self._ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self._links.append(outside)
            self._ip("link", "set", outside, "master", self.bridge)
            self._ip("link", "set", outside, "up")
            self._ip("link", "set", inside, "netns", namespace)
            inner = ["ip", "-n", namespace]
            for args in (
                ("link", "set", "lo", "up"),
                ("addr", "add", f"{self.addresses[node]}/24", "dev", inside),
                ("link", "set", inside, "up"),
                ("route", "add", "default", "via", self.host_address),
            ):
                self._run([*inner, *args])

    def down(self) -> None:
        for link in reversed(self._links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        self._links.clear()
        for namespace in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)

    def hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines += [f"{address} {node}" for node, address in self.addresses.items()]
        return "\n".join(lines) + "\n"

    def wrap(self, node: str, hosts: Path, command: list[str]) -> list[str]:
        """`command` started as node `node`: in its network namespace, with its host name and /etc/hosts.

        Not `ip netns exec`, which remounts /sys (hiding /sys/fs/cgroup, which slurmd needs): nsenter into the network
        namespace, then new UTS and mount namespaces for the host name and a bind-mounted /etc/hosts.
        """
        script = 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'
        return [
            "nsenter", f"--net=/run/netns/{self.namespaces[node]}", "unshare", "--uts", "--mount",
            "sh", "-c", script, "sh", node, str(hosts), *command,
        ]

    def _ip(self, *args: str) -> None:
        self._run(["ip", *args])

    @staticmethod
    def _run(command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


def _isolation_problem() -> str | None:
    """Why nodes cannot get a network namespace each here, or None when they can."""
    if os.geteuid() != 0:
        return "one network namespace per node needs root (ip netns); the nodes share this host's network"
    missing = [name for name in ("ip", "nsenter", "unshare", "mount") if _which(name) is None]
    if missing:
        return f"one network namespace per node needs {', '.join(missing)} (Debian: iproute2, util-linux, mount)"
    return None


class MiniLumi:
    """A two-node LUMI-G-shaped Slurm cluster with accounting, living entirely under ``workdir``.

    Use as a context manager or call :meth:`start` / :meth:`stop`. After start, :attr:`env` holds the
    environment variables client commands need (``SLURM_CONF``) and :meth:`run` runs a command with them.
    """

    cluster_name = CLUSTER_NAME
    account = ACCOUNT
    nodes = NODES
    partitions = PARTITIONS

    def __init__(self, workdir: str | os.PathLike[str], start_timeout: float = 60.0):
        self.workdir = Path(workdir).resolve()
        if len(str(self.workdir)) > _MAX_WORKDIR_LEN:
            raise ValueError(
                f"work directory path too long for unix sockets ({len(str(self.workdir))} > "
                f"{_MAX_WORKDIR_LEN} characters): {self.workdir}"
            )
        self.start_timeout = start_timeout
        self.conf_dir = self.workdir / "etc"
        self.slurm_conf = self.conf_dir / "slurm.conf"
        self.log_dir = self.workdir / "log"
        self.run_dir = self.workdir / "run"
        self.gpu_dir = self.workdir / "gpus"
        self.db_dir = self.workdir / "mysql"
        self.munge_socket = self.run_dir / "munge.sock"
        self.mysql_socket = self.run_dir / "mysqld.sock"
        # Wrappers of the client commands that pin this cluster's config: inside jobs, snakemake's slurm-jobstep
        # executor drops every SLURM_* variable (SLURM_CONF too) before it calls srun, and a real cluster's
        # default /etc/slurm/slurm.conf is not ours to write. Put bin_dir first on PATH.
        self.bin_dir = self.workdir / "bin"
        self.env: dict[str, str] = {
            "SLURM_CONF": str(self.slurm_conf),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.ports: dict[str, int] = {}
        self.start_seconds: float | None = None
        self.timings: dict[str, float] = {}  # seconds per start phase
        self._procs: dict[str, subprocess.Popen] = {}
        self._log_handles: list = []
        self._started = False
        # One network namespace per node when this process may create them (see the module docstring).
        self.network: NodeNetwork | None = None
        self.isolation_problem: str | None = _isolation_problem()

    @property
    def isolated(self) -> bool:
        """True when each node has its own network namespace (its own 127.0.0.1), as real nodes do."""
        return self.network is not None

    def node_address(self, node: str) -> str:
        """The address other nodes reach `node` at (Slurm's NodeAddr)."""
        return self.network.addresses[node] if self.network else "127.0.0.1"

    def require_isolation(self) -> None:
        """Skip the calling test, saying why, when the nodes share one network (a test of separate nodes would pass
        there for the wrong reason: a rendezvous at 127.0.0.1 reaches every node)."""
        if not self.isolated:
            import pytest

            pytest.skip(f"mini-LUMI without separate node networks: {self.isolation_problem}")

    # ----------------------------------------------------------------- public API
    def __enter__(self) -> "MiniLumi":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        """os.environ plus :attr:`env`, without SLURM_* variables of an enclosing job."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))
        }
        env.update(self.env)
        env.update(extra)
        return env

    def run(
        self, cmd: list[str] | str, check: bool = True, timeout: float = 120, **kwargs
    ) -> subprocess.CompletedProcess:
        """Run a client command (sinfo, srun, sbatch, sacct, ...) against this cluster; text output captured."""
        env = self.subprocess_env(**kwargs.pop("env", {}) or {})
        result = subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            shell=isinstance(cmd, str),
            **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{cmd} failed ({result.returncode})\n--- stdout\n{result.stdout[-4000:]}"
                f"\n--- stderr\n{result.stderr[-4000:]}"
            )
        return result

    def start(self) -> "MiniLumi":
        if self._started:
            return self
        begin = time.monotonic()
        self._started = True
        atexit.register(self.stop)
        try:
            for phase, step in (
                ("prepare", self._prepare),
                ("munged", self._start_munge),
                ("mariadbd", self._start_mariadb),
                ("slurmdbd", self._start_slurmdbd),
                ("accounts", self._setup_accounts),
                ("slurmctld", self._start_slurmctld),
                ("slurmd", self._start_slurmds),
            ):
                t0 = time.monotonic()
                step()
                self.timings[phase] = round(time.monotonic() - t0, 2)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - begin
        return self

    def stop(self) -> None:
        """Cancel remaining jobs and stop every daemon this cluster started (idempotent)."""
        if not self._started:
            return
        self._started = False
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover
            pass
        if self._alive("slurmctld"):
            self._cancel_all_jobs()
        for name in [f"slurmd-{n}" for n in NODES] + ["slurmctld", "slurmdbd", "mariadbd", "munged"]:
            self._terminate(name)
        self._kill_leftover_steps()
        if self.network is not None:
            self.network.down()
        for handle in self._log_handles:
            handle.close()
        self._log_handles.clear()

    def sacct(self, job_id: str, fields: list[str], steps: bool = False, timeout: float = 60) -> list[dict[str, str]]:
        """sacct rows of a finished job (the allocation first, then its steps when `steps`), once complete.

        The batch step's records can reach the database before the job's own start record (slurmctld sends that
        one every few seconds), so a finished job can briefly show an empty Partition: wait for both.
        """
        names = ["JobID", "Partition", "State", *[f for f in fields if f not in ("JobID", "Partition", "State")]]
        command = ["sacct", "-n", "-P", f"--format={','.join(names)}", "-j", job_id, *([] if steps else ["-X"])]
        deadline = time.monotonic() + timeout
        rows: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            result = self.run(command, check=False, timeout=30)
            rows = [dict(zip(names, line.split("|"))) for line in result.stdout.splitlines() if line.count("|") == len(names) - 1]
            first = rows[0] if rows and rows[0]["JobID"] == job_id else {}
            if first.get("Partition") and first.get("State") not in (None, "", "PENDING", "RUNNING"):
                return rows
            time.sleep(1)
        raise AssertionError(f"sacct has no finished record of job {job_id} after {timeout} s: {rows}\n{self.logs()}")

    def logs(self, lines: int = 15) -> str:
        """The tails of the daemon logs (and of their stdout/stderr, which has start-up errors), for error messages."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")) + sorted(self.log_dir.glob("*.out")):
            if path.stat().st_size:
                parts.append(f"--- {path}\n{_tail(path, lines if path.suffix == '.log' else 5)}")
        return "\n".join(parts)

    # ----------------------------------------------------------------- set-up
    @staticmethod
    def _bin(name: str) -> str:
        found = _which(name)
        if found is None and name == "mariadbd":
            found = _which("mysqld")
        if found is None:
            raise RuntimeError(f"{name} not found; call ensure_installed() first")
        return found

    def _prepare(self) -> None:
        for d in (self.conf_dir, self.log_dir, self.run_dir, self.gpu_dir, self.workdir / "state"):
            d.mkdir(parents=True, exist_ok=True)
        for node in NODES:
            (self.workdir / "spool" / node).mkdir(parents=True, exist_ok=True)
            # Each node's own temporary folder (TmpFS): Slurm's PMIx puts per-job folders there, which collide
            # when two nodes share one /tmp.
            (self.workdir / "tmp" / node).mkdir(parents=True, exist_ok=True)
        if self.isolation_problem is None and self.network is None:
            network = NodeNetwork(NODES)
            try:
                network.up()
                self.network = network
                (self.conf_dir / "hosts").write_text(network.hosts_file())
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                network.down()
                self.isolation_problem = f"one network namespace per node could not be set up: {error}"
        for i in range(GPUS_PER_NODE):
            (self.gpu_dir / f"gpu{i}").touch()
        names = ["mysql", "slurmdbd", "slurmctld", *NODES]
        self.ports = dict(zip(names, _free_ports(len(names))))
        self.db_password = "".join(random.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(20))
        self._write_configs()

    def _write_client_wrappers(self) -> None:
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for command in ("srun", "sbatch", "scontrol", "squeue", "sacct", "sinfo", "scancel", "sacctmgr"):
            real = shutil.which(command, path="/usr/bin:/usr/sbin:/bin:/sbin")
            if real is None:
                continue
            wrapper = self.bin_dir / command
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.slurm_conf}" exec {real} "$@"\n')
            wrapper.chmod(0o755)

    def _write_configs(self) -> None:
        self._write_client_wrappers()
        w, p = self.workdir, self.ports
        host = socket.gethostname().split(".")[0] or "localhost"
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        # With a namespace per node, each node has its own name and address, and the daemons on the host are reached
        # at the bridge's address; otherwise every node is this host at 127.0.0.1.
        controller = self.network.host_address if self.network else "127.0.0.1"
        nodes = "\n".join(
            f"NodeName={node} NodeHostname={node if self.network else host} NodeAddr={self.node_address(node)} "
            f"Port={p[node]} {NODE_SPEC} State=UNKNOWN"
            for node in NODES
        )
        node_list = f"nid[{NODES[0][3:]}-{NODES[-1][3:]}]"
        partitions = "\n".join(
            f"PartitionName={name} Nodes={node_list} MaxTime={max_time} Default={'YES' if default else 'NO'} State=UP"
            for name, (max_time, default) in PARTITIONS.items()
        )
        slurm_conf = f"""\
# mini-LUMI test cluster, generated by tests/slurm_cluster.py
ClusterName={CLUSTER_NAME}
SlurmctldHost=localhost({controller})
SlurmctldPort={p['slurmctld']}
SlurmUser=root
SlurmdUser=root
{auth}CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs without --mem/--mem-per-* get this much, not a whole node's memory
DefMemPerCPU=1750
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
MailProg=/bin/true
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool/%n
TmpFS={w}/tmp/%n
SlurmctldPidFile={w}/run/slurmctld.pid
SlurmdPidFile={w}/run/slurmd-%n.pid
SlurmctldLogFile={w}/log/slurmctld.log
SlurmdLogFile={w}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost={controller}
AccountingStoragePort={p['slurmdbd']}
# for slurmdbd connections this names the munge socket (slurm.conf man page)
AccountingStoragePass={self.munge_socket}
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations
{nodes}
{partitions}
"""
        gres_conf = f"AutoDetect=off\nName=gpu File={self.gpu_dir}/gpu[0-{GPUS_PER_NODE - 1}]\n"
        slurmdbd_conf = f"""\
{auth}DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={p['slurmdbd']}
SlurmUser=root
DebugLevel=info
LogFile={w}/log/slurmdbd.log
PidFile={w}/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={p['mysql']}
StorageUser=slurm
StoragePass={self.db_password}
StorageLoc=slurm_acct_db
"""
        self.slurm_conf.write_text(slurm_conf)
        (self.conf_dir / "gres.conf").write_text(gres_conf)
        dbd = self.conf_dir / "slurmdbd.conf"
        dbd.write_text(slurmdbd_conf)
        dbd.chmod(0o600)

    # ----------------------------------------------------------------- daemons
    def _start_daemon(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = open(self.log_dir / f"{name}.out", "ab")
        self._log_handles.append(out)
        proc = subprocess.Popen(
            cmd,
            env=self.subprocess_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=_die_with_parent,
        )
        self._procs[name] = proc
        return proc

    def _alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def _terminate(self, name: str, timeout: float = 20) -> None:
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    pass
            except ProcessLookupError:  # pragma: no cover
                pass

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            dead = [name for name, proc in self._procs.items() if proc.poll() is not None]
            if dead:
                raise RuntimeError(
                    f"mini-LUMI: {', '.join(dead)} exited while waiting for {what}\n{self.logs()}"
                )
            try:
                if ready():
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mini-LUMI: timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}"
                )
            time.sleep(0.2)

    def _start_munge(self) -> None:
        key = self.run_dir / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(1024))
        self._start_daemon(
            "munged",
            [
                self._bin("munged"),
                "--foreground",
                # pytest's tmp dirs are mode 700: --force turns munged's "execute permissions for all required
                # on <dir>" refusal into a warning (clients here run as root, who can reach the socket)
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.run_dir / 'munged.pid'}",
                f"--seed-file={self.run_dir / 'munged.seed'}",
                f"--log-file={self.log_dir / 'munged.log'}",
                "--num-threads=2",
            ],
        )
        self._wait(self.munge_socket.exists, "the munge socket", 15)

    def _mysql_args(self) -> list[str]:
        return ["--no-defaults", f"--socket={self.mysql_socket}"]

    def _start_mariadb(self) -> None:
        if not (self.db_dir / "mysql").is_dir():
            result = subprocess.run(
                [
                    self._bin("mariadb-install-db"),
                    "--no-defaults",
                    f"--datadir={self.db_dir}",
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                    "--innodb-log-file-size=8M",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=self.workdir,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"mariadb-install-db failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                )
        self._start_daemon(
            "mariadbd",
            [
                self._bin("mariadbd"),
                *self._mysql_args(),
                "--user=root",
                f"--datadir={self.db_dir}",
                f"--port={self.ports['mysql']}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.run_dir / 'mariadbd.pid'}",
                f"--log-error={self.log_dir / 'mariadbd.log'}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=8M",
                "--innodb-lock-wait-timeout=900",
                "--max-connections=50",
            ],
        )
        self._wait(lambda: self.mysql_socket.exists() and _port_open(self.ports["mysql"]), "MariaDB", 60)
        pw = self.db_password
        sql = (
            f"CREATE OR REPLACE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{pw}';"
            f"CREATE OR REPLACE USER 'slurm'@'localhost' IDENTIFIED BY '{pw}';"
            "GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';"
            "GRANT ALL ON *.* TO 'slurm'@'localhost';"
            "FLUSH PRIVILEGES;"
        )
        client = _which("mariadb") or _which("mysql") or "mariadb"
        result = subprocess.run(
            [client, *self._mysql_args(), "-uroot", "-e", sql], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"creating the Slurm database user failed:\n{result.stderr[-3000:]}\n{self.logs()}"
            )

    def _start_slurmdbd(self) -> None:
        self._start_daemon("slurmdbd", [self._bin("slurmdbd"), "-D"])
        self._wait(lambda: _port_open(self.ports["slurmdbd"]), "slurmdbd", 60)

    def _setup_accounts(self) -> None:
        commands = [
            ["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME],
            [
                "sacctmgr",
                "-i",
                "add",
                "account",
                ACCOUNT,
                f"cluster={CLUSTER_NAME}",
                "Description=mini-LUMI test project",
                "Organization=minilumi",
            ],
            ["sacctmgr", "-i", "add", "user", "root", f"account={ACCOUNT}", f"cluster={CLUSTER_NAME}"],
        ]
        for cmd in commands:
            result = self.run(cmd, check=False, timeout=60)
            output = (result.stdout + result.stderr).lower()
            if (
                result.returncode != 0
                and "already exists" not in output
                and "nothing new added" not in output
            ):
                raise RuntimeError(
                    f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.logs()}"
                )

    def _start_slurmctld(self) -> None:
        self._start_daemon("slurmctld", [self._bin("slurmctld"), "-D", "-i"])
        self._wait(
            lambda: "UP" in self.run(["scontrol", "ping"], check=False, timeout=15).stdout, "slurmctld", 60
        )

    def _start_slurmds(self) -> None:
        for node in NODES:
            self._start_slurmd(node)
        self._wait(self._nodes_idle, "both nodes idle in sinfo", self.start_timeout)

    def _start_slurmd(self, node: str) -> subprocess.Popen:
        command = [self._bin("slurmd"), "-D", "-N", node]
        if self.network is not None:
            command = self.network.wrap(node, self.conf_dir / "hosts", command)
        return self._start_daemon(f"slurmd-{node}", command)

    def kill_slurmd(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (default SIGKILL: a crash) to the slurmd of `node` and wait until it is gone. Only that daemon:
        its job steps (slurmstepd and their tasks) keep running, the node keeps its network namespace, and slurmctld
        notices nothing until its next ping (SlurmdTimeout). :meth:`start_slurmd` starts it again."""
        proc = self._procs.pop(f"slurmd-{node}")
        try:
            proc.send_signal(sig)
        except ProcessLookupError:  # pragma: no cover
            pass
        proc.wait(timeout=30)

    def start_slurmd(self, node: str, timeout: float = 60) -> None:
        """Start the slurmd of `node` again (after :meth:`kill_slurmd`), in the node's namespace as at cluster start,
        and wait until it answers on its port at the node's address."""
        if self._alive(f"slurmd-{node}"):
            raise RuntimeError(f"slurmd of {node} is already running")
        self._start_slurmd(node)
        port = self.ports[node]
        self._wait(lambda: _port_open(port, self.node_address(node)), f"slurmd of {node} on port {port}", timeout)

    def _nodes_idle(self) -> bool:
        result = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, timeout=15)
        if result.returncode != 0:
            return False
        states = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1]
        return all(states.get(node) == "idle" for node in NODES)

    def _kill_leftover_steps(self) -> None:
        """SIGKILL job steps of this cluster that outlived their slurmd (found by their SLURM_CONF), with their tasks."""
        mine = f"SLURM_CONF={self.slurm_conf}".encode()
        children: dict[int, list[int]] = {}
        steps: list[int] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(pid)
                if Path(f"/proc/{pid}/comm").read_text().strip() == "slurmstepd":
                    if mine in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                        steps.append(pid)
            except (OSError, ValueError, IndexError):
                continue
        doomed: list[int] = []
        todo = list(steps)
        while todo:
            pid = todo.pop()
            doomed.append(pid)
            todo.extend(children.get(pid, []))
        for pid in reversed(doomed):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _cancel_all_jobs(self) -> None:
        try:
            result = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=15)
            ids = result.stdout.split()
            if ids:
                self.run(["scancel", *ids], check=False, timeout=15)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    result = self.run(["squeue", "-h", "-t", "R,CG,PD", "-o", "%i"], check=False, timeout=15)
                    if not result.stdout.split():
                        break
                    time.sleep(0.5)
        except (subprocess.TimeoutExpired, OSError):
            pass
