"""Training throughput of the demo project's training code on CPU: 1 vs 2 ranks for both backends, and a
container against no container, as ratios measured side by side in one run.

    python benchmarks/throughput.py [--repeats N] [--json PATH] [--image DIR | --no-container]

Generates the demo project once (cookiecutter defaults) in a temporary directory and writes a synthetic
classification set there (65536 samples x 64 features, 10 classes). Every run is the project's own launch
command (`training_command()` from workflow/lib/smkml/launch.py: `python -m <package>.local_ranks --processes 2`
for 2 ranks of either backend, plain `python` for 1 rank) of `python -m <package>.train`.

Compute-bound configuration: an MLP 64 -> 1024 -> 1024 -> 10 (about 1.1 M parameters), a FIXED BATCH PER RANK of
4096 samples (global batch 4096 for 1 rank, 8192 for 2 ranks: weak scaling, the way data-parallel throughput is
conventionally compared, e.g. Horovod's own synthetic benchmarks with a fixed batch per worker), Adam, ONE torch
thread per rank (`--threads 1`). A step is then dominated by the matrix products of the rank's batch (about
27 GFLOP per rank and step) against one 4.4 MB gradient all-reduce over Gloo on localhost, and one rank uses one
core: 2 ranks have twice the cores of 1 rank, which is what "2-rank >= 1.7x one rank" compares. (With several
threads, 1 rank would already use both cores of a 2-core machine and 2 ranks could not scale.) For reference the
table also gives 1 rank with 2 threads (intra-op parallelism instead of data parallelism; the machine's ceiling),
and `--strong` runs the older comparison at the same global batch (2048) instead.

Horovod runs twice, at its default cycle time (`HOROVOD_CYCLE_TIME` 1 ms, chosen for GPUs) and tuned for
compute-bound CPU work (`--horovod-cycle-time`, default 20 ms): its background thread negotiates every cycle,
which takes CPU from the compute when the ranks have no core to spare. Both ratios are reported with the target.

Throughput is samples/s of the steady state as the training itself measures it (`samples_per_second` in
history.json: epochs after the first, so process start, rendezvous and warm-up are left out). One repeat runs
every case once; the cases' order rotates from repeat to repeat, ratios are taken within a repeat (side by side),
and the table gives the median, min and max over repeats.

Container line: the 2-rank DDP case again inside a Charliecloud CPU image (`ch-run`), over the same case without
a container. The image is `--image DIR` (a directory image with the project's environment, e.g. from the
project's containers/cpu/build-charliecloud.sh), else built with that script when the generated project has it
and `ch-run` exists; otherwise the line is skipped, with the reason. It reports, it does not judge: missed targets
still exit 0; a failing run exits 1.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness import BenchmarkError, base_environment, in_workdir, project_helpers, say  # benchmarks/harness.py

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
# Over the generated project's config/config.yaml `train.hyperparameters` (batch_size: per case, batch_size()).
OVERRIDES = {"epochs": 4, "hidden_sizes": [1024, 1024]}
LOCAL_BATCH = 4096  # samples per rank and step (weak scaling); --strong: GLOBAL_BATCH whatever the ranks
GLOBAL_BATCH = 2048
SAMPLES, FEATURES, CLASSES = 65536, 64, 10
TARGETS = {"scaling": 1.7, "container_overhead": 0.03}
HOROVOD_CYCLE_MS = 20  # the compute-bound tuning of the "tuned" Horovod cases (Horovod's own default: 1 ms)


@dataclass(frozen=True)
class Case:
    name: str
    backend: str
    ranks: int
    threads: int = 1  # torch threads per rank
    contained: bool = False  # inside the Charliecloud image
    horovod_cycle_ms: float | None = None  # HOROVOD_CYCLE_TIME for this case; None: Horovod's default


def tuned(cycle_ms: float) -> str:
    """The name suffix of the Horovod cases at a tuned cycle time."""
    return f", cycle {cycle_ms:g} ms"


def cases_for(cycle_ms: float) -> list[Case]:
    """Every case without a container; Horovod twice: at its default cycle time and at `cycle_ms`."""
    return [
        Case("horovod 1 rank", "horovod", 1),
        Case("horovod 2 ranks", "horovod", 2),
        Case(f"horovod 1 rank{tuned(cycle_ms)}", "horovod", 1, horovod_cycle_ms=cycle_ms),
        Case(f"horovod 2 ranks{tuned(cycle_ms)}", "horovod", 2, horovod_cycle_ms=cycle_ms),
        Case("torch_ddp 1 rank", "torch_ddp", 1),
        Case("torch_ddp 2 ranks", "torch_ddp", 2),
        Case("torch_ddp 1 rank, 2 threads", "torch_ddp", 1, threads=2),
    ]


CONTAINER_CASE = Case("torch_ddp 2 ranks, container", "torch_ddp", 2, contained=True)


def environment() -> dict[str, str]:
    """The pipeline benchmark's environment (this interpreter's bin/ first, no MLFLOW_TRACKING_URI), plus USER,
    less HOROVOD_CYCLE_TIME: the default Horovod cases run at Horovod's default, the tuned ones set it themselves."""
    env = base_environment()
    env.pop("HOROVOD_CYCLE_TIME", None)
    env.setdefault("USER", getpass.getuser())  # ch-run needs it
    return env


def write_dataset(path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, SAMPLES)
    centres = rng.normal(0, 1, (CLASSES, FEATURES)).astype(np.float32)
    features = (centres[labels] + rng.normal(0, 1, (SAMPLES, FEATURES))).astype(np.float32)
    np.savez(path, features=features, labels=labels.astype(np.int64))


def hyperparameters(project: Path) -> dict:
    """The generated project's training hyper-parameters (all of them: training takes no partial set) with OVERRIDES."""
    import yaml

    config = yaml.safe_load((project / "config/config.yaml").read_text())
    return {**config["train"]["hyperparameters"], **OVERRIDES}


def container_image(project: Path, args, env) -> tuple[Path | None, str]:
    """(image, "") or (None, why there is no container line)."""
    if args.no_container:
        return None, "--no-container"
    if args.image:
        return usable(Path(args.image).resolve())
    if not shutil.which("ch-run"):
        return None, "ch-run (Charliecloud) is not installed"
    script = project / "containers/cpu/build-charliecloud.sh"
    if not script.is_file():
        return None, "the generated project has no containers/cpu/build-charliecloud.sh (give --image DIR)"
    say(f"building the CPU image with {script.relative_to(project)} (cached between runs)")
    result = subprocess.run(
        ["bash", str(script), "--project", str(project), "--backend", "torch_ddp", "--python", sys.executable],
        cwd=project, env=env, capture_output=True, text=True,
    )
    if result.returncode != 0:
        return None, f"the image build failed: {(result.stdout + result.stderr).strip().splitlines()[-1:]}"
    return usable(Path(result.stdout.strip().splitlines()[-1]).resolve())


def usable(image: Path) -> tuple[Path | None, str]:
    hosts = image / "etc/hosts"
    if not (hosts.is_file() and "localhost" in hosts.read_text()):
        # torchrun --standalone meets its ranks at localhost; ch-run does not bring the host's /etc/hosts.
        return None, f"{hosts} does not name localhost (torchrun --standalone needs it; add '127.0.0.1 localhost')"
    return image, ""


def batch_size(ranks: int, strong: bool) -> int:
    """The global batch of a run on `ranks` ranks: LOCAL_BATCH per rank, or GLOBAL_BATCH for all with --strong."""
    return GLOBAL_BATCH if strong else LOCAL_BATCH * ranks


def command_for(
    case: Case,
    project: Path,
    launch,
    package: str,
    data: str,
    out: str,
    image: Path | None,
    params: dict,
    strong: bool = False,
    device: str | None = None,
) -> str:
    """The case's command, run in the project directory; `data` and `out` are relative to it; `params`: every
    hyper-parameter training takes (the case sets the batch size); `device`: training's --device (cpu, gpu), else
    its default (auto). benchmarks/gpu_figures.py runs the same commands on GPUs."""
    params = {**params, "batch_size": batch_size(case.ranks, strong)}
    args = ["--train", data, "--out-dir", out, "--params", json.dumps(params), "--threads", str(case.threads)]
    if device:
        args += ["--device", device]
    command = launch.training_command(
        launcher="local", backend=case.backend, processes=case.ranks, package=package, args=args
    )
    if case.horovod_cycle_ms is not None:
        # The launcher passes its environment on to the ranks; Horovod reads the variable at hvd.init().
        command = f"HOROVOD_CYCLE_TIME={case.horovod_cycle_ms:g} {command}"
    if case.contained:
        # The project is mounted at /mnt (a directory every Debian image has) and the launcher runs inside the
        # container too, so both sides of the ratio start their ranks the same way and run the same source.
        command = (
            f"ch-run --set-env -b {shlex.quote(str(project))}:/mnt -c /mnt {shlex.quote(str(image))}"
            f" -- env PYTHONPATH=/mnt/src {command}"
        )
    return command


def run_case(command: str, project: Path, env: dict[str, str], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").unlink(missing_ok=True)
    result = subprocess.run(command, shell=True, cwd=project, env=env, capture_output=True, text=True)
    (out / "train.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise BenchmarkError(f"'{command}' failed ({result.returncode}):\n{tail}")
    value = json.loads((out / "history.json").read_text())["samples_per_second"]
    if not value:
        raise BenchmarkError(f"no steady-state throughput in {out / 'history.json'}")
    return float(value)


def summary(name: str, samples: list[float], unit: str, target: str = "-", met: bool | None = None) -> dict:
    return {
        "name": name,
        "unit": unit,
        "samples": [round(s, 4) for s in samples],
        "median": round(statistics.median(samples), 4),
        "min": round(min(samples), 4),
        "max": round(max(samples), 4),
        "target": target,
        "pass": met,
    }


def table(rows: list[dict]) -> str:
    def fmt(value: float, unit: str) -> str:
        return f"{value:.0f}" if unit == "samples/s" else f"{value:.3f}"

    lines = [("figure", "median", "min", "max", "target", "result")]
    for row in rows:
        lines.append(
            (
                row["name"],
                fmt(row["median"], row["unit"]),
                fmt(row["min"], row["unit"]),
                fmt(row["max"], row["unit"]),
                row["target"],
                "-" if row["pass"] is None else ("PASS" if row["pass"] else "MISSED"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(6)]
    text = []
    for n, line in enumerate(lines):
        text.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every case (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--image", help="Charliecloud directory image for the container line")
    parser.add_argument("--no-container", action="store_true", help="skip the container line")
    parser.add_argument("--keep", action="store_true", help="keep the generated project and the run logs")
    parser.add_argument(
        "--strong",
        action="store_true",
        help=f"same global batch ({GLOBAL_BATCH}) for 1 and 2 ranks instead of {LOCAL_BATCH} per rank",
    )
    parser.add_argument(
        "--horovod-cycle-time",
        type=float,
        metavar="MS",
        default=HOROVOD_CYCLE_MS,
        help=f"HOROVOD_CYCLE_TIME (ms) of the tuned Horovod cases (default {HOROVOD_CYCLE_MS}; Horovod's own: 1)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.horovod_cycle_time <= 0:
        parser.error(f"--horovod-cycle-time must be a positive number of milliseconds, not {args.horovod_cycle_time}")

    env = environment()
    return in_workdir("smkml-throughput-", args.keep, lambda workdir: measure(args, env, workdir))


def measure(args: argparse.Namespace, env: dict[str, str], workdir: Path) -> None:
    """Generate the project in `workdir`, run every case `args.repeats` times, print (and write) the results."""
    from cookiecutter.main import cookiecutter

    say(f"{len(os.sched_getaffinity(0))} CPU(s), load average {os.getloadavg()[0]:.2f}; generating in {workdir}")
    project = Path(cookiecutter(str(TEMPLATE_DIR), no_input=True, output_dir=str(workdir)))
    env["PYTHONPATH"] = str(project / "src")
    package = project.name.replace("-", "_")
    (launch,) = project_helpers(project, "launch")
    params = hyperparameters(project)
    data = "data/processed/throughput.npz"
    (project / data).parent.mkdir(parents=True, exist_ok=True)
    write_dataset(project / data)
    image, why = container_image(project, args, env)
    cases = cases_for(args.horovod_cycle_time) + ([CONTAINER_CASE] if image else [])
    if not image:
        say(f"container line skipped: {why}")
    commands = {}
    for case in cases:
        commands[case.name] = command_for(
            case, project, launch, package, data, "bench-out/<run>", image, params, args.strong
        )
        say(f"{case.name}: {commands[case.name]}")

    throughput: dict[str, list[float]] = {case.name: [] for case in cases}
    for repeat in range(args.repeats):
        order = cases[repeat % len(cases) :] + cases[: repeat % len(cases)]
        for case in order:
            out = f"bench-out/{repeat}-{case.name.replace(' ', '_').replace(',', '')}"
            command = command_for(case, project, launch, package, data, out, image, params, args.strong)
            throughput[case.name].append(run_case(command, project, env, project / out))
        say(
            f"repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{name} {values[-1]:.0f}" for name, values in throughput.items())
            + f" samples/s (load {os.getloadavg()[0]:.2f})"
        )

    def ratios(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(throughput[a], throughput[b])]

    rows = [summary(f"{name}", values, "samples/s") for name, values in throughput.items()]
    for backend, suffix in (("horovod", ""), ("horovod", tuned(args.horovod_cycle_time)), ("torch_ddp", "")):
        values = ratios(f"{backend} 2 ranks{suffix}", f"{backend} 1 rank{suffix}")
        met = statistics.median(values) >= TARGETS["scaling"]
        rows.append(summary(f"{backend}{suffix}: 2 ranks / 1 rank", values, "x", f">= {TARGETS['scaling']}", met))
    rows.append(summary("torch_ddp: 2 ranks / 1 rank with 2 threads", ratios("torch_ddp 2 ranks", "torch_ddp 1 rank, 2 threads"), "x"))
    if image:
        values = ratios("torch_ddp 2 ranks, container", "torch_ddp 2 ranks")
        floor = 1 - TARGETS["container_overhead"]
        rows.append(summary("container / no container (2-rank DDP)", values, "x", f">= {floor:.2f}", statistics.median(values) >= floor))
    print()
    batches = f"global batch {GLOBAL_BATCH}" if args.strong else f"batch {LOCAL_BATCH} per rank"
    print(
        f"Training throughput ({batches}), {args.repeats} repeat(s); "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    print(table(rows))
    if not image:
        print(f"container / no container: skipped ({why})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": {"nproc": len(os.sched_getaffinity(0)), "python": platform.python_version()},
                    "params": {key: value for key, value in params.items() if key != "batch_size"},
                    "batch": {"global": GLOBAL_BATCH} if args.strong else {"per_rank": LOCAL_BATCH},
                    "horovod_cycle_time_ms_tuned": args.horovod_cycle_time,
                    "dataset": {"samples": SAMPLES, "features": FEATURES, "classes": CLASSES},
                    "commands": commands,
                    "figures": rows,
                    "container": str(image) if image else f"skipped: {why}",
                },
                indent=2,
            )
            + "\n"
        )
        say(f"wrote {args.json}")

if __name__ == "__main__":
    sys.exit(main())
