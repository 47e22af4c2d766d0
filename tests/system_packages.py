"""Debian packages the tests install when missing (root only), one apt-get at a time: pytest-xdist workers may
need packages at the same moment, and apt holds one lock per machine."""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from pathlib import Path

LOCK = Path(tempfile.gettempdir()) / "smkml-tests-apt.lock"


def apt_install(packages: list[str] | tuple[str, ...], timeout: int = 900) -> None:
    """apt-get update and install `packages`; raises RuntimeError with apt's output when either fails."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    wait = ["-o", "DPkg::Lock::Timeout=600"]  # and apt run by anything else on the machine
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for command in (["apt-get", *wait, "update", "-qq"], ["apt-get", *wait, "install", "-y", "-qq", *packages]):
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                   f"{result.stderr[-3000:]}")
