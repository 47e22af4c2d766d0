"""benchmarks/sweep_overhead.py without running it (a run takes minutes): its arguments, and how it reads each job's
time from Snakemake's stamped output and splits it by step."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import TEMPLATE_DIR

SCRIPT = TEMPLATE_DIR / "benchmarks/sweep_overhead.py"


@pytest.fixture(scope="module")
def overhead():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import sweep_overhead

        yield sweep_overhead
    finally:
        sys.path.remove(str(SCRIPT.parent))


def script(*args: str, tmp_path):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_help_names_every_option(tmp_path):
    result = script("--help", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--members", "--repeats", "--json", "--keep"):
        assert option in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--members", "0"], "--members must be at least 1"),
    (["--repeats", "0"], "--repeats must be at least 1"),
])
def test_bad_arguments_stop_before_generating_anything(tmp_path, args, message):
    result = script(*args, tmp_path=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_job_times_from_stamped_output(overhead):
    lines = [
        (0.5, "Job stats:"),
        (1.0, "[Tue Dec  1 20:22:03 2026]"),
        (1.0, "Job 3: Training sweep member a"),
        (1.2, "[Tue Dec  1 20:22:03 2026]"),
        (1.2, "localrule sweep_params:"),
        (1.2, "    jobid: 7"),
        (1.3, "Finished jobid: 7 (Rule: sweep_params)"),
        (6.0, "Finished jobid: 3 (Rule: train_member)"),
        (6.1, "Job 4: Training sweep member b"),
        (9.1, "Finished jobid: 4 (Rule: train_member)"),
    ]
    jobs = overhead.job_seconds(lines)
    assert [rule for rule, _ in jobs] == ["sweep_params", "train_member", "train_member"]
    assert [round(s, 3) for _, s in jobs] == [0.1, 5.0, 3.0]
    steps = overhead.per_step([{"seconds": 10.0, "jobs": jobs}], members=2)
    assert steps == {"sweep_params": 0.05, "train_member": 4.0, overhead.OUTSIDE_JOBS: 0.95}
    assert overhead.seconds_of(jobs, {"train_member"}) == pytest.approx(8.0)


def test_each_side_must_run_its_own_jobs(overhead):
    single = [("start_tracking", 1.0), ("prepare_data", 1.0), ("train_model", 1.0), ("evaluate_model", 1.0)]
    overhead.check_jobs(single, overhead.SINGLE_JOBS, {"train_model", "evaluate_model"}, "B")
    with pytest.raises(overhead.BenchmarkError, match="expected"):
        overhead.check_jobs([*single, ("train_member", 1.0)], overhead.SINGLE_JOBS, set(), "B")
    with pytest.raises(overhead.BenchmarkError, match="expected"):
        overhead.check_jobs(single[:2], overhead.SINGLE_JOBS, {"train_model"}, "B")


def test_summary_takes_each_ratio_within_a_repeat(overhead):
    def sample(seconds, jobs, accuracy=0.9):
        return {"seconds": seconds, "jobs": jobs, "metrics": {"m1": accuracy, "m2": 0.8}, "training": {"m1": "t"}}

    a = [("train_member", 4.0), ("train_member", 4.0), ("aggregate_sweep", 2.0)]
    b = [("prepare_data", 5.0), ("train_model", 4.0), ("register_model", 1.0)] * 2
    samples = {"A": [sample(20.0, a), sample(24.0, a)], "B": [sample(40.0, b), sample(30.0, b, accuracy=0.7)]}
    figures, steps, mismatched, training = overhead.summary(samples, {"m1": {}, "m2": {}})
    medians = {f["name"]: f["median"] for f in figures}
    assert medians["A: sweep, per member"] == 11.0 and medians["B: one by one, per member"] == 17.5
    assert medians["ratio A / B"] == pytest.approx((20 / 40 + 24 / 30) / 2, abs=1e-4)
    assert medians["ratio A / (B without prepare_data)"] == pytest.approx((20 / 30 + 24 / 20) / 2, abs=1e-4)
    target = next(f for f in figures if f["target"] is not None)
    assert target["name"] == "ratio A / (B without prepare_data)" and target["target"] == 1.10
    assert steps["A"]["aggregate_sweep"] == 1.0 and steps["B"]["prepare_data"] == 5.0
    assert mismatched == {"m1": (0.9, 0.9)} and training == {"t"}
