"""Issue 15, faults: nothing lost, nothing silently wrong.

A failed step keeps its evidence and fails the pipeline's MLflow run, naming the step; the rerun after the fix gets
a run of its own, FINISHED. An MLflow store deleted or replaced after a run (or while it runs) is followed by a new
run with one warning line, never by a pipeline wedged on a stale results/mlflow/run.json, and
registered_model.json never names a version the store does not have.

One generated project (default answers, local profile; 1 epoch), taken through the steps a user would go through:
a bug in the notebook, the fix, the store deleted. Real papermill, real MLflow (the project's SQLite store).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import generate, project_helper, run

pytestmark = pytest.mark.e2e

SNAKEMAKE = ["snakemake", "--profile", "profiles/local"]
BUG = "a user's bug in the notebook"
KEPT = "logs/prepare_data.ipynb"
STALE = "does not have (deleted or replaced)"


def client(store: Path):
    """MLflow's client on the SQLite store `store` (a project directory or a database file). MLflow keeps one
    connection pool per URI for the process: a copy of a store that was deleted and made anew is read under a
    name of its own, never through a connection to the deleted file."""
    import mlflow

    database = store / "mlflow.db" if store.is_dir() else store
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}")


def store_copy(project: Path, directory: Path) -> Path:
    """A copy of the project's MLflow database in `directory`, to read under a name of its own (see client())."""
    copy = directory / "mlflow.db"
    shutil.copy(project / "mlflow.db", copy)
    return copy


def pipeline_runs(project: Path, store: Path | None = None) -> list:
    found = client(store or project)
    experiment = found.get_experiment_by_name(project.name)
    return found.search_runs([experiment.experiment_id]) if experiment else []


def run_file(project: Path) -> dict:
    return json.loads((project / "results/mlflow/run.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    path = generate(tmp_path_factory.mktemp("faults"))
    config = path / "config/config.yaml"
    text, count = re.subn(r"epochs: \d+", "epochs: 1", config.read_text())
    assert count == 1
    config.write_text(text)
    return path


@pytest.fixture(scope="module")
def failed(project):
    """A cell of the notebook raises (a user's edit gone wrong): the pipeline stops in prepare_data."""
    notebook = project / "notebooks/prepare.ipynb"
    original = notebook.read_text()
    broken = nbformat.reads(original, as_version=4)
    cell = next(cell for cell in broken.cells if "data.split(" in cell.source)
    cell.source = f"raise ValueError({BUG!r})\n{cell.source}"
    nbformat.write(broken, notebook)
    try:
        result = run(SNAKEMAKE, project, check=False)
    finally:
        notebook.write_text(original)
    return result, result.stdout + result.stderr


@pytest.mark.reliability(
    tried="The prepare notebook raises",
    sees="the step fails; the message names logs/prepare_data.ipynb",
    left="the executed notebook with the traceback and parameters in logs/",
)
def test_the_failed_notebook_is_kept_with_its_traceback(project, failed):
    result, output = failed
    assert result.returncode != 0
    assert f"step prepare_data failed; the executed notebook, with the error, is kept in {KEPT}" in output
    kept = nbformat.read(project / KEPT, as_version=4)
    errors = [out for cell in kept.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert [(error.ename, error.evalue) for error in errors] == [("ValueError", BUG)]
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(errors[0].traceback))  # without the terminal colours
    assert f"raise ValueError({BUG!r})" in traceback
    assert any("injected-parameters" in cell.metadata.get("tags", []) for cell in kept.cells)
    # Snakemake removed the failed job's outputs; the evidence is outside them.
    assert not (project / "results/notebooks/prepare.ipynb").exists()


@pytest.mark.reliability(
    tried="The prepare notebook raises (MLflow)",
    sees="the MLflow run FAILED, tag pipeline.failed_step=prepare_data",
    left="the FAILED run, kept",
)
def test_the_failed_run_is_marked_failed_naming_the_step(project, failed):
    _, output = failed
    (only,) = pipeline_runs(project)
    assert only.info.status == "FAILED"
    assert only.data.tags["pipeline.failed_step"] == "prepare_data"
    assert f"MLflow run {only.info.run_id} is marked FAILED (pipeline.failed_step=prepare_data)" in output
    assert not (project / "results/mlflow/run.json").exists(), "the rerun must start a run of its own"


@pytest.fixture(scope="module")
def fixed(project, failed):
    """The notebook fixed (restored), the pipeline run again."""
    (failed_run,) = pipeline_runs(project)
    run(SNAKEMAKE, project)
    return failed_run.info.run_id


@pytest.mark.reliability(
    tried="The rerun after fixing a failed notebook",
    sees="a new FINISHED run; the failed one stays FAILED",
    left="the kept notebook removed",
)
def test_the_rerun_after_the_fix_has_its_own_finished_run(project, fixed):
    runs = {found.info.run_id: found for found in pipeline_runs(project)}
    new = run_file(project)["run_id"]
    assert set(runs) == {fixed, new}
    assert runs[new].info.status == "FINISHED" and "pipeline.failed_step" not in runs[new].data.tags
    assert runs[fixed].info.status == "FAILED", "the failed run stays as it was"
    assert runs[new].data.params["data.n_train"] == "1437", "the new run has the prepare step's record too"
    assert (project / "results/notebooks/prepare.ipynb").is_file()
    assert not (project / KEPT).exists(), "the evidence of the earlier failure is gone once the step succeeded"


@pytest.mark.reliability(
    tried="The MLflow store loses the run while a step runs",
    sees="the step says the run is not in the store",
    left="no stale results/mlflow/run.json",
)
def test_a_step_whose_run_left_the_store_retires_the_run_file(project, fixed, tmp_path):
    """The store lost the run while the pipeline ran: the failing step's handler (the command the rules run) says
    so and removes the run file, so that the next run starts a new MLflow run."""
    stale = tmp_path / "run.json"
    stale.write_text(json.dumps({**run_file(project), "run_id": "0" * 32}))
    result = run([sys.executable, "-m", f"{project.name.replace('-', '_')}.tracking", "fail", "--run-file",
                  str(stale), "--step", "train_model"], project, PYTHONPATH=str(project / "src"))
    assert (f"error: step train_model failed; MLflow run {'0' * 32} is not in the store sqlite:///mlflow.db "
            "(deleted or replaced); the next run starts a new MLflow run") in result.stdout
    assert not stale.exists()


def package_module(project: Path, name: str):
    """A module of the project's package that needs only the standard library (e.g. redaction), by its path."""
    import importlib.util

    path = project / "src" / project.name.replace("-", "_") / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"faults_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.reliability(
    tried="A replaced MLflow store, or a registered version deleted from it",
    sees="one warning before planning; the stale record is retired",
    left="nothing stale: a new run or registration follows",
)
def test_what_the_store_does_not_have_is_retired_before_planning(project, fixed, tmp_path, monkeypatch):
    """What the workflow asks before planning (workflow/lib/smkml/mlflow_store.py), on copies of the records: the
    project's store has the run and the version (nothing retired); a copy of it where the version was deleted (in
    the UI) retires the registration only; another store at the same URI (replaced) retires both."""
    import mlflow

    mlflow_store = project_helper(project, "mlflow_store")
    redact = package_module(project, "redaction").redact_uri
    records = {name: (project / "results/mlflow" / name).read_text() for name in ("run.json", "registered_model.json")}
    run_path, registered_path = (tmp_path / name for name in records)

    def retire(where: Path) -> list[str]:
        for name, text in records.items():
            (tmp_path / name).write_text(text)
        monkeypatch.chdir(where)
        return mlflow_store.retire_stale(str(run_path), [str(registered_path)], "sqlite:///mlflow.db", redact)

    assert retire(project) == []
    assert run_path.exists() and registered_path.exists()

    version_deleted = tmp_path / "version-deleted"
    version_deleted.mkdir()
    shutil.copy(project / "mlflow.db", version_deleted / "mlflow.db")
    registered = json.loads(records["registered_model.json"])
    mlflow.MlflowClient(f"sqlite:///{version_deleted}/mlflow.db").delete_model_version(
        registered["name"], str(registered["version"]))
    (warning,) = retire(version_deleted)
    assert warning.startswith(f"{registered_path} names version 1 of model {project.name}, which the store")
    assert STALE in warning and "registering the model again" in warning
    assert run_path.exists() and not registered_path.exists()

    replaced = tmp_path / "replaced"
    replaced.mkdir()
    mlflow.MlflowClient(f"sqlite:///{replaced}/mlflow.db").create_experiment(project.name)
    (warning,) = retire(replaced)
    assert STALE in warning and "starting a new MLflow run" in warning
    assert not run_path.exists() and not registered_path.exists()


@pytest.fixture(scope="module")
def store_deleted(project, fixed, tmp_path_factory):
    """After a finished run, the MLflow store (database and artifacts) is deleted; the user runs the pipeline.
    Returns the old run id, the output and a copy of the new store's database (see client())."""
    before = run_file(project)["run_id"]
    (project / "mlflow.db").unlink()
    shutil.rmtree(project / "mlruns")
    result = run(SNAKEMAKE, project)
    return before, result.stdout + result.stderr, store_copy(project, tmp_path_factory.mktemp("new-store"))


@pytest.mark.reliability(
    tried="The MLflow store deleted after a run",
    sees="one warning line; the rerun makes a new FINISHED run",
    left="a new store",
)
def test_a_deleted_store_is_followed_by_a_new_run_and_one_warning(project, store_deleted):
    before, output, store = store_deleted
    warnings = [line for line in output.splitlines() if STALE in line]
    assert warnings == [f"warning: results/mlflow/run.json names MLflow run {before}, which the store "
                        f"sqlite:///mlflow.db {STALE}: starting a new MLflow run (every step that logs to it runs "
                        "again)"], output[-3000:]
    (new,) = pipeline_runs(project, store)
    assert new.info.run_id == run_file(project)["run_id"] != before
    assert new.info.status == "FINISHED"


@pytest.mark.reliability(
    tried="The MLflow store deleted after a run (registry)",
    sees="registered_model.json names a version that exists",
    left="a new registration",
)
def test_the_registration_names_a_version_the_store_has(project, store_deleted):
    registered = json.loads((project / "results/mlflow/registered_model.json").read_text())
    version = client(store_deleted[2]).get_model_version(registered["name"], str(registered["version"]))
    assert version.run_id == registered["run_id"] == run_file(project)["run_id"]
    assert registered["version"] == 1, "a new store: its first version"


# Every rule that logs to an MLflow run marks that run FAILED, naming itself, when its command fails. Rules that
# take a run file but do not log to that run: start_member (it creates the member's run from the parent: a failure
# leaves no member run) and train_pack (each member's commands inside the pack mark the member's own run; see
# smkml/sweep.py member_script).
LOGS_ELSEWHERE = {"start_member", "train_pack"}


def test_every_rule_that_logs_to_a_run_marks_it_failed_when_it_fails(template_dir):
    rules = {}
    for path in sorted((template_dir / "rules_lib/rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", path.read_text(), flags=re.M):
            name = re.match(r"rule (\w+):", block)
            if name and re.search(r"^\s+(run|parent)=", block, re.M) and "shell:" in block:
                rules[name.group(1)] = block
    assert {"prepare_data", "train_model", "evaluate_model", "record_provenance", "register_model",
            "aggregate_sweep", "register_best_member"} <= set(rules), sorted(rules)
    for name, block in rules.items():
        if name in LOGS_ELSEWHERE:
            continue
        assert re.search(rf"tracking fail .*--step {name}\b", block.replace('"\n        "', "")), name


@pytest.fixture(scope="module")
def evaluation_failed(project, store_deleted, tmp_path_factory):
    """A step after training fails: evaluation, here because matplotlib refuses the environment's plotting backend
    (MPLBACKEND left over from another tool). Returns the run id, the output and a copy of the store's database."""
    run_id = run_file(project)["run_id"]
    result = run([*SNAKEMAKE, "--forcerun", "evaluate_model"], project, check=False, MPLBACKEND="no-such-backend")
    return run_id, result, store_copy(project, tmp_path_factory.mktemp("evaluation-failed"))


@pytest.mark.reliability(
    tried="A step after training fails (evaluation)",
    sees="the step's error; the MLflow run FAILED, tag pipeline.failed_step=evaluate_model",
    left="the run, kept with its model (results/mlflow/run.json stays)",
)
def test_a_failed_evaluation_marks_the_run_failed_and_keeps_it(project, evaluation_failed):
    run_id, result, store = evaluation_failed
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Error in rule evaluate_model" in output, output[-3000:]
    assert "no-such-backend" in (project / "logs/evaluate_model.log").read_text()
    assert f"MLflow run {run_id} is marked FAILED (pipeline.failed_step=evaluate_model)" in output, output[-3000:]
    found = client(store).get_run(run_id)
    assert found.info.status == "FAILED" and found.data.tags["pipeline.failed_step"] == "evaluate_model"
    assert run_file(project)["run_id"] == run_id, "the run holds the model: the rerun logs into it"
    assert not (project / "results/metrics.json").exists()


@pytest.mark.reliability(
    tried="The rerun after a failed evaluation",
    sees="the same run FINISHED; pipeline.previous_failed_step=evaluate_model",
    left="metrics, a new registered version",
)
def test_the_rerun_after_a_failed_evaluation_finishes_the_same_run(project, evaluation_failed, tmp_path):
    run_id, _, _ = evaluation_failed
    rerun = run(SNAKEMAKE, project)
    output = rerun.stdout + rerun.stderr
    assert "(Rule: evaluate_model)" in output, output[-3000:]
    assert "(Rule: train_model)" not in output and "(Rule: prepare_data)" not in output
    found = client(store_copy(project, tmp_path)).get_run(run_id)
    assert found.info.status == "FINISHED"
    assert "pipeline.failed_step" not in found.data.tags
    assert found.data.tags["pipeline.previous_failed_step"] == "evaluate_model"
    assert "test_accuracy" in found.data.metrics and (project / "results/metrics.json").is_file()
    registered = json.loads((project / "results/mlflow/registered_model.json").read_text())
    assert registered["run_id"] == run_id
