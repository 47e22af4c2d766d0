"""The reviewer's comparison: tolerances, the printed table, the lock check."""

import json

import pytest

from {{ cookiecutter.package_name }} import reproduce

REFERENCE = {"accuracy": 0.97, "n_test": 360, "per_class": {"0": {"f1-score": 0.98, "support": 36}}}
TOLERANCES = {"n_test": 0, "accuracy": 0.01, "per_class.*.support": 0, "per_class.*": 0.03}


def test_identical_metrics_reproduce():
    rows = reproduce.compare(REFERENCE, REFERENCE, TOLERANCES)
    assert [r["metric"] for r in rows] == ["accuracy", "n_test", "per_class.0.f1-score", "per_class.0.support"]
    assert all(r["ok"] and r["difference"] == 0 for r in rows)
    assert reproduce.table(rows).endswith("REPRODUCED: all 4 metrics within tolerance")


def test_first_matching_tolerance_wins_and_unlisted_metrics_must_match_exactly():
    assert reproduce.tolerance_for("per_class.3.support", TOLERANCES) == 0
    assert reproduce.tolerance_for("per_class.3.recall", TOLERANCES) == 0.03
    assert reproduce.tolerance_for("macro_f1", TOLERANCES) == 0


def test_a_metric_outside_tolerance_fails_and_is_named():
    rerun = json.loads(json.dumps(REFERENCE))
    rerun["accuracy"] = 0.95
    rows = reproduce.compare(REFERENCE, rerun, TOLERANCES)
    failed = [r for r in rows if not r["ok"]]
    assert [r["metric"] for r in failed] == ["accuracy"]
    assert failed[0]["difference"] == pytest.approx(-0.02)
    text = reproduce.table(rows)
    assert "NOT REPRODUCED: 1 of 4 metrics outside tolerance: accuracy" in text
    assert any(line.startswith("accuracy") and "FAIL" in line and "-0.020000" in line for line in text.splitlines())


def test_a_metric_missing_from_the_rerun_fails():
    rerun = {k: v for k, v in REFERENCE.items() if k != "accuracy"}
    rows = reproduce.compare(REFERENCE, rerun, TOLERANCES)
    assert [(r["metric"], r["note"]) for r in rows if not r["ok"]] == [("accuracy", "missing in rerun")]


def test_environment_check_names_drifted_packages(tmp_path, capsys):
    lock = tmp_path / "requirements.lock"
    lock.write_text("pytest==0.0.1\nnot-a-real-package-xyz==1.0\n# comment\n")
    assert reproduce.main(["check-env", "--lock", str(lock)]) == 1
    out = capsys.readouterr().out
    assert "pytest" in out and "locked 0.0.1" in out
    assert "not-a-real-package-xyz" in out and "not installed" in out
    assert reproduce.main(["check-env", "--lock", str(lock), "--warn-only"]) == 0


def test_local_build_tags_do_not_count_as_drift():
    assert reproduce.public_version("2.13.0+cpu") == reproduce.public_version("2.13.0")


def test_missing_reference_is_a_clear_error(tmp_path, capsys):
    assert reproduce.main(["check-reference", "--reference", str(tmp_path / "none.json")]) == 1
    assert "make reference" in capsys.readouterr().err
