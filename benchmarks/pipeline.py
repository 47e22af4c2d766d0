"""Benchmark the demo project's pipeline on this machine: Snakemake against the same commands run plainly.

    python benchmarks/pipeline.py [--repeats N] [--json PATH]      (`make bench` runs it)

Generates the demo project once (cookiecutter defaults) in a temporary directory, then for each repeat:

  A. cold Snakemake run: `snakemake --profile profiles/local` on the project as generation leaves it
     (no data/raw/digits.csv, no DVC cache, no outputs, logs, .snakemake/ or MLflow store);
  -  no-op rerun: the same command again on the finished project (it must print "Nothing to be done");
  B. plain run: from the same fresh state, the identical shell commands the rules run, without Snakemake.

The plain commands are not written down here: they come from Snakemake itself (`-n -p --forceall` for the
command lines, each job's threads from that same dry run through a logger plugin, benchmarks/plugins/, `--d3dag`
for the job graph, `--summary` for the outputs). They run through bash with the same prefix (the project's own
`smkml.jobs.shell_prefix(config)` from workflow/lib/, with config/config.yaml validated by the project's schema:
strict bash, PYTHONPATH=src, MLFLOW_TRACKING_URI, SMKML_CLUSTER) and the same per-job variables Snakemake sets
(OMP_NUM_THREADS and friends = the job's threads, TMPDIR). Nothing of the workflow is evaluated here. By default independent jobs run concurrently within the profile's core budget, as
Snakemake schedules them, so that the ratio measures Snakemake's overhead rather than its parallelism;
`--sequential` runs one job at a time in DAG order instead.

Each ratio is taken pair by pair (A over the B that follows it); the table gives median, min and max.
It reports, it does not judge: missed targets still exit 0. A failing command exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import shlex
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness import BenchmarkError, base_environment, in_workdir, print_machine, write_json, project_helpers, say  # benchmarks/harness.py

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
PROFILE = "profiles/local"
SNAKEMAKE = ["snakemake", "--profile", PROFILE]
# The Snakemake logger plugin that reports each job's threads (snakemake_logger_plugin_jobinfo).
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
# Everything a pipeline run creates; removing it returns the project to its state right after generation.
FRESH_PATHS = [
    "results",
    "logs",
    "data/processed",
    ".snakemake",
    "mlflow.db",
    "mlruns",
    "data/raw/digits.csv",
    ".dvc/cache",
]
NOTHING_TO_DO = "Nothing to be done"
# Issue 18 (a new user's first hour) tightened the first two from 60 s and 3 s.
TARGETS = {"pipeline": 25.0, "noop": 2.0, "ratio": 1.10}
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# Environment and commands


def check_output(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchmarkError(
            f"'{shlex.join(command)}' failed with exit code {result.returncode}:\n"
            + "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        )
    return result.stdout


def timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, str]:
    """Run a command with its output to `log`; return (seconds, output). Raise if it fails."""
    with open(log, "w") as out:
        started = time.perf_counter()
        rc = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - started
    if rc != 0:
        raise BenchmarkError(f"'{shlex.join(command)}' failed with exit code {rc}; log {log}:\n{tail(log)}")
    return seconds, log.read_text(errors="replace")


def merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def project_config(project: Path, profile: dict) -> dict:
    """The config the workflow runs with: config/config.yaml (the Snakefile's configfile) overlaid with the
    profile's config files and `config:` (the local profile has neither), validated by the project's own schema
    (which fills in the defaults, the default local `cluster` among them)."""
    config = yaml.safe_load((project / "config/config.yaml").read_text()) or {}
    configfiles = profile.get("configfile") or profile.get("configfiles") or []
    for path in [configfiles] if isinstance(configfiles, str) else configfiles:
        merge(config, yaml.safe_load((project / path).read_text()) or {})
    overrides = profile.get("config") or {}
    if isinstance(overrides, list):  # the `--config KEY=VALUE ...` form
        overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in overrides)}
    merge(config, dict(overrides))
    (schemas,) = project_helpers(project, "schemas")
    return schemas.validate(config)


def shell_prefix(project: Path, config: dict) -> str:
    """The prefix Snakemake puts before every shell command: the project's own smkml.jobs.shell_prefix(config)."""
    (jobs,) = project_helpers(project, "jobs")
    # Snakemake formats the prefix; with no placeholders this only undoubles braces.
    return string.Formatter().vformat(jobs.shell_prefix(config), (), {"config": config})


def job_threads(project: Path, env: dict[str, str], command: list[str]) -> tuple[str, dict[int, int]]:
    """Run a Snakemake command with the jobinfo logger plugin (benchmarks/plugins/); (its output, {jobid: threads
    as Snakemake gives the job}). Snakemake prints a job's threads only for rules without a `message:`."""
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS_DIR), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="smkml-jobinfo-") as tmp:
        path = Path(tmp) / "jobs.jsonl"
        output = check_output([*command, "--logger", "jobinfo", "--logger-jobinfo-path", str(path)], project, env)
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not records:
        raise BenchmarkError(f"Snakemake reported no jobs to the jobinfo logger ({PLUGINS_DIR})")
    return output, {int(r["jobid"]): int(r["threads"]) for r in records}


@dataclass
class Job:
    jobid: int
    rule: str
    command: str | None
    threads: int
    outputs: list[str]
    depends: set[int] = field(default_factory=set)


@dataclass
class Plan:
    jobs: list[Job]  # in a topological order
    prefix: str
    cores: int
    tmpdir: str


def dry_run_commands(text: str) -> dict[int, str | None]:
    """{jobid: shell command (None for a job without one)} from `snakemake -n -p` output."""
    commands: dict[int, str | None] = {}
    current = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        match = re.match(r"^Job (\d+): ", line) or re.match(r"^\s+jobid: (\d+)\s*$", line)
        if match:
            current = int(match.group(1))
        elif line.startswith("Shell command: ") and current is not None:
            command = [line[len("Shell command: ") :]]
            # A multi-line command goes on until the blank line that ends the job's block.
            while (
                command != ["None"]
                and i + 1 < len(lines)
                and lines[i + 1].strip()
                and not re.match(r"^(Job stats:|\[\w{3} \w{3} )", lines[i + 1])
            ):
                i += 1
                command.append(lines[i])
            joined = "\n".join(command).strip()
            commands[current] = None if joined == "None" else joined
            current = None
        i += 1
    return commands


def plan(project: Path, env: dict[str, str], profile_dir: str = PROFILE, config: Sequence[str] = ()) -> Plan:
    """What Snakemake would run, taken from Snakemake itself, plus the environment it gives each job.

    `profile_dir`: the profile Snakemake runs with; `config`: `--config KEY=VALUE` items given to every call (and
    to the config the shell prefix is made from)."""
    profile = yaml.safe_load((project / profile_dir / "profile.yaml").read_text()) or {}
    cores_setting = profile.get("cores", "all")
    cores = cpu_count() if cores_setting in ("all", None) else int(cores_setting)
    if config:
        base = profile.get("config") or []
        if isinstance(base, dict):  # KEY: VALUE in the profile; JSON is YAML
            base = [f"{key}={json.dumps(value)}" for key, value in base.items()]
        profile["config"] = [*base, *config]
    snakemake = ["snakemake", "--profile", profile_dir]
    extra = ["--config", *config] if config else []

    dag_text = check_output([*snakemake, "--forceall", "--d3dag", *extra], project, env)
    dag = json.loads(dag_text[dag_text.index("{") :])
    dry, threads = job_threads(project, env, [*snakemake, "--forceall", "--dry-run", "--printshellcmds", *extra])
    commands = dry_run_commands(dry)
    summary = check_output([*snakemake, "--forceall", "--summary", *extra], project, env).splitlines()
    header = summary[0].split("\t")
    outputs: dict[str, list[str]] = {}
    for row in summary[1:]:
        cells = dict(zip(header, row.split("\t")))
        if "rule" in cells and "output_file" in cells:
            outputs.setdefault(cells["rule"], []).append(cells["output_file"])

    jobs = {}
    for node in dag["nodes"]:
        jobid, rule = int(node["value"]["jobid"]), node["value"]["rule"]
        command = commands.get(jobid)
        if command is None and outputs.get(rule):
            raise BenchmarkError(f"job {jobid} (rule {rule}) makes files but has no shell command to run plainly")
        if jobid not in threads:
            raise BenchmarkError(f"Snakemake's dry run gave no threads for job {jobid} (rule {rule})")
        jobs[jobid] = Job(jobid, rule, command, threads[jobid], outputs.get(rule, []))
    for edge in dag["edges"]:
        jobs[int(edge["v"])].depends.add(int(edge["u"]))
    missing = {j for j, cmd in commands.items() if cmd} - set(jobs)
    if missing:
        raise BenchmarkError(f"dry-run jobs {sorted(missing)} are not in the --d3dag graph")

    ordered, done = [], set()
    while len(ordered) < len(jobs):
        ready = sorted(j for j in jobs if j not in done and jobs[j].depends <= done)
        if not ready:
            raise BenchmarkError("the job graph has a cycle")
        ordered.append(jobs[ready[0]])
        done.add(ready[0])
    prefix = shell_prefix(project, project_config(project, profile))
    return Plan(ordered, prefix, cores, tempfile.gettempdir())


def job_environment(env: dict[str, str], job: Job, tmpdir: str) -> dict[str, str]:
    """What Snakemake's shell() adds for a job: the thread variables and the tmpdir resource."""
    out = dict(env)
    out.update({name: str(job.threads) for name in THREAD_VARIABLES})
    out.update({name: tmpdir for name in ("TMPDIR", "TMP", "TEMP", "TEMPDIR")})
    return out


def redirect_targets(command: str) -> list[str]:
    """Files a command's shell redirections write (its logs): Snakemake creates their directories."""
    try:
        words = shlex.split(command)
    except ValueError:
        return []
    targets = []
    for i, word in enumerate(words):
        match = re.fullmatch(r"(?:\d|&)?>>?(.*)", word)
        if match and not match.group(1).startswith("&"):
            target = match.group(1) or (words[i + 1] if i + 1 < len(words) else "")
            if target:
                targets.append(target)
    return targets


def run_plain(project: Path, the_plan: Plan, env: dict[str, str], sequential: bool) -> tuple[float, dict[str, float]]:
    """Run the planned commands without Snakemake; (wall seconds, {rule: seconds})."""
    bash = shutil.which("bash") or "/bin/sh"
    todo = [job for job in the_plan.jobs if job.command]
    skipped = {job.jobid for job in the_plan.jobs if not job.command}
    finished: queue.Queue = queue.Queue()
    durations: dict[str, float] = {}
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    done, failed = set(skipped), []
    free = the_plan.cores

    def start(job: Job) -> None:
        for path in [*job.outputs, *redirect_targets(job.command)]:
            (project / path).parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [bash, "-c", f"{the_plan.prefix} {job.command}".strip()],
            cwd=project,
            env=job_environment(env, job, the_plan.tmpdir),
        )
        running[job.jobid] = (proc, time.perf_counter())
        threading.Thread(target=lambda: finished.put((job, proc.wait())), daemon=True).start()

    started = time.perf_counter()
    pending = list(todo)
    while pending or running:
        if not failed:
            for job in list(pending):
                need = min(job.threads, the_plan.cores)
                if job.depends <= done and need <= free and (not sequential or not running):
                    pending.remove(job)
                    free -= need
                    start(job)
        if not running:
            break
        job, rc = finished.get()
        _, job_started = running.pop(job.jobid)
        durations[job.rule] = time.perf_counter() - job_started
        free += min(job.threads, the_plan.cores)
        if rc != 0:
            failed.append((job, rc))
        else:
            done.add(job.jobid)
    seconds = time.perf_counter() - started
    if failed or pending:
        job, rc = failed[0] if failed else (pending[0], None)
        logs = "\n".join(f"--- {t}\n{tail(project / t)}" for t in redirect_targets(job.command or ""))
        raise BenchmarkError(f"plain command of rule {job.rule} failed (exit code {rc}):\n{job.command}\n{logs}")
    missing = [out for job in the_plan.jobs for out in job.outputs if not (project / out).exists()]
    if missing:
        raise BenchmarkError(f"the plain run did not make {missing}")
    return seconds, durations


# --------------------------------------------------------------------------------------------------
# Project state


def snapshot(project: Path) -> set[str]:
    return {str(p.relative_to(project)) for p in project.rglob("*") if ".git" not in p.relative_to(project).parts[:1]}


def reset(project: Path, pristine: set[str]) -> None:
    """Back to the state right after generation: remove FRESH_PATHS and anything created since (caches)."""
    for rel in FRESH_PATHS:
        path = project / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for rel in sorted(snapshot(project) - pristine, key=len):
        path = project / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    left = [rel for rel in FRESH_PATHS if (project / rel).exists()]
    if left:
        raise BenchmarkError(f"could not reset the project: {left} still exist")


def generate(workdir: Path) -> Path:
    from cookiecutter.main import cookiecutter

    say(f"generating the demo project from {TEMPLATE_DIR} in {workdir}")
    project = Path(cookiecutter(str(TEMPLATE_DIR), no_input=True, output_dir=str(workdir)))
    if (project / "data/raw/digits.csv").exists():
        raise BenchmarkError("generation left data/raw/digits.csv in the working tree; expected it on the DVC remote")
    return project


# --------------------------------------------------------------------------------------------------
# Report


def machine_info(env: dict[str, str]) -> dict:
    model = ""
    try:
        model = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), ""
        )
    except OSError:
        pass
    try:
        snakemake_version = subprocess.run(
            ["snakemake", "--version"], env=env, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        snakemake_version = "?"
    return {
        "nproc": cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "snakemake": snakemake_version,
        "snakemake_path": shutil.which("snakemake", path=env["PATH"]),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


def figure(name: str, samples: list[float], unit: str, target: float | None) -> dict:
    median = statistics.median(samples)
    return {
        "name": name,
        "unit": unit,
        "samples": [round(s, 4) for s in samples],
        "median": round(median, 4),
        "min": round(min(samples), 4),
        "max": round(max(samples), 4),
        "target": target,
        "pass": None if target is None else median <= target,
    }


def table(figures: list[dict]) -> str:
    def fmt(value: float, unit: str) -> str:
        return f"{value:.2f} s" if unit == "s" else f"{value:.3f}"

    rows = [("figure", "median", "min", "max", "target", "result")]
    for f in figures:
        rows.append(
            (
                f["name"],
                fmt(f["median"], f["unit"]),
                fmt(f["min"], f["unit"]),
                fmt(f["max"], f["unit"]),
                "-" if f["target"] is None else "<= " + fmt(f["target"], f["unit"]),
                "-" if f["pass"] is None else ("PASS" if f["pass"] else "FAIL"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of (Snakemake, plain) runs (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed plain runs first, to warm the OS caches (default 1)"
    )
    parser.add_argument(
        "--sequential", action="store_true", help="plain run: one job at a time (default: Snakemake's concurrency)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated project and the run logs")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    env = base_environment()
    machine = machine_info(env)
    say(
        f"{machine['nproc']} CPU(s) ({machine['cpu_model']}), Python {machine['python']}, "
        f"{machine['snakemake_path']} {machine['snakemake']}, load {machine['loadavg_start']}"
    )
    return in_workdir(
        "smkml-bench-",
        args.keep,
        lambda workdir: measure(args, env, machine, workdir),
        " (project and logs under bench-logs/)",
    )


def measure(args: argparse.Namespace, env: dict[str, str], machine: dict, workdir: Path) -> None:
    """Generate the project in `workdir`, run the warm-up and the pairs, print (and write) the results."""
    logdir = workdir / "bench-logs"
    logdir.mkdir()
    project = generate(workdir)
    pristine = snapshot(project)
    the_plan = plan(project, env)
    reset(project, pristine)
    mode = "sequential" if args.sequential else f"concurrent within {the_plan.cores} core(s)"
    say(f"plain run ({mode}), prefix: {the_plan.prefix}")
    for job in the_plan.jobs:
        if job.command:
            say(f"  {job.rule} (threads {job.threads}, after {sorted(job.depends)}): {job.command}")

    for n in range(args.warmup):
        seconds, _ = run_plain(project, the_plan, env, args.sequential)
        say(f"warm-up {n + 1}/{args.warmup}: plain run {seconds:.2f} s (not counted)")
        reset(project, pristine)

    pipeline, noop, plain, ratios, pairs = [], [], [], [], []
    for n in range(1, args.repeats + 1):
        cold, _ = timed(SNAKEMAKE, project, env, logdir / f"snakemake-cold-{n}.log")
        noop_log = logdir / f"snakemake-noop-{n}.log"
        again, output = timed(SNAKEMAKE, project, env, noop_log)
        if NOTHING_TO_DO not in output:
            raise BenchmarkError(f"the rerun did something (no '{NOTHING_TO_DO}'):\n{tail(noop_log)}")
        reset(project, pristine)
        bare, per_rule = run_plain(project, the_plan, env, args.sequential)
        reset(project, pristine)
        pipeline.append(cold)
        noop.append(again)
        plain.append(bare)
        ratios.append(cold / bare)
        pairs.append(
            {
                "snakemake_s": round(cold, 4),
                "noop_s": round(again, 4),
                "plain_s": round(bare, 4),
                "ratio": round(cold / bare, 4),
                "plain_jobs_s": {k: round(v, 4) for k, v in per_rule.items()},
            }
        )
        say(
            f"pair {n}/{args.repeats}: snakemake {cold:.2f} s, no-op {again:.2f} s, "
            f"plain {bare:.2f} s, ratio {cold / bare:.3f}"
        )

    figures = [
        figure("cold pipeline, snakemake", pipeline, "s", TARGETS["pipeline"]),
        figure("no-op rerun, snakemake", noop, "s", TARGETS["noop"]),
        figure("cold pipeline, plain commands", plain, "s", None),
        figure("ratio snakemake/plain (per pair)", ratios, "x", TARGETS["ratio"]),
    ]
    machine["loadavg_end"] = list(os.getloadavg())
    print()
    print(f"Pipeline benchmark: {args.repeats} pair(s), plain run {mode}")
    print_machine(machine)
    print(table(figures))
    met = all(f["pass"] is not False for f in figures)
    print("all targets met" if met else "some targets missed (reported, not enforced)")
    if args.json:
        result = {
            "machine": machine,
            "settings": {
                "repeats": args.repeats,
                "warmup": args.warmup,
                "plain_mode": mode,
                "profile": PROFILE,
                "template": str(TEMPLATE_DIR),
            },
            "plain_commands": [
                {"rule": j.rule, "threads": j.threads, "depends": sorted(j.depends), "command": j.command}
                for j in the_plan.jobs
                if j.command
            ],
            "shell_prefix": the_plan.prefix,
            "figures": figures,
            "pairs": pairs,
            "all_targets_met": met,
        }
        write_json(args.json, result)


if __name__ == "__main__":
    sys.exit(main())
