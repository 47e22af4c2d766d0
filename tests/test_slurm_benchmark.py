"""benchmarks/slurm_pipeline.py and its what-if runner benchmarks/flat_status_checks.py without a cluster run (one
takes minutes): the arguments, the per-job times read from sacct, and the fixed status-check wait of the what-if,
against the Slurm plugin's real executor class."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import TEMPLATE_DIR

BENCHMARKS = TEMPLATE_DIR / "benchmarks"
PIPELINE = BENCHMARKS / "slurm_pipeline.py"
FLAT = BENCHMARKS / "flat_status_checks.py"


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import flat_status_checks
        import slurm_pipeline

        yield SimpleNamespace(flat=flat_status_checks, pipeline=slurm_pipeline)
    finally:
        sys.path.remove(str(BENCHMARKS))


def run(script, *args: str, cwd):
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_help_names_the_what_if_options(tmp_path):
    result = run(PIPELINE, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--repeats", "--epochs", "--what-if-status", "--what-if-args", "--keep", "--json"):
        assert option in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--what-if-status", "0"], "--what-if-status must be more than 0 and at most 180 seconds"),
    (["--what-if-status", "181"], "--what-if-status must be more than 0 and at most 180 seconds"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--what-if-args", "--groups 'a=b"], "--what-if-args \"--groups 'a=b\" cannot be split as a shell would"),
    (["--as-generated", "--epochs", "5"], "--as-generated takes no --config items, --train-gpus or --epochs"),
])
def test_bad_arguments_stop_before_anything_starts(tmp_path, args, message):
    result = run(PIPELINE, *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    ([], "flat_status_checks.py SECONDS"),
    (["soon", "--version"], "SECONDS must be a number, not 'soon'"),
    (["0", "--version"], "SECONDS must be more than 0 and at most 180, not 0"),
])
def test_flat_runner_refuses_a_bad_interval(tmp_path, args, message):
    result = run(FLAT, *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr


def test_flat_runner_runs_snakemake_with_its_arguments(tmp_path):
    result = run(FLAT, "2", "--version", cwd=tmp_path)
    import snakemake

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == snakemake.__version__


def test_flat_status_checks_fix_the_wait_after_every_check(modules, monkeypatch):
    """The plugin's own check runs (its jobs pass through) and the wait it chose is replaced by the fixed one."""
    import snakemake_executor_plugin_slurm as slurm

    async def plugin_check(self, active_jobs):  # what the plugin does: yields the running jobs, grows the wait
        for job in active_jobs:
            if job != "done":
                yield job
        self.next_seconds_between_status_checks = 40

    monkeypatch.setattr(slurm.Executor, "check_active_jobs", plugin_check)
    modules.flat.flat_status_checks(1.5)
    assert slurm.Executor.check_active_jobs is not plugin_check
    executor = SimpleNamespace(next_seconds_between_status_checks=None)

    async def one_round():
        return [job async for job in slurm.Executor.check_active_jobs(executor, ["a", "done", "b"])]

    assert asyncio.run(one_round()) == ["a", "b"]
    assert executor.next_seconds_between_status_checks == 1.5


def test_slurm_job_seconds_from_the_plugin_logs_and_sacct(modules, tmp_path):
    for name, job in (("rule_prepare_data", 4), ("rule_train_model", 5), ("group_pipeline", 6)):
        (tmp_path / f"logs/slurm/{name}").mkdir(parents=True)
        (tmp_path / f"logs/slurm/{name}/{job}.log").write_text("")
    calls = []

    class Cluster:
        def run(self, cmd, **kwargs):
            calls.append(cmd)
            return SimpleNamespace(stdout="4|9\n5|12\n6|20\n99|3\n")

    assert modules.pipeline.slurm_job_seconds(Cluster(), tmp_path) == {
        "prepare_data": 9.0, "train_model": 12.0, "group_pipeline": 20.0
    }
    assert calls[0][:6] == ["sacct", "-X", "-n", "-P", "-o", "JobID,ElapsedRaw"]
    assert sorted(calls[0][-1].split(",")) == ["4", "5", "6"]
    assert modules.pipeline.slurm_job_seconds(Cluster(), tmp_path / "none") == {}


GROUP_OUTPUT = """\
[Wed Dec  2 13:46:52 2026]
Job 2: Pulling data/raw/digits.csv from the DVC remote
[Wed Dec  2 13:46:53 2026]
Finished jobid: 2 (Rule: fetch_data)
[Wed Dec  2 13:46:58 2026] Group job pipeline (jobs in lexicogr. order):

    [Wed Dec  2 13:46:58 2026]
    Job 5: Evaluating results/model/model.pt on the held-out split
    Reason: Missing output files: results/metrics.json

    [Wed Dec  2 13:46:58 2026]
    Job 1: Executing notebooks/prepare.ipynb with papermill

    [Wed Dec  2 13:46:58 2026]
    Job 3: Training with horovod on 1 rank(s)
Job 9a3ed766-c200-5726-9e3a-2ad95a979508 has been submitted with SLURM jobid 4 (log: logs/slurm/group_x/4.log).
[Wed Dec  2 13:47:43 2026]
Finished jobid: 1 (Rule: prepare_data)
[Wed Dec  2 13:47:43 2026]
Finished jobid: 3 (Rule: train_model)
[Wed Dec  2 13:47:43 2026]
Finished jobid: 5 (Rule: evaluate_model)
"""


def test_timeline_of_a_job_group_from_snakemake_output(modules):
    """A job group's members are listed indented under the group's line (Snakemake 9.27's output, trimmed): each
    is timed from the group's submission, and the group's Slurm job is seen finished with its last member."""
    timeline = modules.pipeline.snakemake_timeline(GROUP_OUTPUT)
    assert timeline == {"fetch_data": 1.0, "evaluate_model": 45.0, "prepare_data": 45.0, "train_model": 45.0}
    group = "group_pipeline_evaluate_model_prepare_data_train_model"
    assert modules.pipeline.seen_finished(group, timeline) == 45.0
    assert modules.pipeline.seen_finished("prepare_data", {"prepare_data": 19.0}) == 19.0
    assert math.isnan(modules.pipeline.seen_finished("group_other_rule", timeline))  # no member known
