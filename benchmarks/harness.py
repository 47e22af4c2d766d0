"""What the benchmark scripts (pipeline.py, slurm_pipeline.py, throughput.py) share: their error type and messages,
the environment their commands run in, the generated project's own helpers, and the temporary directory each run
works in."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


class BenchmarkError(RuntimeError):
    """A command failed or the project is not in the state the benchmark expects."""


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def base_environment() -> dict[str, str]:
    """The caller's environment, with this interpreter's bin/ first on PATH (a venv's tools resolve) and no
    MLFLOW_TRACKING_URI, so that every run uses the project's own store (which the reset removes)."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    parts = env.get("PATH", "").split(os.pathsep)
    if parts[:1] != [bindir]:
        env["PATH"] = os.pathsep.join([bindir, *parts])
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def project_helpers(project: Path, *names: str) -> list[ModuleType]:
    """The generated project's own helper modules (workflow/lib/smkml/<name>.py), imported as the package `smkml`
    from <project>/workflow/lib, the way its rules import them (the helpers import each other within the package)."""
    lib = (project / "workflow" / "lib").resolve()
    if str(lib) not in sys.path:
        sys.path.insert(0, str(lib))
    modules = [importlib.import_module(f"smkml.{name}") for name in names]
    for module in modules:
        if not Path(module.__file__).resolve().is_relative_to(lib):
            raise BenchmarkError(f"imported {module.__name__} from {module.__file__}, not from the project's {lib}")
    return modules


def in_workdir(prefix: str, keep: bool, body: Callable[[Path], None], kept_note: str = "") -> int:
    """Run `body` in a new temporary directory; the exit status of the script: 0, or 1 after a BenchmarkError
    (printed as ERROR). The directory is removed after a successful run unless `keep`; otherwise it stays and
    its path is printed (followed by `kept_note`)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    ok = False
    try:
        body(workdir)
        ok = True
        return 0
    except BenchmarkError as error:
        print(f"\nERROR: {error}", file=sys.stderr)
        return 1
    finally:
        if ok and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"kept {workdir}{kept_note}")


def print_machine(machine: dict) -> None:
    """The machine line every benchmark summary prints (from pipeline.machine_info, with loadavg_end added)."""
    print(
        f"machine: nproc {machine['nproc']}, {machine['cpu_model']}, Python {machine['python']}, "
        f"Snakemake {machine['snakemake']}, load average {machine['loadavg_start'][0]:.2f} -> "
        f"{machine['loadavg_end'][0]:.2f}"
    )


def write_json(path: Path, result: dict) -> None:
    """A benchmark's results as JSON at `path` (folders created), and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {path}")
