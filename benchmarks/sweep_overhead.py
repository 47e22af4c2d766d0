#!/usr/bin/env python3
"""Per-member cost of a sweep against training the same members one by one with the single-run pipeline.

    python benchmarks/sweep_overhead.py                      # 4 members, 3 repeats
    python benchmarks/sweep_overhead.py --members 6 --repeats 3 --json build/bench-sweep-overhead.json

Generates the demo project once (the template's default answers: Horovod, 2 ranks, local profile), makes its training
small (`train.hyperparameters`: 1 epoch, one hidden layer of 32; the same on both sides) and prepares the data once,
untimed: `snakemake --profile profiles/local <the processed train and test files> <the run file>` (fetch, the
papermill notebook, the pipeline's MLflow run). That prepared project is copied aside, and every run below starts from an exact copy of it
(restored at the same path, so MLflow's artifact paths are the same too). The members are a random sweep over
learning rate and dropout (sweep_dag.py's `random_sweep`: every member has values of its own, none the configured
ones); their full hyper-parameters come from the project's own `smkml.sweep.members` on the validated config, as the
sweep's rules compute them. Each repeat runs, side by side, alternating which goes first:

  A. the sweep: `sweep:` written into config/config.yaml, then `snakemake --profile profiles/local`, once. It runs,
     per member, sweep_params (a local printf), start_member (the member's MLflow child run), train_member and
     evaluate_member; once per sweep, aggregate_sweep (table, plot, best member, on the parent run) and
     register_best_member. The pipeline's run (the sweep's parent) and the prepared data are reused.
  B. one by one: for each member in turn, its hyper-parameters written into config/config.yaml's
     train.hyperparameters, then the same `snakemake --profile profiles/local`, in the same project (one fresh copy
     per repeat). Each run is the single-run pipeline for that member: start_tracking (a new MLflow run: its
     parameters hold the whole config, hyper-parameters included), train_model, evaluate_model, log_training (the
     prepared data's record and the training's, sent to that run), record_provenance, register_model. prepare_data
     does not run again (its parameters and inputs are unchanged); it is allowed, and taken out in the ratios below.

Both use the same command, profile, threads (Snakemake's, from the profile: `cores: all`) and training settings;
the script checks that every member reached the same accuracy on both sides (the training is deterministic here)
and that each side ran the jobs named above and no others.

Wall time is taken around each `snakemake` command (A: one; B: one per member); per member is that over the
members. Per job, each line of Snakemake's output is stamped as it arrives (the command is unchanged; only its
output is read through a pipe): a job lasts from its "Job N:" line to its "Finished jobid: N" line. These give the
parts that are not alike on both sides, so the ratio is also given without them:

  - ratio A / B: everything, as a user would do it both ways;
  - ratio A / (B without prepare_data): until 2026-12-02 the single-run pipeline prepared the data again for every
    member (prepare_data took the new run file as an input), so B is also given without those jobs; since then it
    does not, and this equals A / B (kept for comparison with the earlier figures). A keeps its once-per-sweep steps:
    this ratio errs against the sweep, and the target is judged on it;
  - ratio (A without aggregate_sweep and register_best_member) / (B without prepare_data): the per-member
    machinery alone (B keeps log_training, record_provenance and register_model, its own per-member bookkeeping);
  - ratio A / (B without prepare_data, log_training, record_provenance and register_model): the strictest against
    the sweep:
    B keeps only what A does per member too (an MLflow run, training, evaluation) and Snakemake's own time.

Target (issue 16): per-member time of the sweep over one-by-one <= 1.10 (median over the repeats, ratios taken
within a repeat). It reports, it does not judge: a missed target exits 0; a failing run exits 1 and keeps the
workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

from harness import BenchmarkError, base_environment, in_workdir, print_machine, project_helpers, say, write_json
from pipeline import PROFILE, SNAKEMAKE, figure, generate, machine_info, project_config, table, tail, timed
from sweep_dag import random_sweep

TARGET = 1.10
SMALL_TRAINING = {"epochs": 1, "hidden_sizes": [32]}
METRIC = "accuracy"
# The jobs each side must run, and nothing else (`all` has no command).
SWEEP_JOBS = {"sweep_params", "start_member", "train_member", "evaluate_member", "aggregate_sweep",
              "register_best_member", "all"}
SINGLE_JOBS = {"start_tracking", "prepare_data", "train_model", "evaluate_model", "log_training",
               "record_provenance", "register_model", "all"}
ONCE_PER_SWEEP = {"aggregate_sweep", "register_best_member"}
PREPARATION = {"prepare_data"}  # B only, if at all: the single-run pipeline's data preparation
# B only: the single-run pipeline's own bookkeeping per member (the sweep registers only its best member, once).
SINGLE_BOOKKEEPING = {"log_training", "record_provenance", "register_model"}


def edit_config(project: Path, hyperparameters: dict | None = None, sweep: dict | None = None) -> None:
    """config/config.yaml with train.hyperparameters updated and/or `sweep:` set, as a user edits it (the file's
    comments are not kept)."""
    path = project / "config/config.yaml"
    config = yaml.safe_load(path.read_text())
    if hyperparameters is not None:
        config["train"]["hyperparameters"].update(hyperparameters)
    if sweep is not None:
        config["sweep"] = sweep
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def sweep_members(project: Path) -> dict[str, dict]:
    """{member id: full hyper-parameters} of the project's config/config.yaml, as workflow/rules/sweep.smk computes
    them: the project's smkml.sweep.members on the config validated by its schema."""
    profile = yaml.safe_load((project / PROFILE / "profile.yaml").read_text()) or {}
    sweeps, schemas = project_helpers(project, "sweep", "schemas")
    schema = schemas.node("config", "properties", "train", "properties", "hyperparameters")
    return sweeps.members(project_config(project, profile), schema)


def restore(prepared: Path, project: Path) -> None:
    """The project as it was once its data was prepared (an exact copy, file times included)."""
    shutil.rmtree(project)
    shutil.copytree(prepared, project, symlinks=True)


def run_stamped(project: Path, env: dict[str, str], log: Path) -> tuple[float, list[tuple[float, str]]]:
    """`snakemake --profile profiles/local` in the project: (wall seconds, [(seconds since start, line)]) with each
    line of its output stamped as it arrives. Raise if it fails."""
    lines: list[tuple[float, str]] = []
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(SNAKEMAKE, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        for line in proc.stdout:
            at = time.perf_counter() - started
            lines.append((at, line.rstrip("\n")))
            out.write(f"{at:9.3f} {line}")
        rc = proc.wait()
        seconds = time.perf_counter() - started
    if rc != 0:
        raise BenchmarkError(f"'{shlex.join(SNAKEMAKE)}' failed with exit code {rc} in {project}; log {log}:\n"
                             f"{tail(log)}")
    return seconds, lines


def job_seconds(lines: list[tuple[float, str]]) -> list[tuple[str, float]]:
    """[(rule, seconds)] of each finished job: from its "Job N:" line (or `jobid: N` of a rule without a message)
    to its "Finished jobid: N (Rule: ...)" line."""
    started: dict[str, float] = {}
    jobs = []
    for at, line in lines:
        begun = re.match(r"^Job (\d+): ", line) or re.match(r"^\s*jobid: (\d+)\s*$", line)
        if begun:
            started.setdefault(begun.group(1), at)
        done = re.match(r"^Finished jobid: (\d+) \(Rule: (\w+)\)", line)
        if done:
            jobs.append((done.group(2), at - started.get(done.group(1), at)))
    return jobs


def check_jobs(jobs: list[tuple[str, float]], expected: set[str], must: set[str], what: str) -> None:
    rules = {rule for rule, _ in jobs}
    if not rules <= expected or not must <= rules:
        raise BenchmarkError(f"{what} ran the jobs {sorted(rules)}; expected {sorted(must)} "
                             f"(and only jobs of {sorted(expected)})")


def metric(path: Path) -> float:
    if not path.exists():
        raise BenchmarkError(f"{path} was not made")
    return float(json.loads(path.read_text())[METRIC])


def training_line(log: Path) -> str:
    """The training log's line that says how it ran (ranks, device, threads per rank)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return next((line.strip() for line in lines if "thread(s) per rank" in line), "(no training line)")


def run_sweep(project: Path, prepared: Path, env: dict[str, str], sweep: dict, members: dict, log: Path) -> dict:
    """A: the whole sweep with one Snakemake command."""
    restore(prepared, project)
    edit_config(project, sweep=sweep)
    seconds, lines = run_stamped(project, env, log)
    jobs = job_seconds(lines)
    check_jobs(jobs, SWEEP_JOBS, SWEEP_JOBS, "the sweep (A)")
    if sum(rule == "train_member" for rule, _ in jobs) != len(members):
        raise BenchmarkError(f"the sweep trained {sum(r == 'train_member' for r, _ in jobs)} members, not "
                             f"{len(members)}; log {log}")
    return {
        "seconds": seconds,
        "jobs": jobs,
        "metrics": {m: metric(project / f"results/sweep/{m}/metrics.json") for m in members},
        "training": {m: training_line(project / f"logs/sweep/{m}/train.log") for m in members},
    }


def run_one_by_one(project: Path, prepared: Path, env: dict[str, str], members: dict, logs: Path, tag: str) -> dict:
    """B: each member in turn with the single-run pipeline, its hyper-parameters in config/config.yaml."""
    restore(prepared, project)
    result: dict = {"seconds": 0.0, "runs": [], "jobs": [], "metrics": {}, "training": {}}
    for n, (member, params) in enumerate(members.items()):
        edit_config(project, hyperparameters=params)
        log = logs / f"{tag}-member{n}.log"
        seconds, lines = run_stamped(project, env, log)
        jobs = job_seconds(lines)
        check_jobs(jobs, SINGLE_JOBS, {"start_tracking", "train_model", "evaluate_model", "log_training"},
                   f"one by one (B), member {member}")
        result["seconds"] += seconds
        result["runs"].append(round(seconds, 4))
        result["jobs"] += jobs
        result["metrics"][member] = metric(project / "results/metrics.json")
        result["training"][member] = training_line(project / "logs/train_model.log")
    return result


def seconds_of(jobs: list[tuple[str, float]], rules: set[str]) -> float:
    return sum(seconds for rule, seconds in jobs if rule in rules)


# The wall time not inside any job: Snakemake's start, parsing, DAG and scheduling (approximate where jobs overlap).
OUTSIDE_JOBS = "outside jobs"


def per_step(samples: list[dict], members: int) -> dict[str, float]:
    """Median over the repeats of each rule's seconds per member (all of the rule's jobs in a run, / members), and
    of the time outside jobs."""
    totals: dict[str, list[float]] = defaultdict(list)
    for sample in samples:
        by_rule: dict[str, float] = defaultdict(float)
        for rule, seconds in sample["jobs"]:
            by_rule[rule] += seconds
        by_rule[OUTSIDE_JOBS] = sample["seconds"] - sum(by_rule.values())
        for rule, seconds in by_rule.items():
            totals[rule].append(seconds / members)
    return {rule: round(statistics.median(values), 3) for rule, values in totals.items() if rule != "all"}


def summary(samples: dict[str, list[dict]], members: dict) -> tuple[list[dict], dict, dict, set[str]]:
    """The figures (per member and ratios, each ratio within a repeat), each side's seconds per member by step, the
    members whose metric differs between runs, and how training ran."""
    m = len(members)
    a = [s["seconds"] for s in samples["A"]]
    b = [s["seconds"] for s in samples["B"]]
    a_once = [seconds_of(s["jobs"], ONCE_PER_SWEEP) for s in samples["A"]]
    b_prep = [seconds_of(s["jobs"], PREPARATION) for s in samples["B"]]
    b_books = [seconds_of(s["jobs"], SINGLE_BOOKKEEPING) for s in samples["B"]]
    per = lambda values: [v / m for v in values]  # noqa: E731
    figures = [
        figure("A: sweep, per member", per(a), "s", None),
        figure("B: one by one, per member", per(b), "s", None),
        figure("A: its once-per-sweep steps (aggregate, register best), per member", per(a_once), "s", None),
        figure("B: its prepare_data reruns, per member", per(b_prep), "s", None),
        figure("ratio A / B", [x / y for x, y in zip(a, b)], "ratio", None),
        figure("ratio A / (B without prepare_data)", [x / (y - p) for x, y, p in zip(a, b, b_prep)], "ratio", TARGET),
        figure("ratio (A without once-per-sweep steps) / (B without prepare_data)",
               [(x - o) / (y - p) for x, o, y, p in zip(a, a_once, b, b_prep)], "ratio", None),
        figure("ratio A / (B without prepare_data, log_training, record_provenance, register_model)",
               [x / (y - p - k) for x, y, p, k in zip(a, b, b_prep, b_books)], "ratio", None),
    ]
    steps = {"A": per_step(samples["A"], m), "B": per_step(samples["B"], m)}
    runs = samples["A"] + samples["B"]
    mismatched = {member: (samples["A"][0]["metrics"][member], samples["B"][0]["metrics"][member])
                  for member in members if len({s["metrics"][member] for s in runs}) > 1}
    training = {line for s in runs for line in s["training"].values()}
    return figures, steps, mismatched, training


def measure(args: argparse.Namespace, workdir: Path) -> None:
    env = base_environment()
    machine = machine_info(env)
    say(f"{machine['nproc']} CPU(s) ({machine['cpu_model']}), load {machine['loadavg_start']}")
    logs = workdir / "bench-logs"
    logs.mkdir()
    project = generate(workdir)
    edit_config(project, hyperparameters=SMALL_TRAINING)
    processed = yaml.safe_load((project / "config/config.yaml").read_text())["data"]["processed_dir"]
    targets = [f"{processed}/train.npz", f"{processed}/test.npz", "results/mlflow/run.json"]
    say(f"untimed: preparing the data once ({shlex.join([*SNAKEMAKE, *targets])})")
    timed([*SNAKEMAKE, *targets], project, env, logs / "prepare.log")
    prepared = workdir / "prepared"
    shutil.copytree(project, prepared, symlinks=True)
    sweep = random_sweep(args.members)
    edit_config(project, sweep=sweep)
    members = sweep_members(project)
    if len(members) != args.members:
        raise BenchmarkError(f"the sweep has {len(members)} members, not {args.members}")
    for member, params in members.items():
        say(f"member {member}: {json.dumps(params, sort_keys=True)}")

    samples: dict[str, list[dict]] = {"A": [], "B": []}
    for repeat in range(args.repeats):
        for side in ("A", "B") if repeat % 2 == 0 else ("B", "A"):
            if side == "A":
                sample = run_sweep(project, prepared, env, sweep, members, logs / f"r{repeat}-A-sweep.log")
            else:
                sample = run_one_by_one(project, prepared, env, members, logs, f"r{repeat}-B")
            samples[side].append(sample)
            say(f"repeat {repeat + 1}: {side}: {sample['seconds']:.2f} s, "
                f"{sample['seconds'] / args.members:.2f} s per member")
    machine["loadavg_end"] = list(os.getloadavg())

    m = args.members
    figures, steps, mismatched, training = summary(samples, members)

    print()
    print(f"Sweep overhead: {m} members, {args.repeats} repeat(s), training {SMALL_TRAINING}")
    print_machine(machine)
    print(table(figures))
    print("\nseconds per member by step (median over the repeats; from Snakemake's job start to its finish line):")
    for side in ("A", "B"):
        print(f"  {side}: " + ", ".join(f"{rule} {seconds:.2f}" for rule, seconds in steps[side].items()))
    print(f"training ran as: {sorted(training)}")
    if mismatched:
        print(f"WARNING: members whose {METRIC} differs between runs (first A, first B): {mismatched}")
    else:
        print(f"every member reached the same {METRIC} on both sides, in every repeat")
    if args.json:
        write_json(args.json, {
            "machine": machine,
            "settings": {"members": m, "repeats": args.repeats, "small_training": SMALL_TRAINING, "sweep": sweep,
                         "command": SNAKEMAKE, "profile": PROFILE},
            "members": members,
            "figures": figures,
            "seconds_per_member_by_step": steps,
            "samples": samples,
            "metric_mismatches": mismatched,
            "training": sorted(training),
            "argv": sys.argv,
        })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=4, help="members of the sweep (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats, each one A and one B (default 3)")
    parser.add_argument("--json", type=Path, help="write the figures and every sample here")
    parser.add_argument("--keep", action="store_true", help="keep the generated project and the logs")
    args = parser.parse_args(argv)
    if args.members < 1:
        parser.error("--members must be at least 1")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    started = time.perf_counter()
    status = in_workdir("smkml-sweepovh-", args.keep, lambda workdir: measure(args, workdir),
                        " (project, prepared copy and bench-logs/)")
    say(f"done in {time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
