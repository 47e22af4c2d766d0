"""Set-up time of a new user (issue 18): `make demo` in a fresh clone with empty caches, phase by phase.

    python benchmarks/setup_time.py [--installers uv,pip] [--repeats 1] [--json PATH] [--keep]

Each run clones the template's committed HEAD into a new temporary folder and runs exactly what the README says,
`make demo`, with INSTALLER set to the installer under test (`make env`'s installer, rules_lib/lib/smkml/
install_env.py: uv or pip). Runs of the installers alternate, so both see the same machine. The phases are read
from the time each line of make's output arrives:

    environment   make's system-package check, the venv, requirements/dev.txt (the generated project's lock
                  plus the template's tools) with the installer
    horovod       containers/horovod/build-horovod.sh: download the sdist, compile, install the wheel
    demo          generate the demo project with the default answers and run its whole pipeline (make run)

Caches it owns, empty at the start of every run (new temporary folders, removed afterwards): pip's (PIP_CACHE_DIR),
uv's (UV_CACHE_DIR) and the Horovod wheel cache (HOROVOD_WHEEL_CACHE). Nothing of ~/.cache is read. Not cleared,
because they are the machine's and not caches: the system packages `make env` checks (g++, cmake, Open MPI, git;
installed beforehand) and a wheel folder the machine's own pip configuration names (on the development machine
/opt/wheels, where pip finds torch's CPU build; both installers are given it, see install_env.py).
Target: the uv run ≤ 6 min on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import BenchmarkError, say

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 6 * 60
# Each phase after the first starts at the first line of make's output that starts with its marker (make echoes
# each command of the template's Makefile before running it); the first starts with make.
PHASES = [
    ("environment", None),
    ("horovod", "bash containers/horovod/build-horovod.sh"),
    ("demo", "mkdir -p build/demo"),
]


def phase_times(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """Seconds per phase from make's output lines, each with the second it arrived."""
    starts = {PHASES[0][0]: 0.0}
    for now, line in lines:
        for phase, marker in PHASES[1:]:
            if phase not in starts and line.startswith(marker):
                starts[phase] = now
    missing = [phase for phase, _ in PHASES if phase not in starts]
    if missing:
        raise BenchmarkError(f"no start seen for phase(s) {missing} in make's output")
    names = [phase for phase, _ in PHASES]
    ends = [starts[n] for n in names[1:]] + [total]
    return {n: round(end - starts[n], 1) for n, end in zip(names, ends)}


def one_run(installer: str, workdir: Path) -> dict:
    """`make demo` in a fresh clone with new, empty caches; the seconds of each phase and of the whole."""
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    caches = {name: workdir / name for name in ("pip-cache", "uv-cache", "horovod-wheels")}
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("VIRTUAL_ENV", "MAKE", "UV_")) and key not in ("PIP_CACHE_DIR", "HOROVOD_WHEEL_CACHE")}
    # A fresh shell: no virtual environment on PATH (the clone's make creates its own).
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not (Path(p) / "activate").exists())
    env.update(INSTALLER=installer, PIP_CACHE_DIR=str(caches["pip-cache"]), UV_CACHE_DIR=str(caches["uv-cache"]),
               HOROVOD_WHEEL_CACHE=str(caches["horovod-wheels"]))
    log = workdir / f"make-demo-{installer}.log"
    lines: list[tuple[float, str]] = []
    say(f"{installer}: make demo in {clone} (log: {log})")
    start = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(["make", "demo"], cwd=clone, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            now = time.monotonic() - start
            out.write(f"{now:8.1f} {line}")
            lines.append((now, line))
        process.wait()
    total = time.monotonic() - start
    if process.returncode != 0:
        raise BenchmarkError(f"make demo ({installer}) failed with exit {process.returncode}: see {log}")
    if not any(f"installed with {installer} in" in line for _, line in lines):
        raise BenchmarkError(f"make demo ({installer}) did not install with {installer}: see {log}")
    phases = phase_times(lines, total)
    result = {"installer": installer, "total_s": round(total, 1), **{f"{n}_s": t for n, t in phases.items()}}
    say(f"{installer}: {result}")
    return result


def machine() -> dict:
    return {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": sys.version.split()[0], "load_start": os.getloadavg()}


def table(runs: list[dict]) -> str:
    lines = ["| installer | environment | horovod | demo (generate + pipeline) | total | target ≤ 6 min |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        verdict = ("met" if r["total_s"] <= TARGET_S else "missed") if r["installer"] == "uv" else "-"
        lines.append(f"| {r['installer']} | {r['environment_s']:.0f} s | {r['horovod_s']:.0f} s | {r['demo_s']:.0f} s "
                     f"| {r['total_s'] / 60:.1f} min | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--installers", default="uv,pip", help="comma-separated, run alternately (default uv,pip)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the machine and every run here")
    parser.add_argument("--keep", action="store_true", help="keep the clones, caches and logs")
    args = parser.parse_args(argv)
    installers = args.installers.split(",")
    bad = [i for i in installers if i not in ("uv", "pip")]
    if bad or args.repeats < 1:
        parser.error(f"--installers takes uv and/or pip (got {bad}); --repeats ≥ 1")
    if subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout:
        say("note: the working tree has uncommitted changes; the clone has only the committed HEAD")
    info = machine()
    say(f"machine: {info}")
    runs = []
    try:
        for repeat in range(args.repeats):
            for installer in installers:
                workdir = Path(tempfile.mkdtemp(prefix=f"smkml-setup-{installer}-"))
                try:
                    runs.append(one_run(installer, workdir))
                finally:
                    if args.keep:
                        say(f"kept {workdir}")
                    else:
                        shutil.rmtree(workdir, ignore_errors=True)
    except BenchmarkError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    info["load_end"] = os.getloadavg()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"\nSet-up time, make demo from a fresh clone of {commit} with empty caches; machine: {info}\n")
    print(table(runs))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"commit": commit, "machine": info, "runs": runs}, indent=2) + "\n")
    uv_runs = [r["total_s"] for r in runs if r["installer"] == "uv"]
    return 0 if not uv_runs or max(uv_runs) <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
