"""What the compute steps log, recorded (pipeline_run.record) and sent to the pipeline's MLflow run (tracking)."""

import json

import numpy as np
import pytest

from {{ cookiecutter.package_name }} import model, pipeline_run, provenance, tracking


def test_a_record_collects_what_one_step_logs_and_a_new_one_starts_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_CLUSTER_NAME", raising=False)
    path = tmp_path / "records/prepare_data.json"
    pipeline_run.record(path, "prepare", new=True, tags={"dvc.md5.data/raw/x.csv": "a" * 32})
    whole = pipeline_run.record(path, "prepare", params={"data.n_train": 3}, metrics={"m": 1},
                                artifacts=["results/plots/samples.png"])
    assert whole == pipeline_run.read_record(path)
    assert whole["tags"] == {"slurm.job_id.prepare": "77", "dvc.md5.data/raw/x.csv": "a" * 32}
    assert whole["params"] == {"data.n_train": 3}
    assert [metric[:3] for metric in whole["metrics"]] == [["m", 1.0, 0]]
    assert whole["artifacts"] == ["results/plots/samples.png"] and whole["model"] is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["prepare_data.json"], "no temporary file left"
    again = pipeline_run.record(path, "prepare", new=True)
    assert again["params"] == {} and again["artifacts"] == [] and again["metrics"] == []


def test_a_record_without_a_path_is_only_returned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    history = pipeline_run.record(None, "train", metrics=[("train_loss", 0.5, 3), ("train_loss", 0.25, 4)])
    assert [metric[:3] for metric in history["metrics"]] == [["train_loss", 0.5, 3], ["train_loss", 0.25, 4]]
    assert history["tags"] == {} and not list(tmp_path.iterdir())


def test_provenance_takes_job_ids_data_used_and_run_id_from_the_records(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "lumi")
    prepare = tmp_path / "prepare_data.json"
    pipeline_run.record(prepare, "prepare", new=True, tags={"dvc.md5.data/raw/digits.csv": "u" * 32})
    monkeypatch.setenv("SLURM_JOB_ID", "102")
    train = tmp_path / "train_model.json"
    pipeline_run.record(train, "train", new=True)
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"run_id": "r" * 32}))
    prov = {"slurm": {"job_ids": {}, "cluster": None},
            "data": {"data/raw/digits.csv": {"md5": "e" * 32, "present_md5": "d" * 32, "used_md5": None}}}
    provenance.complete(prov, run_file, [prepare, train])
    assert prov["slurm"] == {"job_ids": {"prepare": "101", "train": "102"}, "cluster": "lumi"}
    assert prov["data"]["data/raw/digits.csv"]["used_md5"] == "u" * 32
    assert prov["mlflow_run_id"] == "r" * 32


@pytest.fixture(autouse=True)
def forget_the_tracking_uri(monkeypatch):
    """Each step is a process of its own; here the steps share one: the URI `resume` sets must not reach the next
    test (monkeypatch then restores the environment)."""
    yield
    import mlflow

    mlflow.set_tracking_uri(None)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A new MLflow store with the pipeline's run; (run file, client)."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_file = tmp_path / "results/mlflow/run.json"
    tracking.start(run_file, "records", {})
    return run_file, mlflow.MlflowClient(uri)


@pytest.mark.slow
def test_published_records_land_in_the_run_with_their_history_artifacts_and_model(store, tmp_path):
    run_file, client = store
    (tmp_path / "samples.png").write_bytes(b"png")
    prepare = pipeline_run.record(tmp_path / "prepare.json", "prepare", new=True, params={"data.n_train": 3},
                                  tags={"dvc.md5.x": "a" * 32}, artifacts=["samples.png"])
    net = model.make_model(n_features=4, n_classes=3, hidden_sizes=[5])
    model.save(net, {"n_features": 4, "n_classes": 3, "hidden_sizes": [5]}, tmp_path / "model.pt")
    example = np.zeros((2, 4), dtype=np.float32)
    train = pipeline_run.record(None, "train", metrics=[("train_loss", 1.0 - epoch / 10, epoch) for epoch in range(3)],
                                model={"path": "model.pt", "example": example.tolist(), "dtype": "float32"})
    logged = tracking.publish(run_file, [tmp_path / "prepare.json", train])
    run_id = json.loads(run_file.read_text())["run_id"]
    assert logged["run_id"] == run_id and logged["model_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.n_train"] == "3" and run.data.tags["dvc.md5.x"] == "a" * 32
    history = client.get_metric_history(run_id, "train_loss")
    assert [(point.step, point.value) for point in history] == [(0, 1.0), (1, 0.9), (2, 0.8)]
    assert "samples.png" in [artifact.path for artifact in client.list_artifacts(run_id)]
    assert client.get_logged_model(logged["model_id"]).source_run_id == run_id
    assert prepare["artifacts"] == ["samples.png"]


@pytest.mark.slow
def test_a_failure_before_the_run_exists_is_marked_once_it_does(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    run_file = tmp_path / "results/mlflow/run.json"
    note = run_file.with_name("failed_before_run.json")
    said = tracking.mark_failed(run_file, "prepare_data", new_run=True, note=note)
    assert "still being created" in said and json.loads(note.read_text()) == {"step": "prepare_data", "new_run": True}
    run_id = tracking.start(run_file, "records", {})  # the step beside it creates the run after all
    assert "is marked FAILED (pipeline.failed_step=prepare_data)" in tracking.settle(run_file, note)
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["pipeline.failed_step"] == "prepare_data"
    assert not note.exists() and not run_file.exists(), "the rerun starts a run of its own"
    assert tracking.settle(run_file, note) is None
    assert "no MLflow run to mark FAILED" in tracking.mark_failed(run_file, "train_model")  # no note asked for
