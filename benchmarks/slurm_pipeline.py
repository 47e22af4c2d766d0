"""Benchmark the demo pipeline on the test cluster: `snakemake --profile profiles/lumi` against one sbatch script.

    python benchmarks/slurm_pipeline.py [--repeats N] [--json PATH]     (`make bench-slurm` runs it; needs root)

Starts the test suite's mini-LUMI Slurm cluster (tests/slurm_cluster.py: two LUMI-G-shaped nodes, accounting) in a
short temporary directory, generates the demo project for LUMI (the template's default answers, with cluster `lumi`
and the cluster's project account) and compares, pair by pair in one run:

  A. `snakemake --profile profiles/lumi`: every step a Slurm job as the profile submits it (bookkeeping steps
     locally), from the project as generation leaves it;
  B. the same steps from the same fresh state, in one hand-written sbatch script (one allocation, the commands in
     order), as a careful user would write it.

The script's commands are not written down here: they come from Snakemake itself (`-n -p --forceall` for the
command lines, `--d3dag` for the order), with the project's own shell prefix, as in benchmarks/pipeline.py. Each
Slurm job's threads are those the Snakemake inside the job gives it (a dry run with the options the plugin starts
it with, through the logger plugin in benchmarks/plugins/). The allocation asks for what Snakemake's training job
asks for (its sbatch options, read from an untimed `--verbose` Snakemake run), so the training runs with the same
srun or mpirun layout, the same threads and the same resources.

Each ratio is A over B of the same pair; the order within a pair alternates. The table gives median, min and max.
It reports, it does not judge: a missed target still exits 0. A failing run exits non-zero.

Per Slurm job it also gives how long the job ran (sacct's elapsed time) against when Snakemake saw it finished:
the difference is the plugin's wait for its next status check. `--what-if-status SECONDS` runs side A with that
wait fixed at SECONDS (benchmarks/flat_status_checks.py), a measurement of what the plugin's growing waits cost,
and `--what-if-args "ARGS"` adds Snakemake arguments to side A (e.g. job groups); neither is the profile as typed,
and the table then says so and reports the ratio without its target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from flat_status_checks import MAX_WAIT_S  # benchmarks/flat_status_checks.py
from harness import BenchmarkError, base_environment, in_workdir, print_machine, write_json, say  # benchmarks/harness.py
from pipeline import (  # benchmarks/pipeline.py
    PLUGINS_DIR,
    THREAD_VARIABLES,
    Plan,
    check_output,
    figure,
    machine_info,
    plan,
    redirect_targets,
    reset,
    snapshot,
    table,
    tail,
    timed,
)

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TEMPLATE_DIR / "tests"))
from slurm_cluster import MiniLumi, ensure_installed  # noqa: E402  (the test suite's cluster, public API only)

PROFILE = "profiles/lumi"
FLAT_STATUS = Path(__file__).resolve().parent / "flat_status_checks.py"
TARGET = 1.5  # Snakemake / one sbatch script
# Both backends run as generated (1 GPU, the profile's srun launcher; one Horovod rank starts as an MPI singleton,
# see workflow/lib/smkml/slurm_launch.py --alone). --config and --train-gpus change that for a run.
TEST_CONFIG: dict[str, list[str]] = {"horovod": [], "torch_ddp": []}
TEST_GPUS: dict[str, int | None] = {"horovod": None, "torch_ddp": None}
# As in tests/test_slurm_pipeline.py: Open MPI refuses root unless told.
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
# sbatch options of Snakemake's training job that are about the job's bookkeeping, not its resources.
BOOKKEEPING = {"--job-name", "--output", "--comment", "-D", "--chdir", "--export", "--parsable"}
FINAL_OUTPUT = "results/mlflow/registered_model.json"
# A unix socket path must stay short (see MiniLumi): the cluster gets its own directory under /tmp if needed.
CLUSTER_DIR_MAX = 60


def backends() -> list[str]:
    return json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())["training_backend"]


# --------------------------------------------------------------------------------------------------
# What Snakemake submits


def jobstep_threads(project: Path, env: dict[str, str], config: list[str]) -> dict[str, int]:
    """{rule: threads} as the Snakemake inside each Slurm job gives them: the plugin starts it with `--cores all
    --force-use-threads` and the profile's config files. (The submitting Snakemake's own dry run gives the training
    1 thread; the job then runs it with 2 here: cpus per rank times the ranks, capped at the node's cores.)"""
    profile = yaml.safe_load((project / PROFILE / "profile.yaml").read_text()) or {}
    configfiles = profile.get("configfile") or profile.get("configfiles") or []
    configfiles = [configfiles] if isinstance(configfiles, str) else list(configfiles)
    command = ["snakemake", "--cores", "all", "--force-use-threads", "--forceall", "--dry-run"]
    command += [*(["--configfiles", *configfiles] if configfiles else []), *(["--config", *config] if config else [])]
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS_DIR), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="smkml-jobinfo-") as tmp:
        path = Path(tmp) / "jobs.jsonl"
        check_output([*command, "--logger", "jobinfo", "--logger-jobinfo-path", str(path)], project, env)
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not records:
        raise BenchmarkError(f"Snakemake reported no jobs to the jobinfo logger ({PLUGINS_DIR})")
    return {r["rule"]: int(r["threads"]) for r in records}


def sbatch_calls(output: str) -> dict[str, list[str]]:
    """{rule: sbatch words} from the slurm plugin's `sbatch call: ...` lines (Snakemake --verbose), without the
    wrapped command."""
    calls = {}
    for line in output.splitlines():
        _, found, call = line.partition("sbatch call: ")
        if not found:
            continue
        call = call.split(" --wrap=", 1)[0].strip()
        if call.endswith(" /dev/stdin"):
            call = call[: -len(" /dev/stdin")]
        words = shlex.split(call)
        rule = next((w[len("rule_") :] for w in words if w.startswith("rule_")), None)
        if rule:
            calls[rule] = words
    return calls


def resource_options(words: list[str]) -> list[str]:
    """The resource options of an sbatch call (account, partition, time, memory, nodes, tasks, CPUs, GPUs, extra),
    without the words that name or place the job."""
    options, i = [], 1 if words[:1] == ["sbatch"] else 0
    while i < len(words):
        word = words[i]
        name = word.split("=", 1)[0]
        takes_value = "=" not in word and i + 1 < len(words) and not words[i + 1].startswith("-")
        if name in BOOKKEEPING:
            i += 2 if takes_value else 1
            continue
        options.append(word)
        if takes_value:
            options.append(words[i + 1])
            i += 1
        i += 1
    return options


def minutes(words: list[str]) -> int:
    for i, word in enumerate(words):
        if word in ("-t", "--time") and i + 1 < len(words):
            return int(words[i + 1])
        if word.startswith("--time="):
            return int(word.split("=", 1)[1])
    return 0


def allocation_options(calls: dict[str, list[str]], rule: str) -> list[str]:
    """One allocation for the whole pipeline: what `rule` (the training) asks for, with a time limit that covers
    every job (the sum of their limits)."""
    if rule not in calls:
        raise BenchmarkError(f"Snakemake submitted no job for rule {rule} (submitted: {sorted(calls)})")
    options = resource_options(calls[rule])
    total = sum(minutes(words) for words in calls.values())
    out, i = [], 0
    while i < len(options):
        if options[i] in ("-t", "--time"):
            i += 2
            continue
        if not options[i].startswith("--time="):
            out.append(options[i])
        i += 1
    return [*out, "-t", str(total)] if total else out


# --------------------------------------------------------------------------------------------------
# The hand-written script


def batch_script(
    project: Path, the_plan: Plan, options: list[str], marker: Path, stamps: Path, output: Path
) -> str:
    """One sbatch script that runs the planned commands in order (what Snakemake runs for each job, with the same
    prefix, threads and TMPDIR), and records when each starts."""
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=smkml-plain",
        f"#SBATCH --output={output}",
    ]
    # Options one per #SBATCH line, a value on the line of its option.
    i = 0
    while i < len(options):
        word = options[i]
        if "=" not in word and i + 1 < len(options) and not options[i + 1].startswith("-"):
            lines.append(f"#SBATCH {word} {shlex.quote(options[i + 1])}")
            i += 2
        else:
            lines.append(f"#SBATCH {shlex.quote(word)}")
            i += 1
    lines += [
        "# The demo pipeline's steps in order, each command as `snakemake -n -p --forceall` prints it.",
        f"trap 'echo $? > {marker}' EXIT",
        the_plan.prefix,
        f"cd {shlex.quote(str(project))}",
        "export " + " ".join(f"{name}={shlex.quote(the_plan.tmpdir)}" for name in ("TMPDIR", "TMP", "TEMP", "TEMPDIR")),
        f'stamp() {{ echo "$1 $(date +%s.%N)" >> {shlex.quote(str(stamps))}; }}',
    ]
    for job in the_plan.jobs:
        if not job.command:
            continue
        dirs = sorted({str(Path(p).parent) for p in [*job.outputs, *redirect_targets(job.command)]} - {"."})
        threads = " ".join(f"{name}={job.threads}" for name in THREAD_VARIABLES)
        lines += [
            "",
            f"# {job.rule} ({job.threads} thread(s))",
            f"stamp {job.rule}",
            *([f"mkdir -p {shlex.join(dirs)}"] if dirs else []),
            f"(export {threads}; {job.command})",
        ]
    lines += ["", "stamp end", ""]
    return "\n".join(lines)


def wait_for_marker(marker: Path, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while not marker.exists() or not marker.read_text().strip():
        if time.perf_counter() > deadline:
            raise BenchmarkError(f"the sbatch script did not finish within {timeout:.0f} s")
        time.sleep(0.05)
    return time.perf_counter()


def wait_idle(cluster: MiniLumi, timeout: float = 180) -> None:
    """Until no job of the cluster is pending, running or completing (not timed)."""
    deadline = time.monotonic() + timeout
    while cluster.run(["squeue", "-h", "-o", "%i"], check=False, timeout=30).stdout.split():
        if time.monotonic() > deadline:
            raise BenchmarkError(f"jobs still in the queue after {timeout:.0f} s")
        time.sleep(0.5)


def run_script(
    cluster: MiniLumi, project: Path, the_plan: Plan, options: list[str], env: dict[str, str], logdir: Path, tag: str
) -> tuple[float, dict[str, float]]:
    """Submit the script and time it from sbatch's start until the script's last line ran; (seconds, per step)."""
    marker, stamps = logdir / f"sbatch-{tag}.rc", logdir / f"sbatch-{tag}.stamps"
    output = logdir / f"sbatch-{tag}.out"
    script = logdir / f"sbatch-{tag}.sh"
    script.write_text(batch_script(project, the_plan, options, marker, stamps, output))
    started = time.perf_counter()
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(script)], cwd=project, env=env, capture_output=True, text=True
    )
    if submitted.returncode != 0:
        raise BenchmarkError(f"sbatch {script} failed:\n{submitted.stdout}{submitted.stderr}")
    ended = wait_for_marker(marker, timeout=1800)
    wait_idle(cluster)
    rc = marker.read_text().strip()
    if rc != "0":
        job = submitted.stdout.strip()
        raise BenchmarkError(f"the sbatch script (job {job}) exited {rc}; {output}:\n{tail(output)}")
    missing = [out for job in the_plan.jobs for out in job.outputs if not (project / out).exists()]
    if missing:
        raise BenchmarkError(f"the sbatch script did not make {missing}")
    times = [line.split() for line in stamps.read_text().splitlines()]
    steps = {name: float(times[i + 1][1]) - float(at) for i, (name, at) in enumerate(times[:-1])}
    return ended - started, steps


def snakemake_timeline(output: str) -> dict[str, float]:
    """{rule: seconds from Snakemake starting the job (submitting it, for a Slurm job) until it saw the job
    finished}, from the timestamps of Snakemake's own output (one-second resolution)."""
    started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    stamp = None
    for line in output.splitlines():
        match = re.match(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", line.strip())
        if match:
            stamp = time.mktime(time.strptime(match.group(1), "%a %b %d %H:%M:%S %Y"))
            continue
        # A group job lists its members indented, each with its own stamp and "Job N:" line.
        job = re.match(r"^Job (\d+): ", line.strip()) or re.match(r"^\s*jobid: (\d+)\s*$", line)
        if job and stamp is not None:
            started.setdefault(job.group(1), stamp)
        done = re.match(r"^Finished jobid: (\d+) \(Rule: (\w+)\)", line)
        if done and stamp is not None and done.group(1) in started:
            seconds[done.group(2)] = stamp - started[done.group(1)]
    return seconds


def keep_logs(project: Path, to: Path) -> str:
    """Copy the run's logs/ out of the project (the reset removes them); the training log's line that says how it
    ran (ranks, device, threads per rank), so that both runs can be checked to train alike."""
    shutil.copytree(project / "logs", to, dirs_exist_ok=True)
    log = project / "logs/train_model.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return next((line.strip() for line in lines if "thread(s) per rank" in line), "(no training line)")


def slurm_job_seconds(cluster: MiniLumi, project: Path) -> dict[str, float]:
    """{rule: seconds the rule's Slurm job ran (sacct's ElapsedRaw)}, the job ids from the plugin's log files
    (logs/slurm/rule_<rule>/<job id>.log, or group_<group>/ for a job group; the profile keeps them)."""
    ids = {log.stem: log.parent.name.removeprefix("rule_") for log in (project / "logs/slurm").glob("*/*.log")}
    if not ids:
        return {}
    out = cluster.run(["sacct", "-X", "-n", "-P", "-o", "JobID,ElapsedRaw", "-j", ",".join(ids)], timeout=60).stdout
    seconds = {}
    for line in out.splitlines():
        job, _, elapsed = line.partition("|")
        if job in ids and elapsed.strip().isdigit():
            seconds[ids[job]] = float(elapsed)
    return seconds


def seen_finished(job: str, timeline: dict[str, float]) -> float:
    """When Snakemake saw a Slurm job finished: the rule's time in the timeline, or for a job group
    (group_<group>_<member rules>) the latest of its members'; NaN when unknown."""
    if job in timeline:
        return timeline[job]
    members = [seconds for rule, seconds in timeline.items() if job.startswith("group_") and f"_{rule}" in job]
    return max(members, default=float("nan"))


def run_snakemake(
    cluster: MiniLumi, project: Path, command: list[str], env: dict[str, str], log: Path
) -> tuple[float, str]:
    seconds, output = timed(command, project, env, log)
    wait_idle(cluster)
    if not (project / FINAL_OUTPUT).exists():
        raise BenchmarkError(f"Snakemake did not make {FINAL_OUTPUT}; log {log}")
    return seconds, output


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of (Snakemake, sbatch script) runs (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--backend",
        choices=backends(),
        default=backends()[0],
        help="the project's training backend (default: the template's default answer, %(default)s)",
    )
    parser.add_argument(
        "--config",
        nargs="*",
        metavar="KEY=VALUE",
        help="Snakemake --config items for both runs (default: what the Slurm tests give the backend: "
        + "; ".join(f"{b}: {' '.join(c) or 'none'}" for b, c in TEST_CONFIG.items())
        + "); `--config` alone: none",
    )
    parser.add_argument(
        "--train-gpus",
        type=int,
        metavar="N",
        help="resources.train_model.gpus written into config/config.yaml, one rank per GPU (default: what the Slurm "
        "tests give the backend: " + "; ".join(f"{b}: {g or 'as generated'}" for b, g in TEST_GPUS.items()) + ")",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="train.hyperparameters.epochs written into config/config.yaml (default: as generated); longer training "
        "shows how the fixed cost of each Slurm job weighs against steps of realistic length",
    )
    parser.add_argument(
        "--as-generated",
        action="store_true",
        help="no --config and no config/config.yaml change: the project exactly as generated",
    )
    parser.add_argument(
        "--what-if-status",
        type=float,
        metavar="SECONDS",
        help="a what-if, not the profile as typed: the Slurm plugin's waits between status checks fixed at SECONDS "
        "(benchmarks/flat_status_checks.py) for side A",
    )
    parser.add_argument(
        "--what-if-args",
        metavar="ARGS",
        help="a what-if, not the profile as typed: more Snakemake arguments for side A (one string, split as a shell "
        "would), e.g. job groups",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated project, the cluster and the logs")
    args = parser.parse_args(argv)
    if args.what_if_status is not None and not 0 < args.what_if_status <= MAX_WAIT_S:
        parser.error(f"--what-if-status must be more than 0 and at most {MAX_WAIT_S} seconds")
    if args.what_if_args is not None:
        try:
            shlex.split(args.what_if_args)
        except ValueError as error:
            parser.error(f"--what-if-args {args.what_if_args!r} cannot be split as a shell would: {error}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.as_generated and (args.config or args.train_gpus is not None or args.epochs is not None):
        parser.error("--as-generated takes no --config items, --train-gpus or --epochs")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.train_gpus is not None and args.train_gpus < 0:
        parser.error("--train-gpus must be 0 or more")
    if args.config is None:
        args.config = [] if args.as_generated else TEST_CONFIG.get(args.backend, [])
    if args.train_gpus is None and not args.as_generated:
        args.train_gpus = TEST_GPUS.get(args.backend)
    if os.geteuid() != 0:
        parser.error("the test cluster (tests/slurm_cluster.py) runs slurmd and needs root")

    env = base_environment()
    machine = machine_info(env)
    say(
        f"{machine['nproc']} CPU(s) ({machine['cpu_model']}), Python {machine['python']}, "
        f"{machine['snakemake_path']} {machine['snakemake']}, load {machine['loadavg_start']}"
    )
    try:
        ensure_installed()
    except RuntimeError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return in_workdir(
        "smkml-sbench-",
        args.keep,
        lambda workdir: with_cluster(args, env, machine, workdir),
        " (project, cluster and logs under bench-logs/)",
    )


def with_cluster(args: argparse.Namespace, env: dict[str, str], machine: dict, workdir: Path) -> None:
    cluster_dir = workdir / "cluster"
    if len(str(cluster_dir)) > CLUSTER_DIR_MAX:
        cluster_dir = Path(tempfile.mkdtemp(prefix="mlumi-", dir="/tmp"))
    say(f"starting mini-LUMI in {cluster_dir}")
    cluster = MiniLumi(cluster_dir)
    try:
        cluster.start()
    except RuntimeError as error:
        raise BenchmarkError(f"mini-LUMI did not start: {error}") from error
    say(f"mini-LUMI up in {cluster.start_seconds:.1f} s")
    try:
        measure(args, cluster, env, machine, workdir)
    finally:
        cluster.stop()
        if cluster_dir.parent != workdir and not args.keep:
            shutil.rmtree(cluster_dir, ignore_errors=True)


def measure(args: argparse.Namespace, cluster: MiniLumi, env: dict[str, str], machine: dict, workdir: Path) -> None:
    from cookiecutter.main import cookiecutter

    logdir = workdir / "bench-logs"
    logdir.mkdir()
    # No Slurm variables of an enclosing job; the cluster's SLURM_CONF; its client wrappers first on PATH (they pin
    # its config inside jobs too), then this interpreter's bin/.
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env.update({**cluster.env, **MPI_ENV, "PATH": os.pathsep.join([str(cluster.bin_dir), env["PATH"]])})
    answers = {"cluster": "lumi", "slurm_account": cluster.account, "training_backend": args.backend}
    say(f"generating the demo project ({answers}) in {workdir}")
    project = Path(cookiecutter(str(TEMPLATE_DIR), no_input=True, output_dir=str(workdir), extra_context=answers))
    if args.train_gpus is not None or args.epochs is not None:
        config_path = project / "config/config.yaml"
        config = yaml.safe_load(config_path.read_text())
        if args.train_gpus is not None:
            config["resources"]["train_model"]["gpus"] = args.train_gpus
            say(f"config/config.yaml: resources.train_model.gpus = {args.train_gpus}")
        if args.epochs is not None:
            config["train"]["hyperparameters"]["epochs"] = args.epochs
            say(f"config/config.yaml: train.hyperparameters.epochs = {args.epochs}")
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    pristine = snapshot(project)
    extra = ["--config", *args.config] if args.config else []
    snakemake = ["snakemake", "--profile", PROFILE, *extra]
    say(f"Snakemake: {shlex.join(snakemake)}")
    # Side A of a what-if, and the words that say which one: in the log, the table's title and the JSON.
    timed_snakemake, what_ifs = snakemake, []
    if args.what_if_status is not None:
        timed_snakemake = [sys.executable, str(FLAT_STATUS), f"{args.what_if_status:g}", *snakemake[1:]]
        what_ifs.append(f"status checks every {args.what_if_status:g} s")
    if args.what_if_args:
        timed_snakemake = [*timed_snakemake, *shlex.split(args.what_if_args)]
        what_ifs.append(args.what_if_args)
    what_if = f" ({'; '.join(what_ifs)})" if what_ifs else ""
    if what_if:
        say(f"what-if{what_if}, side A runs: {shlex.join(timed_snakemake)}")

    the_plan = plan(project, env, PROFILE, args.config)
    reset(project, pristine)
    # Untimed: a verbose Snakemake run shows each job's sbatch call (the allocation copies the training's), and
    # warms the OS caches for both sides.
    say("warm-up: snakemake --verbose (not counted), for the sbatch options of each job")
    seconds, output = run_snakemake(cluster, project, [*snakemake[:3], "--verbose", *extra], env, logdir / "warmup.log")
    calls = sbatch_calls(output)
    options = allocation_options(calls, "train_model")
    say(f"warm-up took {seconds:.1f} s; Snakemake submitted {sorted(calls)}")
    for rule, words in sorted(calls.items()):
        say(f"  {rule}: {shlex.join(resource_options(words))}")
    say(f"one allocation: sbatch {shlex.join(options)}")
    # Jobs that Snakemake submits run with the threads their own Snakemake gives them; the others (local rules)
    # with those of the submitting Snakemake.
    in_job = jobstep_threads(project, env, args.config)
    for job in the_plan.jobs:
        if job.rule in calls:
            job.threads = in_job[job.rule]
    for job in the_plan.jobs:
        if job.command:
            say(f"  {job.rule} (threads {job.threads}): {job.command[:160]}")
    reset(project, pristine)

    smk, plain, ratios, pairs = [], [], [], []
    for n in range(1, args.repeats + 1):
        order = ["snakemake", "sbatch"] if n % 2 else ["sbatch", "snakemake"]
        result: dict = {"order": order, "loadavg_before": list(os.getloadavg())}
        for side in order:
            if side == "snakemake":
                log = logdir / f"snakemake-{n}.log"
                result["snakemake_s"], output = run_snakemake(cluster, project, timed_snakemake, env, log)
                result["snakemake_jobs_s"] = snakemake_timeline(output)
                result["slurm_jobs_s"] = slurm_job_seconds(cluster, project)
            else:
                result["sbatch_s"], result["sbatch_steps_s"] = run_script(
                    cluster, project, the_plan, options, env, logdir, str(n)
                )
            result[f"{side}_training"] = keep_logs(project, logdir / f"{side}-{n}-logs")
            reset(project, pristine)
        if result["snakemake_training"] != result["sbatch_training"]:
            say(f"WARNING: the runs trained differently: {result['snakemake_training']} / {result['sbatch_training']}")
        result["ratio"] = result["snakemake_s"] / result["sbatch_s"]
        smk.append(result["snakemake_s"])
        plain.append(result["sbatch_s"])
        ratios.append(result["ratio"])
        pairs.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()})
        pairs[-1]["sbatch_steps_s"] = {k: round(v, 3) for k, v in result["sbatch_steps_s"].items()}
        say("  per step, snakemake (start to seen finished) / sbatch script: " + ", ".join(
            f"{rule} {result['snakemake_jobs_s'].get(rule, float('nan')):.0f}/{sec:.1f} s"
            for rule, sec in result["sbatch_steps_s"].items()
        ))
        say("  per Slurm job, the job's own run (sacct) / seen finished by snakemake: " + ", ".join(
            f"{name} {sec:.0f}/{seen_finished(name, result['snakemake_jobs_s']):.0f} s"
            for name, sec in sorted(result["slurm_jobs_s"].items())
        ))
        say(
            f"pair {n}/{args.repeats} ({' then '.join(order)}): snakemake {result['snakemake_s']:.2f} s, "
            f"sbatch script {result['sbatch_s']:.2f} s, ratio {result['ratio']:.3f}, "
            f"load {os.getloadavg()[0]:.2f}"
        )

    figures = [
        figure("pipeline, snakemake --profile lumi" + (" (what-if)" if what_if else ""), smk, "s", None),
        figure("pipeline, one sbatch script", plain, "s", None),
        # A what-if is not the profile as typed: its ratio is reported without the target.
        figure("ratio snakemake/sbatch (per pair)", ratios, "x", None if what_if else TARGET),
    ]
    machine["loadavg_end"] = list(os.getloadavg())
    machine["cluster_start_s"] = round(cluster.start_seconds or 0, 2)
    print()
    print(
        f"Slurm pipeline benchmark (mini-LUMI): {args.repeats} pair(s), backend {args.backend}, "
        f"--config {' '.join(args.config) or '(none)'}, train_model gpus {args.train_gpus or 'as generated'}"
        + (f", epochs {args.epochs}" if args.epochs is not None else "")
        + (f"\nWHAT-IF, not the profile as typed{what_if}" if what_if else "")
    )
    print_machine(machine)
    print(table(figures))
    met = all(f["pass"] is not False for f in figures)
    if what_if:
        print("a what-if: the ratio is not judged against the target (that is for the profile as typed)")
    else:
        print("target met" if met else "target missed (reported, not enforced)")
    if args.json:
        result = {
            "machine": machine,
            "settings": {
                "repeats": args.repeats,
                "backend": args.backend,
                "config": args.config,
                "train_gpus": args.train_gpus,
                "epochs": args.epochs,
                "profile": PROFILE,
                "template": str(TEMPLATE_DIR),
                "snakemake_command": timed_snakemake,
                "what_if_status_s": args.what_if_status,
                "what_if_args": args.what_if_args,
                "allocation": options,
                "snakemake_sbatch_calls": {rule: resource_options(words) for rule, words in calls.items()},
            },
            "plain_commands": [
                {"rule": j.rule, "threads": j.threads, "command": j.command} for j in the_plan.jobs if j.command
            ],
            "shell_prefix": the_plan.prefix,
            "figures": figures,
            "pairs": pairs,
            "target_met": None if what_if else met,
        }
        write_json(args.json, result)


if __name__ == "__main__":
    sys.exit(main())
