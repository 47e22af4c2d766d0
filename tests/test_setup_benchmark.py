"""benchmarks/setup_time.py (issue 18's set-up time): a run takes about 16 min on 2 cores, so CI does not run it
(`make bench-setup`, figures in docs/benchmarks.md). Checked here: the phases it reads off `make demo`'s output are
the template Makefile's own commands, in the order make runs them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import TEMPLATE_DIR

sys.path.insert(0, str(TEMPLATE_DIR / "benchmarks"))
import setup_time  # noqa: E402


def test_phases_are_found_in_what_make_demo_runs():
    """`make -n -B demo` prints every command `make demo` runs on a fresh clone (it stops at the demo project's own
    make, which does not exist yet); each phase marker starts one of them, in order."""
    dry = subprocess.run(["make", "-n", "-B", "demo"], cwd=TEMPLATE_DIR, capture_output=True, text=True)
    lines = [(float(i), line + "\n") for i, line in enumerate(dry.stdout.splitlines())]
    phases = setup_time.phase_times(lines, total=float(len(lines)))
    assert list(phases) == ["environment", "horovod", "demo"]
    assert all(seconds > 0 for seconds in phases.values()), phases
    commands = [line for _, line in lines]
    install = next(i for i, line in enumerate(commands) if "install_env.py --venv .venv -r requirements/dev.txt" in line)
    horovod = next(i for i, line in enumerate(commands) if line.startswith("bash containers/horovod/build-horovod.sh"))
    generate = next(i for i, line in enumerate(commands) if line.startswith("cookiecutter --no-input"))
    # environment: from make's start to the Horovod build, which it includes the installer in; demo: before generating
    assert install < phases["environment"] == horovod
    assert horovod + phases["horovod"] < generate


def test_a_missing_phase_is_an_error():
    with pytest.raises(setup_time.BenchmarkError, match=r"no start seen for phase\(s\) \['horovod'\]"):
        setup_time.phase_times([(1.0, "mkdir -p build/demo\n")], total=2.0)


def test_installers_are_checked():
    result = subprocess.run([sys.executable, str(TEMPLATE_DIR / "benchmarks/setup_time.py"), "--installers", "conda"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--installers takes uv and/or pip" in result.stderr
