"""GPU figures of the demo project's training: both backends on one GPU, data-parallel across the visible GPUs
(NCCL, or RCCL on ROCm), and the throughput benchmark's configuration on the GPU against the CPU. Writes JSON.

    python benchmarks/gpu_figures.py [--json PATH] [--repeats N] [--gpus N] [--keep]
    python benchmarks/gpu_figures.py --dry-run          # the plan (cases, commands), nothing run, no GPU needed
    python benchmarks/gpu_figures.py --allow-cpu ...    # no GPU: run the same cases on the CPU (to test the script)

Generates the demo project once (cookiecutter defaults) in a temporary directory and runs the project's own
training command (`training_command()` of workflow/lib/smkml/launch.py with the `local` launcher: plain `python`
for one rank, `python -m <package>.local_ranks` for several) on the synthetic set and in the
configuration of benchmarks/throughput.py (MLP 64 -> 1024 -> 1024 -> 10, a fixed batch of 4096 samples per rank,
Adam, 4 epochs; throughput is the training's own steady-state samples/s from history.json). Cases:

- `torch_ddp 1 rank, gpu` and `horovod 1 rank, gpu`: `--device gpu` (training fails rather than fall back to the CPU);
- with 2 or more visible GPUs, `torch_ddp N ranks, gpu` and `horovod N ranks, gpu`: one rank per GPU (each rank
  takes GPU `local_rank`); DDP all-reduces with NCCL (RCCL under ROCm), Horovod with its GPU operations when it was
  built with them (build-horovod.sh --gpu cuda|rocm), else it fails and the case records the error;
- `torch_ddp 1 rank, cpu`: the same 1-rank case with `--device cpu` and every core of the machine as torch threads.

Figures: per case median, min and max samples/s over the repeats (cases rotate in order from repeat to repeat); the
ratios gpu/cpu (1 rank), N ranks / 1 rank per backend (weak scaling: ideal N), and horovod/torch_ddp at N ranks.
Each case's device line as training printed it (`on cuda:0 (<GPU name>)`) is recorded and checked: a GPU case that
trained on the CPU is an error. A case that fails is recorded with its error and the script exits 1 at the end;
missed expectations are not judged.

Without a visible GPU (torch.cuda.device_count() == 0 in this interpreter) it stops before generating anything,
unless --allow-cpu, which runs the GPU cases on the CPU and marks the JSON `"gpu": false` (for testing the script
only: those are not GPU figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  benchmarks/throughput.py: the dataset, the configuration, the commands
from harness import BenchmarkError, in_workdir, project_helpers, say  # noqa: E402

BACKENDS = ("torch_ddp", "horovod")


@dataclass(frozen=True)
class GpuCase:
    name: str
    backend: str
    ranks: int
    device: str  # training's --device: gpu or cpu
    threads: int = 1


def visible_gpus() -> tuple[int, list[str], dict]:
    """(count, names, torch build) as this interpreter's torch sees them (ROCm GPUs appear as cuda devices)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    build = {"torch": torch.__version__, "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None)}
    return count, names, build


def plan(gpus: int, cpus: int) -> list[GpuCase]:
    """The cases for `gpus` GPUs (data-parallel cases only from 2) and `cpus` cores for the CPU case."""
    cases = [GpuCase(f"{backend} 1 rank, gpu", backend, 1, "gpu") for backend in BACKENDS]
    if gpus >= 2:
        cases += [GpuCase(f"{backend} {gpus} ranks, gpu", backend, gpus, "gpu") for backend in BACKENDS]
    cases.append(GpuCase("torch_ddp 1 rank, cpu", "torch_ddp", 1, "cpu", threads=cpus))
    return cases


def command(case: GpuCase, project: Path, launch, package: str, data: str, out: str, params: dict,
            allow_cpu: bool) -> str:
    """The project's training command for the case (throughput.command_for), --device as the case says; with
    --allow-cpu the GPU cases run on the CPU."""
    device = "cpu" if allow_cpu else case.device
    as_throughput_case = throughput.Case(case.name, case.backend, case.ranks, threads=case.threads)
    return throughput.command_for(as_throughput_case, project, launch, package, data, out, None, params,
                                  device=device)


def device_line(log: str) -> str:
    """What training printed about where it ran: 'on cuda:0 (NVIDIA H200)', 'on cpu'."""
    found = re.search(r"epochs, \d+ samples, on (.+?), \d+ thread", log)
    return found.group(1) if found else "unknown"


def ratio_rows(values: dict[str, list[float]], gpus: int) -> list[dict]:
    """gpu/cpu at 1 rank; N/1 ranks per backend; horovod/torch_ddp at N ranks (each within a repeat)."""
    def ratio(name, a, b):
        if values.get(a) and values.get(b) and len(values[a]) == len(values[b]):
            return throughput.summary(name, [x / y for x, y in zip(values[a], values[b])], "x")
        return None

    rows = [ratio("gpu / cpu (torch_ddp, 1 rank)", "torch_ddp 1 rank, gpu", "torch_ddp 1 rank, cpu")]
    if gpus >= 2:
        for backend in BACKENDS:
            rows.append(ratio(f"{backend}: {gpus} ranks / 1 rank (ideal {gpus})",
                              f"{backend} {gpus} ranks, gpu", f"{backend} 1 rank, gpu"))
        rows.append(ratio(f"horovod / torch_ddp ({gpus} ranks)", f"horovod {gpus} ranks, gpu", f"torch_ddp {gpus} ranks, gpu"))
    return [row for row in rows if row]


def measure(args, gpus: int, names: list[str], build: dict, workdir: Path) -> None:
    from cookiecutter.main import cookiecutter

    cpus = len(os.sched_getaffinity(0))
    env = throughput.environment()
    where = "no GPU used (--allow-cpu): every case on the CPU" if args.allow_cpu else f"{gpus} GPU(s) {names}"
    say(f"{where}, {cpus} CPU(s); generating the demo project in {workdir}")
    project = Path(cookiecutter(str(throughput.TEMPLATE_DIR), no_input=True, output_dir=str(workdir)))
    env["PYTHONPATH"] = str(project / "src")
    package = project.name.replace("-", "_")
    (launch,) = project_helpers(project, "launch")
    params = throughput.hyperparameters(project)
    data = "data/processed/throughput.npz"
    (project / data).parent.mkdir(parents=True, exist_ok=True)
    throughput.write_dataset(project / data)
    cases = plan(gpus, cpus)

    values: dict[str, list[float]] = {case.name: [] for case in cases}
    errors: dict[str, str] = {}
    devices: dict[str, str] = {}
    commands = {case.name: command(case, project, launch, package, data, "bench-out/<run>", params, args.allow_cpu)
                for case in cases}
    for repeat in range(args.repeats):
        order = cases[repeat % len(cases):] + cases[: repeat % len(cases)]
        for case in order:
            if case.name in errors:
                continue
            out = f"bench-out/{repeat}-{re.sub(r'[^A-Za-z0-9]+', '_', case.name)}"
            line = command(case, project, launch, package, data, out, params, args.allow_cpu)
            try:
                values[case.name].append(throughput.run_case(line, project, env, project / out))
            except BenchmarkError as error:
                errors[case.name] = str(error)
                say(f"{case.name}: FAILED ({str(error).splitlines()[0]})")
                continue
            devices[case.name] = device_line((project / out / "train.log").read_text())
            if case.device == "gpu" and not args.allow_cpu and not devices[case.name].startswith("cuda"):
                errors[case.name] = f"trained on {devices[case.name]}, not on a GPU"
        say(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{name} {vals[-1]:.0f}" for name, vals in values.items() if vals and name not in errors) + " samples/s")

    complete = {name: vals for name, vals in values.items() if name not in errors and vals}
    rows = [throughput.summary(name, vals, "samples/s") for name, vals in complete.items()]
    rows += ratio_rows(complete, gpus)
    print()
    print(f"GPU figures ({'NOT on a GPU: --allow-cpu' if args.allow_cpu else f'{gpus} GPU(s)'}), "
          f"batch {throughput.LOCAL_BATCH} per rank, {args.repeats} repeat(s)")
    print(throughput.table(rows) if rows else "(no figures)")
    for name, error in errors.items():
        print(f"{name}: FAILED: {error.splitlines()[0]}")
    result = {
        "gpu": not args.allow_cpu,
        "machine": {"gpus": gpus, "gpu_names": names, "nproc": cpus, "python": platform.python_version(),
                    "platform": platform.platform(), **build},
        "configuration": {"params": {k: v for k, v in params.items() if k != "batch_size"},
                          "batch_per_rank": throughput.LOCAL_BATCH,
                          "dataset": {"samples": throughput.SAMPLES, "features": throughput.FEATURES,
                                      "classes": throughput.CLASSES}},
        "commands": commands,
        "devices": devices,
        "figures": rows,
        "errors": errors,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {args.json}")
    if errors:
        raise BenchmarkError(f"{len(errors)} case(s) failed: {', '.join(errors)} (details in {args.json})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=Path("build/gpu-figures.json"),
                        help="where the figures go (default build/gpu-figures.json)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every case (default 3)")
    parser.add_argument("--gpus", type=int, help="ranks of the data-parallel cases (default: every visible GPU)")
    parser.add_argument("--dry-run", action="store_true", help="print the cases and stop (no GPU needed)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="without a GPU, run the GPU cases on the CPU (tests the script; not GPU figures)")
    parser.add_argument("--keep", action="store_true", help="keep the generated project and the run logs")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.gpus is not None and args.gpus < 1:
        parser.error("--gpus must be at least 1")

    visible, names, build = visible_gpus()
    if args.gpus is not None and visible and args.gpus > visible:
        parser.error(f"--gpus {args.gpus}: only {visible} GPU(s) visible")
    gpus = args.gpus or visible
    if args.allow_cpu and not visible:
        gpus = args.gpus or 1
    cpus = len(os.sched_getaffinity(0))
    if args.dry_run:
        print(f"visible GPUs: {visible} {names}; torch {build['torch']} (cuda {build['cuda']}, hip {build['hip']})")
        print(f"would write {args.json}; {args.repeats} repeat(s); cases:")
        for case in plan(max(gpus, 1), cpus):
            device = "cpu" if args.allow_cpu else case.device
            print(f"  {case.name}: {case.backend}, {case.ranks} rank(s), --device {device}, {case.threads} thread(s)")
        if not visible and not args.allow_cpu:
            print("no GPU is visible: a real run would stop (give --allow-cpu to run the cases on the CPU)")
        return 0
    if not visible and not args.allow_cpu:
        print("ERROR: no GPU is visible to torch (torch.cuda.device_count() == 0, torch "
              f"{build['torch']}, cuda {build['cuda']}, hip {build['hip']}): run on a GPU machine with a CUDA or "
              "ROCm build of torch, or give --allow-cpu to test the script on the CPU", file=sys.stderr)
        return 2
    return in_workdir("smkml-gpu-figures-", args.keep, lambda workdir: measure(args, gpus, names, build, workdir))


if __name__ == "__main__":
    sys.exit(main())
