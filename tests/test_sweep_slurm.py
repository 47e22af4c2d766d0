"""A sweep through Slurm with the LUMI profile, on the suite's mini-LUMI cluster: members are packed (a handful of
Slurm jobs, not one per member, counted from sacct), a member whose training is killed fails alone (its pack goes on,
the other pack finishes), and the rerun trains only that member.

Size: the issue asks for 50 members. On this suite's 2-core machine every member costs about 10-15 s (its MLflow
child run, one epoch of training, evaluation: three Python starts), and packs train their members one after
another, so 50 members would take over 10 minutes. This test runs 6 members (a seed ensemble), packed 3 per job
(`pack.members_per_job: 3` in profiles/lumi/cluster.yaml, the user's setting; the default is 64) and still shows what
the issue asks: 2 packs, a member killed mid-way, the others finishing, and the rerun. Its time is mostly Slurm's
fixed cost per job (the plugin's status checks, the Snakemake inside each job: 5 jobs) and the members' Python starts;
fewer members would save little. Measured: 12.3 min and 16.6 min with the machine loaded by other sessions (load 4-9, members
took about a minute each); an idle machine should take a few minutes. The count for 1 000 members (18 Slurm jobs)
comes from benchmarks/sweep_dag.py.

Killed how: the member's training process, not the pack's Slurm job. A job cancelled with `scancel` is reported by
sacct as "CANCELLED by <uid>", which snakemake-executor-plugin-slurm 2.8.0 does not recognise, so Snakemake waits
for it forever (tried; docs/sweeps.md says what to do); a pack stopped by its time limit (TIMEOUT) is recognised.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import command_env, generate, project_helper, run
from test_slurm_pipeline import ACCOUNT, cluster_env

pytestmark = pytest.mark.slurm

MEMBERS = 6
PER_JOB = 3
OUTPUTS = ("model/model.pt", "metrics.json", "predictions.csv")
# Snakemake's line for each Slurm job it submits for a pack.
SUBMITTED_PACK = re.compile(r"has been submitted with SLURM jobid \d+ \(log: \S+/rule_train_pack/")


def configure(project) -> None:
    """What a user edits: a seed ensemble of tiny members, and how many the lumi profile packs into one job."""
    path = project / "config/config.yaml"
    config = yaml.safe_load(path.read_text())
    config["train"]["checkpoint_every"] = 0
    config["train"]["hyperparameters"].update(epochs=1, hidden_sizes=[32])
    config["resources"]["default"]["mem_mb"] = 2000
    config["resources"]["train_model"]["runtime"] = 10
    config["sweep"] = {"seeds": MEMBERS}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path = project / "profiles/lumi/cluster.yaml"
    cluster = yaml.safe_load(path.read_text())
    cluster["cluster"]["pack"]["members_per_job"] = PER_JOB
    path.write_text(yaml.safe_dump(cluster, sort_keys=False))


def finished(project, member: str) -> bool:
    return all((project / "results/sweep" / member / name).is_file() for name in OUTPUTS)


def pack_jobs(project) -> dict[str, list[str]]:
    """pack -> its Slurm job ids (submission order), from the plugin's kept logs (logs/slurm/rule_train_pack/...)."""
    jobs: dict[str, list[str]] = {}
    for log in sorted((project / "logs/slurm/rule_train_pack").rglob("*.log"), key=lambda p: int(p.stem)):
        pack = next(part for part in log.relative_to(project).parts if part.startswith("pack"))
        jobs.setdefault(pack, []).append(log.stem)
    return jobs


def project_jobs(cluster, project, since: str) -> list[dict[str, str]]:
    """Every Slurm job (allocations) that ran in the project's folder since `since`, from the accounting database."""
    fields = ["JobID", "JobName", "State", "WorkDir", "Partition"]
    out = cluster.run(["sacct", "-a", "-X", "-n", "-P", "-S", since, f"--format={','.join(fields)}"]).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.count("|") == len(fields) - 1]
    return [row for row in rows if row["WorkDir"].rstrip("/") == str(project)]


def training_process(member: str) -> int | None:
    """The pid of the member's training process (`python -m <package>.train ... --out-dir results/sweep/<member>/model`),
    which this test's pipeline started inside its Slurm job."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"digits_classifier.train" in argv and f"results/sweep/{member}/model".encode() in argv:
            return int(proc.name)
    return None


@pytest.fixture(scope="module")
def packed_sweep(slurm_cluster, tmp_path_factory):
    project = generate(tmp_path_factory.mktemp("sweepslurm"), cluster="lumi", slurm_account=ACCOUNT,
                       training_backend="torch_ddp")
    configure(project)
    # Which members each pack trains: the project's own helpers, as its workflow computes them.
    sweep = project_helper(project, "sweep")
    config = project_helper(project, "schemas").validate(yaml.safe_load((project / "config/config.yaml").read_text()))
    planned = sweep.packs(sweep.members(config), PER_JOB)
    assert len(planned) == MEMBERS // PER_JOB
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    env = command_env(**cluster_env(slurm_cluster))
    # First run: --retries 0, so the failed pack is not retried within this run (the profile retries once); the
    # rerun below shows the resume.
    first = subprocess.Popen(
        ["snakemake", "--profile", "profiles/lumi", "--keep-going", "--retries", "0"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    # The first pack to start: once its first member finished, its second member's training is killed (as the
    # kernel's OOM killer or a crashing library would): that member fails, the pack goes on with its third.
    killed = None
    deadline = time.monotonic() + 900
    while killed is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        for pack, members in planned.items():
            if finished(project, members[0]) and (pid := training_process(members[1])):
                os.kill(pid, signal.SIGKILL)
                killed = (pack, members[1])
                break
    output, _ = first.communicate(timeout=1200)
    assert killed, f"no pack was seen training its second member\n{output[-4000:]}"
    before = {p.parent.name: p.stat().st_mtime for p in (project / "results/sweep").glob("*/metrics.json")}
    again = run(["snakemake", "--profile", "profiles/lumi"], project, timeout=900, **cluster_env(slurm_cluster))
    return project, slurm_cluster, since, first.returncode, output, killed, before, again


@pytest.mark.reliability(
    tried="A sweep member's training killed inside a packed Slurm job",
    sees="that member fails alone; its pack's job fails at the end; the others finish",
    left="the finished members; the rerun trains only the failed one",
)
def test_a_failed_member_fails_only_itself_and_the_rerun_trains_only_it(packed_sweep):
    project, cluster, since, first_rc, output, (pack, member), before, again = packed_sweep
    assert first_rc != 0, output[-3000:]  # the pack with the failed member failed the first run
    assert member not in before and len(before) == MEMBERS - 1, before  # every other member finished
    packs = pack_jobs(project)
    assert len(packs) == MEMBERS // PER_JOB, packs
    # The rerun ran only the failed pack again, and that pack trained only the failed member.
    record = json.loads((project / f"results/sweep/packs/{pack}.json").read_text())
    assert record["trained"] == [member] and record["failed"] == [] and record["skipped"] == PER_JOB - 1, record
    assert len(SUBMITTED_PACK.findall(output)) == MEMBERS // PER_JOB  # each pack once in the first run
    assert len(SUBMITTED_PACK.findall(again.stdout + again.stderr)) == 1
    for name, mtime in before.items():  # nothing finished was trained or evaluated again
        assert (project / "results/sweep" / name / "metrics.json").stat().st_mtime == mtime, name
    rows = (project / "results/sweep/aggregate.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + MEMBERS


def test_members_were_packed_into_a_handful_of_slurm_jobs(packed_sweep):
    project, cluster, since, *_ = packed_sweep
    jobs = project_jobs(cluster, project, since)
    by_id = {row["JobID"]: row for row in jobs}
    packed = [job for ids in pack_jobs(project).values() for job in ids]
    # prepare_data, the two packs, the failed pack once more on the rerun, and the aggregate: 5 Slurm jobs for 6
    # members, none per member (start, train and evaluate of each member ran inside its pack's job).
    assert len(packed) == MEMBERS // PER_JOB + 1, pack_jobs(project)
    logged = {log.stem: log.relative_to(project / "logs/slurm").parts[0]
              for log in (project / "logs/slurm").rglob("*.log")}
    assert set(by_id) == set(logged), (jobs, logged)  # every Slurm job of the project, from sacct
    assert sorted(logged.values()) == ["rule_aggregate_sweep", "rule_prepare_data", *["rule_train_pack"] * 3], logged
    states = sorted(by_id[job]["State"] for job in packed)
    assert states == ["COMPLETED", "COMPLETED", "FAILED"], jobs
    assert all(by_id[job]["Partition"] == "small-g" for job in packed), jobs
    assert not (project / "logs/slurm/rule_train_member").exists()
