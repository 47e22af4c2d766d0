#!/usr/bin/env python3
"""Sweeps at scale: Snakemake's DAG and dry run for 1 000 and 10 000 members, and the Slurm jobs they become.

    python benchmarks/sweep_dag.py                         # 1 000 and 10 000 members, 3 repeats
    python benchmarks/sweep_dag.py --members 1000 10000 --repeats 3 --json build/bench-sweep-dag.json
    python benchmarks/sweep_dag.py --unpacked 1000          # also the per-member rules (no packing) at 1 000

Generates the demo project for LUMI (the template's default answers, cluster `lumi`, a placeholder account) once,
then, for each size, writes a sweep of that many members (`random: {count: N}` over learning rate and dropout: every
member has its own values, the worst case for checking them) and times, as a user types it,

    snakemake -n --profile profiles/lumi --configfile config/config.yaml profiles/lumi/cluster.yaml <sweep.yaml>

(the profile's own cluster description is named again because a `--configfile` on the command line replaces the
profile's). That is the whole cost of a dry run: Snakemake's start, parsing the workflow with the sweep's members,
building the DAG and printing every job. The same command without a sweep gives the fixed part. Sizes alternate
within a repeat; the ratio 10 000 / 1 000 is taken within each repeat.

Slurm submissions are counted from the dry run's jobs: the dry run's job table (jobs per rule), less the jobs of
local rules (the workflow's `localrules:` and rules without a command such as `all`, read from Snakemake's own parse
of the project with the same config files, untimed). Every other job is one sbatch call of the slurm executor
(no job arrays are configured). Nothing is submitted; no cluster is needed.

Targets (issue 16): dry run <= 20 s at 10 000 members; ratio 10 000 / 1 000 <= 12; <= 20 Slurm submissions at 1 000.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from harness import BenchmarkError, base_environment, in_workdir, print_machine, say, write_json
from pipeline import figure, machine_info, table, timed

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
ACCOUNT = "project_465000001"  # a placeholder in LUMI's format: nothing is submitted
TARGET_SECONDS = 20.0
TARGET_RATIO = 12.0
TARGET_SUBMISSIONS = 20


def random_sweep(members: int) -> dict:
    """Config `sweep:` of `members` random members over learning rate and dropout: every member has values of its own
    (also used by sweep_overhead.py)."""
    return {
        "random": {
            "count": members,
            "seed": 0,
            "space": {"learning_rate": {"low": 0.0001, "high": 0.1, "log": True},
                      "dropout": {"low": 0.0, "high": 0.5}},
        }
    }


def sweep_file(project: Path, members: int, per_job: int | None) -> Path:
    """A config file with a sweep of `members` random members (and, with per_job, the cluster's packing)."""
    extra = {"sweep": random_sweep(members)}
    name = f"sweep-{members}.yaml"
    if per_job is not None:
        cluster = yaml.safe_load((project / "profiles/lumi/cluster.yaml").read_text())
        cluster["cluster"]["pack"] = {"members_per_job": per_job}
        extra.update(cluster)
        name = f"sweep-{members}-per-job-{per_job}.yaml"
    path = project / name
    path.write_text(yaml.safe_dump(extra))
    return path


# Snakemake's own parse of the project (its API, as `snakemake` runs it): the rules that run where Snakemake runs
# (`localrules:`, and rules without a command such as `all`). Printed as JSON; run in the project's folder.
LOCAL_RULES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=Path("workflow/Snakefile"),
                            config_settings=ConfigSettings(configfiles=[Path(p) for p in sys.argv[1:]]))._workflow
    print(json.dumps(sorted(r.name for r in workflow.rules if r.name in workflow._localrules or r.norun)))
"""


def configfiles(sweep: Path | None) -> list[str]:
    return ["config/config.yaml", "profiles/lumi/cluster.yaml", *([str(sweep)] if sweep else [])]


def local_rules(project: Path, env: dict[str, str], sweep: Path | None) -> set[str]:
    result = subprocess.run([sys.executable, "-c", LOCAL_RULES, *configfiles(sweep)], cwd=project, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchmarkError(f"reading the local rules failed:\n{result.stderr[-3000:]}")
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def job_table(output: str) -> dict[str, int]:
    """The dry run's job table (`job  count` ... `total`): jobs per rule."""
    table = output.split("Job stats:", 1)[-1]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M) if rule != "total"}


def dry_run(project: Path, env: dict[str, str], log: Path, sweep: Path | None, local: set[str]) -> dict:
    command = ["snakemake", "-n", "--profile", "profiles/lumi", "--configfile", *configfiles(sweep)]
    seconds, output = timed(command, project, env, log)
    jobs = job_table(output)
    submitted = {rule: count for rule, count in jobs.items() if rule not in local}
    return {"seconds": seconds, "submissions": sum(submitted.values()), "submitted_by_rule": submitted,
            "local_jobs": sum(jobs.values()) - sum(submitted.values())}


def measure(args: argparse.Namespace, workdir: Path) -> None:
    from cookiecutter.main import cookiecutter

    env = base_environment()
    env.pop("SBATCH_ACCOUNT", None)
    machine = machine_info(env)
    logs = workdir / "bench-logs"
    logs.mkdir()
    answers = {"cluster": "lumi", "slurm_account": ACCOUNT}
    say(f"generating the demo project ({answers}) in {workdir}")
    project = Path(cookiecutter(str(TEMPLATE_DIR), no_input=True, output_dir=str(workdir), extra_context=answers))
    sizes = sorted(args.members)
    sweeps = {n: sweep_file(project, n, None) for n in sizes}
    unpacked = {n: sweep_file(project, n, 1) for n in args.unpacked}
    say("untimed: the local rules of each configuration (Snakemake's parse), and a warm-up dry run")
    local = {size: local_rules(project, env, path) for size, path in [("none", None), *sweeps.items()]}
    local.update({f"{n} unpacked": local_rules(project, env, path) for n, path in unpacked.items()})
    say(f"local rules: {sorted(local['none'])}")
    dry_run(project, env, logs / "warmup.log", None, local["none"])
    samples: dict[str, list[dict]] = {"none": [], **{str(n): [] for n in sizes},
                                      **{f"{n} unpacked": [] for n in args.unpacked}}
    for repeat in range(args.repeats):
        order = ["none", *sizes] if repeat % 2 == 0 else [*reversed(sizes), "none"]
        for size in order:
            result = dry_run(project, env, logs / f"r{repeat}-{size}.log", None if size == "none" else sweeps[size],
                             local[size])
            samples[str(size)].append(result)
            say(f"repeat {repeat + 1}: {size} members: {result['seconds']:.2f} s, {result['submissions']} Slurm "
                f"submissions {result['submitted_by_rule']}, {result['local_jobs']} local jobs")
        for size in args.unpacked:
            result = dry_run(project, env, logs / f"r{repeat}-{size}-unpacked.log", unpacked[size],
                             local[f"{size} unpacked"])
            samples[f"{size} unpacked"].append(result)
            say(f"repeat {repeat + 1}: {size} members, per-member rules: {result['seconds']:.2f} s, "
                f"{result['submissions']} Slurm submissions {result['submitted_by_rule']}")
    machine["loadavg_end"] = list(os.getloadavg())

    figures = [figure("dry run, no sweep", [r["seconds"] for r in samples["none"]], "s", None)]
    for size in sizes:
        target = TARGET_SECONDS if size == 10000 else None
        figures.append(figure(f"dry run, {size} members", [r["seconds"] for r in samples[str(size)]], "s", target))
    for size in args.unpacked:
        figures.append(figure(f"dry run, {size} members, per-member rules",
                              [r["seconds"] for r in samples[f"{size} unpacked"]], "s", None))
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        ratios = [b["seconds"] / a["seconds"] for a, b in zip(samples[str(small)], samples[str(large)])]
        figures.append(figure(f"ratio {large} / {small} members", ratios, "ratio",
                              TARGET_RATIO if (small, large) == (1000, 10000) else None))
    submissions = {
        key: statistics.median(r["submissions"] for r in values) for key, values in samples.items() if values
    }
    print()
    print_machine(machine)
    print(table(figures))
    print("\nSlurm submissions counted from the dry run (its jobs, less those of local rules):")
    for key, count in submissions.items():
        target = f" (target <= {TARGET_SUBMISSIONS}: {'PASS' if count <= TARGET_SUBMISSIONS else 'FAIL'})" \
            if key == "1000" else ""
        print(f"  {key:>16} members: {count:g}{target}  {samples[key][0]['submitted_by_rule']}")
    if args.json:
        write_json(args.json, {"machine": machine, "figures": figures, "submissions": submissions,
                               "samples": samples, "command": sys.argv})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[1000, 10000], help="sweep sizes (default 1000 10000)")
    parser.add_argument("--unpacked", type=int, nargs="*", default=[],
                        help="sizes also measured with the per-member rules (pack.members_per_job: 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures and every sample here")
    parser.add_argument("--keep", action="store_true", help="keep the generated project and the logs")
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(n < 1 for n in [*args.members, *args.unpacked]):
        parser.error("--repeats and the sizes must be >= 1")
    started = time.perf_counter()
    status = in_workdir("smkml-sweepdag-", args.keep, lambda workdir: measure(args, workdir))
    say(f"done in {time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
