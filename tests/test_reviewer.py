"""The author publishes, a reviewer reruns: MLproject, provenance, model registry and serving, `make reproduce`.

The author's side runs the whole pipeline once through `mlflow run` (the MLproject file), records the reference
metrics and commits them. The reviewer clones the published repository while the author's working tree is moved
out of reach, and runs the one documented command. Then a perturbed result and perturbed data must fail it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import command_env, generate, run

pytestmark = pytest.mark.e2e

PACKAGE = "digits_classifier"
MODEL_NAME = "digits-classifier"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Author: generate, `mlflow run .`, `make reference`, commit, publish a bare repository."""
    root = tmp_path_factory.mktemp("author")
    path = generate(root, training_backend="torch_ddp")
    commit = run(["git", "rev-parse", "HEAD"], path).stdout.strip()
    first = run(["mlflow", "run", ".", "--env-manager", "local", "--experiment-name", MODEL_NAME], path, timeout=900)
    run(["make", "reference"], path)
    run(["git", "add", "results/reference"], path)
    # The author's identity, as a user has it configured (a fresh CI machine has none).
    run(["git", "-c", "user.name=Ada Author", "-c", "user.email=ada@example.org", "commit", "-q", "-m",
         "Reference metrics of the published run"], path)
    bare = root / "published.git"
    run(["git", "clone", "-q", "--bare", str(path), str(bare)], root)
    return {"path": path, "bare": bare, "commit": commit, "output": first.stdout + first.stderr}


def mlflow_client(path: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")


def pipeline_run(path: Path):
    info = json.loads((path / "results/mlflow/run.json").read_text())
    return mlflow_client(path).get_run(info["run_id"])


def test_mlflow_run_of_the_mlproject_runs_the_whole_pipeline_into_its_run(published):
    path = published["path"]
    assert "succeeded" in published["output"]
    run_ = pipeline_run(path)
    assert run_.data.tags["mlflow.project.entryPoint"] == "main"
    assert run_.data.params["train.backend"] == "torch_ddp"
    assert run_.data.metrics["test_accuracy"] >= 0.90
    assert mlflow_client(path).get_experiment(run_.info.experiment_id).name == MODEL_NAME


def test_provenance_is_on_the_run_and_in_the_report(published):
    import snakemake

    path = published["path"]
    tags = pipeline_run(path).data.tags
    dvcfile = yaml.safe_load((path / "data/raw/digits.csv.dvc").read_text())
    assert tags["git.commit"] == published["commit"]
    assert tags["git.dirty"] == "false"
    assert tags["dvc.md5.data/raw/digits.csv"] == dvcfile["outs"][0]["md5"]
    assert tags["lockfile.sha256"] == hashlib.sha256((path / "requirements.lock").read_bytes()).hexdigest()
    assert tags["snakemake.version"] == snakemake.__version__
    assert tags["snakemake.profile"] == "local"
    assert tags["container.runtime"] == "none"
    assert not any(key.startswith("slurm.job_id.") for key in tags), "no Slurm here, so no job ids"
    prov = json.loads((path / "results/provenance.json").read_text())
    assert prov["config"]["train"]["hyperparameters"]["epochs"] == 30
    assert tags["config.sha256"] == prov["config_sha256"]
    assert prov["data"]["data/raw/digits.csv"]["matches"] is True

    report = (path / "results/report.html").read_text()
    embedded = {
        name: base64.b64decode(payload).decode(errors="replace")
        for name, payload in re.findall(r";filename=([^;\"]+);base64,([A-Za-z0-9+/=]+)", report)
    }
    assert published["commit"] in embedded["provenance.html"]
    assert dvcfile["outs"][0]["md5"] in embedded["provenance.html"]


def test_the_model_is_registered_with_the_runs_provenance(published):
    path = published["path"]
    registered = json.loads((path / "results/mlflow/registered_model.json").read_text())
    assert registered["model_uri"] == f"models:/{MODEL_NAME}/{registered['version']}"
    version = mlflow_client(path).get_model_version(MODEL_NAME, str(registered["version"]))
    assert version.run_id == pipeline_run(path).info.run_id
    assert version.tags["git.commit"] == published["commit"]
    assert float(version.tags["test_accuracy"]) >= 0.90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_json(url: str, payload: dict, timeout: float = 30) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def test_served_model_answers_http_predictions_like_the_evaluate_step(published, tmp_path):
    path = published["path"]
    registered = json.loads((path / "results/mlflow/registered_model.json").read_text())
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", registered["model_uri"], "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=path, env=command_env(MLFLOW_TRACKING_URI=f"sqlite:///{path / 'mlflow.db'}"),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "server not ready in 180 s: " + (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        test = np.load(path / "data/processed/test.npz")
        with open(path / "results/predictions.csv") as handle:
            expected = [int(row["prediction"]) for row in csv.DictReader(handle)]
        served = []
        for start in range(0, len(test["labels"]), 120):  # three bounded requests for the 360 held-out samples
            answer = post_json(f"http://127.0.0.1:{port}/invocations",
                               {"inputs": test["features"][start:start + 120].tolist()})
            served += np.asarray(answer["predictions"]).argmax(axis=1).tolist()
        assert len(served) == len(expected) == 360
        assert served == expected
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


# ------------------------------------------------------------------------------------------- the reviewer
@pytest.fixture(scope="module")
def reviewer(published, tmp_path_factory):
    """Reviewer: clone the published repository (author's tree moved out of reach) and run `make reproduce`."""
    author = published["path"]
    hidden = author.with_name(author.name + "-out-of-reach")
    author.rename(hidden)
    try:
        clone = tmp_path_factory.mktemp("reviewer") / "digits-classifier"
        run(["git", "clone", "-q", str(published["bare"]), str(clone)], clone.parent)
        assert not (clone / "data/raw/digits.csv").exists() and not (clone / ".dvc/cache").exists()
        result = run(["make", "reproduce"], clone, check=False, timeout=900)
    finally:
        hidden.rename(author)
    return {"clone": clone, "result": result}


def test_reviewer_rerun_from_a_clean_clone_reproduces(reviewer):
    result = reviewer["result"]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "environment matches requirements.lock" in result.stdout
    header = "metric                 reference   rerun       difference  tolerance  result"
    assert header in result.stdout
    assert "REPRODUCED: all 44 metrics within tolerance" in result.stdout
    report = (reviewer["clone"] / "results/report.html").read_text()
    assert "comparison.html" in report


def test_two_clean_runs_give_identical_metrics(published, reviewer):
    """Determinism: seeds everywhere, deterministic torch on CPU, so the rerun equals the author's run exactly."""
    author = json.loads((published["path"] / "results/metrics.json").read_text())
    rerun = json.loads((reviewer["clone"] / "results/metrics.json").read_text())
    assert rerun == author
    comparison = json.loads((reviewer["clone"] / "results/reproduce/comparison.json").read_text())
    assert all(row["difference"] == 0 for row in comparison["rows"])


def test_a_perturbed_reference_fails_with_a_readable_diff(reviewer):
    clone = reviewer["clone"]
    reference = clone / "results/reference/metrics.json"
    original = reference.read_text()
    metrics = json.loads(original)
    metrics["accuracy"] = round(metrics["accuracy"] - 0.05, 6)
    reference.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    try:
        run(["snakemake", "--profile", "profiles/local", "compare_to_reference"], clone)
        verdict = run(["python", "-m", f"{PACKAGE}.reproduce", "verdict", "--comparison",
                       "results/reproduce/comparison.json"], clone, check=False, PYTHONPATH="src")
    finally:
        reference.write_text(original)
    assert verdict.returncode == 1
    assert "NOT REPRODUCED: 1 of 44 metrics outside tolerance: accuracy" in verdict.stdout
    row = next(line for line in verdict.stdout.splitlines() if line.startswith("accuracy "))
    assert "FAIL" in row and "+0.050000" in row


def test_perturbed_data_fails_the_rerun_and_shows_in_provenance(reviewer):
    clone = reviewer["clone"]
    data = clone / "data/raw/digits.csv"
    lines = data.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    assert header.endswith("label")
    flipped = [f"{row.rsplit(',', 1)[0]},{(int(row.rsplit(',', 1)[1]) + 1) % 10}" if i % 4 == 0 else row
               for i, row in enumerate(rows)]  # a quarter of the labels shifted by one
    data.write_text("\n".join([header, *flipped]) + "\n")
    run(["dvc", "add", "data/raw/digits.csv"], clone)
    result = run(["make", "reproduce"], clone, check=False, timeout=900)
    assert result.returncode != 0
    assert "NOT REPRODUCED" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("accuracy "))
    assert "FAIL" in row
    prov = json.loads((clone / "results/provenance.json").read_text())
    published = json.loads((clone / "results/reference/provenance.json").read_text())
    assert prov["git"]["dirty"] is True
    assert prov["data"]["data/raw/digits.csv"]["md5"] != published["data"]["data/raw/digits.csv"]["md5"]
