"""A generated project's whole pipeline on this machine, once per training backend, 2 ranks each."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import nbformat
import numpy as np
import pytest
import yaml

from conftest import generate, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["horovod", "torch_ddp"])
def finished(request, tmp_path_factory):
    """Generate a project, run its pipeline and report; keep the first run's console output."""
    backend = request.param
    path = generate(tmp_path_factory.mktemp(backend), training_backend=backend)
    first = run(["snakemake", "--profile", "profiles/local"], path)
    run(["snakemake", "--profile", "profiles/local", "--report", "results/report.html"], path)
    return backend, path, first


def test_every_step_ran_and_data_came_from_dvc(finished):
    _, path, first = finished
    for rule in ("fetch_data", "start_tracking", "prepare_data", "train_model", "evaluate_model", "log_training",
                 "record_provenance", "register_model"):
        assert f"(Rule: {rule})" in first.stderr + first.stdout
    dvcfile = yaml.safe_load((path / "data/raw/digits.csv.dvc").read_text())
    digest = hashlib.md5((path / "data/raw/digits.csv").read_bytes()).hexdigest()
    assert digest == dvcfile["outs"][0]["md5"]


def test_held_out_accuracy(finished):
    _, path, _ = finished
    metrics = json.loads((path / "results/metrics.json").read_text())
    assert metrics["accuracy"] >= 0.90
    assert metrics["n_test"] == 360
    assert sorted(metrics["per_class"], key=int) == [str(i) for i in range(10)]
    assert all(0.0 <= scores["f1-score"] <= 1.0 for scores in metrics["per_class"].values())


def test_training_used_two_ranks_of_the_chosen_backend(finished):
    backend, path, _ = finished
    history = json.loads((path / "results/model/history.json").read_text())
    assert history["backend"] == backend
    assert history["world_size"] == 2
    assert len(history["history"]) == history["params"]["epochs"]
    log = (path / "logs/train_model.log").read_text()
    assert f"training with {backend} on 2 rank(s)" in log


def test_executed_notebook_is_kept_with_injected_parameters(finished):
    _, path, _ = finished
    notebook = nbformat.read(path / "results/notebooks/prepare.ipynb", as_version=4)
    injected = [cell for cell in notebook.cells if "injected-parameters" in cell.metadata.get("tags", [])]
    assert len(injected) == 1
    assert "test_fraction = 0.2" in injected[0].source
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "a notebook cell was not executed"
    assert any("'n_train': 1437" in str(cell.outputs) for cell in code)


def embedded_files(report_html: str) -> dict[str, bytes]:
    """Files the Snakemake report embeds as base64 data URIs, by file name."""
    found = {}
    for name, payload in re.findall(r"data:[^;\"]+(?:;charset=[^;\"]+)?;filename=([^;\"]+);base64,([A-Za-z0-9+/=]+)", report_html):
        found[name] = base64.b64decode(payload)
    return found


def test_report_contains_metrics_plots_and_notebook(finished):
    _, path, _ = finished
    report = (path / "results/report.html").read_text()
    files = embedded_files(report)
    assert {"metrics.html", "confusion_matrix.png", "samples.png", "prepare.ipynb"} <= set(files), sorted(files)
    accuracy = json.loads((path / "results/metrics.json").read_text())["accuracy"]
    assert f"<td>{accuracy:.4f}</td>" in files["metrics.html"].decode()
    assert files["confusion_matrix.png"][:4] == b"\x89PNG"
    assert b"injected-parameters" in files["prepare.ipynb"]


def test_report_shows_the_notebook_rendered_and_the_training_curves(finished):
    """The executed notebook as an HTML page (besides the .ipynb) and loss/accuracy per epoch (issue 18)."""
    _, path, _ = finished
    report = (path / "results/report.html").read_text()
    files = embedded_files(report)
    assert {"prepare.html", "training_curves.png", "prepare.ipynb"} <= set(files), sorted(files)
    page = files["prepare.html"].decode()
    assert page.startswith("<!DOCTYPE html>") and "tags: injected-parameters" in page
    assert "tags: parameters" in page and "In [1]:" in page and "<h1>Prepare the data</h1>" in page
    assert "&#x27;n_train&#x27;: 1437" in page  # a cell's output
    assert files["training_curves.png"][:4] == b"\x89PNG"
    import matplotlib.image

    assert matplotlib.image.imread(path / "results/plots/training_curves.png").shape[1] >= 800
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", report).group(1))
    assert "results/plots/training_curves.png" in categories["Evaluation"]["Other"]
    assert {"results/notebooks/prepare.html", "results/notebooks/prepare.ipynb"} <= set(categories["Data"]["Other"])


def test_report_home_has_no_blank_band_and_provenance_shows_the_run_id(finished):
    _, path, _ = finished
    report = (path / "results/report.html").read_text()
    description = json.loads(re.search(r"var workflow_desc = (\".*?\");\n", report).group(1))
    # Snakemake centres the home page vertically (`items-center ... h-screen`); the introduction puts it on top.
    assert "<style>.grow.flex.items-center.justify-center.h-screen { align-items: flex-start; }</style>" in description
    run_id = json.loads((path / "results/mlflow/run.json").read_text())["run_id"]
    provenance = embedded_files(report)["provenance.html"].decode()
    assert f"<tr><th>MLflow run id</th><td><code>{run_id}</code></td></tr>" in provenance


def test_mlflow_run_has_params_metrics_artifacts_and_model(finished):
    import mlflow
    import torch

    backend, path, _ = finished
    info = json.loads((path / "results/mlflow/run.json").read_text())
    assert info["tracking_uri"] == "sqlite:///mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{path}/mlflow.db")
    client = mlflow.MlflowClient()
    runs = client.search_runs([info["experiment_id"]])
    assert [r.info.run_id for r in runs] == [info["run_id"]], "expected exactly one run per pipeline"
    mlrun = runs[0]
    assert mlrun.info.status == "FINISHED"
    params = mlrun.data.params
    assert params["train.backend"] == backend
    assert params["train.world_size"] == "2"
    assert params["data.n_train"] == "1437"
    metrics = json.loads((path / "results/metrics.json").read_text())
    assert mlrun.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    losses = client.get_metric_history(info["run_id"], "train_loss")
    assert len(losses) == int(params["train.hyperparameters.epochs"])
    artifacts = {a.path for a in client.list_artifacts(info["run_id"])}
    assert {"metrics.json", "metrics.html", "confusion_matrix.png", "samples.png"} <= artifacts

    models = mlflow.search_logged_models(
        experiment_ids=[info["experiment_id"]], filter_string=f"source_run_id = '{info['run_id']}'", output_format="list"
    )
    assert len(models) == 1
    with np.load(path / "data/processed/test.npz") as test:
        features, labels = test["features"], test["labels"]
    model = mlflow.pytorch.load_model(f"models:/{models[0].model_id}")
    with torch.no_grad():
        predictions = model(torch.from_numpy(features)).argmax(1).numpy()
    assert float((predictions == labels).mean()) == pytest.approx(metrics["accuracy"], abs=1e-6)


def test_second_run_has_nothing_to_do(finished):
    _, path, _ = finished
    again = run(["snakemake", "--profile", "profiles/local"], path)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["snakemake", "-n"],
        ["snakemake", "-n", "--profile", "profiles/local"],
        ["snakemake", "-n", "--profile", "profiles/lumi"],
        ["snakemake", "-n", "--profile", "profiles/slurm"],
    ],
    ids=["no-profile", "local", "lumi", "slurm"],
)
def test_where_it_ran_is_not_a_reason_to_rerun(finished, command):
    """Switching profiles (or none) after a run has nothing to do: where a step ran is provenance, not a parameter."""
    _, path, _ = finished
    again = run(command, path, SBATCH_ACCOUNT="project_465000001")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    # No note that the command line extended config/config.yaml: nobody typed --config (the cluster profiles load
    # their description as a config file, and the workflow does not show Snakemake's note about it).
    assert "is extended by additional config" not in again.stdout + again.stderr


def test_where_it_ran_is_recorded(finished):
    import mlflow

    _, path, _ = finished
    assert json.loads((path / "results/provenance.json").read_text())["profile"] == "local"
    info = json.loads((path / "results/mlflow/run.json").read_text())
    tags = mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}/mlflow.db").get_run(info["run_id"]).data.tags
    assert tags["snakemake.profile"] == "local"
    assert "cluster.name" not in mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}/mlflow.db").get_run(
        info["run_id"]).data.params  # the run's parameters are the config without where it ran
