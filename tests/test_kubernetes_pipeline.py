"""A fresh Kubernetes project under `snakemake --profile profiles/kubernetes`, as a new user runs it.

The real Snakemake, the real Kubernetes executor plugin and the project's profile run against a real S3 server
(moto), a real MLflow tracking server (pods share no filesystem, so the store is a server) and the Kubernetes API
stand-in (tests/kubernetes_api.py). Nothing is put into the bucket first: the steps that run on this machine
(fetch_data through DVC, start_tracking) must leave their outputs in the bucket, and the first step for a pod is
then submitted with what it needs (the run's Secret: the S3 credentials and the MLflow store).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml

from conftest import BIN_DIR, OFFLINE, generate, run
from kubernetes_api import CharliecloudPods, KubernetesApi

IMAGE = "registry.example.org/digits-classifier:1.0"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite behind it, artifacts proxied by the server): the store
    this machine and the pods share."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN_DIR / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(folder / "artifacts"), "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        stdout=log, stderr=log, cwd=folder,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-3000:]}")
        else:
            raise RuntimeError(f"mlflow server did not answer at {url}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def bucket_objects(s3_server, prefix: str) -> dict[str, bytes]:
    """Every object under s3://<bucket>/<prefix>/, by its key below the prefix."""
    client = boto3.client(
        "s3", endpoint_url=s3_server["endpoint"], aws_access_key_id="test", aws_secret_access_key="test",
        region_name="us-east-1",
    )
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_server["bucket"], Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=s3_server["bucket"], Key=item["Key"])["Body"].read()
            objects[item["Key"][len(prefix) + 1:]] = body
    return objects


def kubernetes_run(project: Path, s3_server, prefix: str, api: KubernetesApi, tmp_path: Path, *args, timeout=600, **env):
    """`snakemake <args> --profile profiles/kubernetes` as the profile's comments tell a user to run it."""
    return run(
        ["snakemake", "--container-image", IMAGE, *args, "--profile", "profiles/kubernetes",
         "--storage-s3-endpoint-url", s3_server["endpoint"]],
        project, check=False, timeout=timeout,
        KUBECONFIG=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        SNAKEMAKE_S3_PREFIX=f"s3://{s3_server['bucket']}/{prefix}",
        **{**s3_server["env"], **env},
    )


def test_a_fresh_project_puts_its_host_steps_outputs_in_the_bucket(s3_server, mlflow_server, tmp_path):
    """fetch_data (DVC, on this machine) and start_tracking leave their outputs in the bucket, not only on this
    machine's disk (before: MissingOutputException ... (in storage)); the first pod step, prepare_data, is then
    submitted with the S3 credentials and the MLflow store in the run's Secret (the stand-in fails it)."""
    project = generate(tmp_path / "fresh", cluster="kubernetes")
    keys = {"AWS_ACCESS_KEY_ID": "fresh-access-key", "AWS_SECRET_ACCESS_KEY": "fresh-secret-key"}  # moto takes any
    with KubernetesApi() as api:
        result = kubernetes_run(project, s3_server, "fresh", api, tmp_path, MLFLOW_TRACKING_URI=mlflow_server, **keys)
    output = result.stdout + result.stderr
    assert "MissingOutputException" not in output, output[-4000:]
    objects = bucket_objects(s3_server, "fresh")
    # The data DVC pulled, byte for byte what the .dvc file records.
    recorded = yaml.safe_load((project / "data/raw/digits.csv.dvc").read_text())["outs"][0]["md5"]
    assert hashlib.md5(objects["data/raw/digits.csv"]).hexdigest() == recorded
    # The pipeline's MLflow run, created on the tracking server the pods will use.
    run_info = json.loads(objects["results/mlflow/run.json"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_run(run_info["run_id"]).info.experiment_id
    assert client.get_experiment(experiment).name == "digits-classifier"
    # The first pod step, submitted twice (the stand-in fails every Job; the profile retries once).
    jobs = api.jobs()
    assert len(jobs) == 2, output[-4000:]
    for job in jobs:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert "--target-jobs 'prepare_data:'" in container["args"][-1]
        from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"} <= set(from_secret)
    (secret,) = api.secrets()
    values = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert values[from_secret["MLFLOW_TRACKING_URI"]] == mlflow_server
    assert values[from_secret["AWS_ACCESS_KEY_ID"]] == keys["AWS_ACCESS_KEY_ID"]
    assert values[from_secret["AWS_SECRET_ACCESS_KEY"]] == keys["AWS_SECRET_ACCESS_KEY"]
    # Credentials stay out of the pod's command line and out of what Snakemake printed.
    assert keys["AWS_SECRET_ACCESS_KEY"] not in json.dumps(jobs) + output
    assert result.returncode != 0


# Where the pods run, the cluster's network has no package index: every proxy points at a closed port (local
# servers excepted), so a pod that tried to download anything would fail.
NO_INDEX = {**OFFLINE, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
# The steps and where they run: local rules on this machine, the others in pods.
HOST_STEPS = {"fetch_data", "start_tracking", "log_training", "record_provenance", "register_model"}
POD_STEPS = {"prepare_data", "train_model", "evaluate_model"}
OUTPUTS = [
    "data/raw/digits.csv", "data/processed/train.npz", "data/processed/test.npz", "results/mlflow/run.json",
    "results/notebooks/prepare.ipynb", "results/notebooks/prepare.html", "results/plots/samples.png",
    "results/model/model.pt", "results/model/history.json", "results/metrics.json", "results/metrics.html",
    "results/predictions.csv", "results/plots/confusion_matrix.png", "results/plots/training_curves.png",
    "results/provenance.json", "results/provenance.html", "results/mlflow/registered_model.json",
]


@pytest.mark.e2e
@pytest.mark.container
def test_the_whole_pipeline_runs_in_pods(s3_server, mlflow_server, tmp_path):
    """A fresh Kubernetes project, the default config, `snakemake --profile profiles/kubernetes` with the project's
    image: each Job the executor submits is run for real (its pod's command, environment and Secret, in the project's
    Charliecloud image, without a package index), and its status comes from the real exit code. The pipeline
    completes, the bucket holds every output, the MLflow server has the run and the registered version, and a
    second run has nothing to do."""
    from test_container_image import build_image, ensure_charliecloud

    ensure_charliecloud()
    # The default answers (Horovod): the training pod's one rank runs Horovod's Gloo controller without a launcher (an
    # MPI singleton would need Open MPI's orted, which the image does not carry).
    project = generate(tmp_path / "pods", cluster="kubernetes")
    image, _ = build_image(project)
    pods = CharliecloudPods(image, tmp_path / "pod-volumes", network=NO_INDEX)
    with KubernetesApi(pods=pods) as api:
        first = kubernetes_run(project, s3_server, "whole", api, tmp_path, MLFLOW_TRACKING_URI=mlflow_server,
                               timeout=1800)
    output = first.stdout + first.stderr
    logs = "\n".join(f"--- pod {job}\n{pods.log(job)[-3000:]}" for job in pods.started)
    assert first.returncode == 0, f"{output[-6000:]}\n{logs}"

    # Every pod step ran once, in a pod, and succeeded; the local rules ran here (no Job).
    rules = {}
    for job in api.jobs():
        command = job["spec"]["template"]["spec"]["containers"][0]["args"][-1]
        (rule,) = [r for r in HOST_STEPS | POD_STEPS if f"--target-jobs '{r}:'" in command]
        rules.setdefault(rule, []).append(job["metadata"]["name"])
    assert {rule: len(names) for rule, names in rules.items()} == {rule: 1 for rule in POD_STEPS}, rules
    assert {name: pods.returncode(name) for names in rules.values() for name in names} == {
        names[0]: 0 for names in rules.values()
    }
    # The pods installed the storage plugin from the image's wheels, not from a package index.
    for names in rules.values():
        assert "Looking in links: /opt/smkml/pod-wheels" in pods.log(names[0]), pods.log(names[0])[-3000:]

    # The bucket holds every output; the numbers are the ones a user reads.
    objects = bucket_objects(s3_server, "whole")
    assert not [name for name in OUTPUTS if name not in objects], sorted(objects)
    metrics = json.loads(objects["results/metrics.json"])
    assert metrics["accuracy"] > 0.9, metrics
    # The MLflow server has the run (its metrics logged from the training pod) and the registered version.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    run_info = json.loads(objects["results/mlflow/run.json"])
    assert client.get_run(run_info["run_id"]).data.metrics, "no metrics on the MLflow run"
    registered = json.loads(objects["results/mlflow/registered_model.json"])
    assert client.get_model_version(registered["name"], str(registered["version"])).run_id == run_info["run_id"]

    # A second run: nothing to do, nothing submitted.
    with KubernetesApi(pods=pods) as again:
        second = kubernetes_run(project, s3_server, "whole", again, tmp_path, MLFLOW_TRACKING_URI=mlflow_server)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert "Nothing to be done" in second.stdout + second.stderr, (second.stdout + second.stderr)[-4000:]
    assert again.jobs() == []

    # The report, built from the bucket's outputs by the project's `make report` (results/ does not exist here).
    assert not (project / "results").exists()
    with KubernetesApi(pods=pods) as quiet:
        report = run(["make", "report", "PROFILE=profiles/kubernetes",
                      f"ARGS=--container-image {IMAGE} --storage-s3-endpoint-url {s3_server['endpoint']}"],
                     project, check=False, timeout=600, KUBECONFIG=str(quiet.write_kubeconfig(tmp_path / "kubeconfig")),
                     SNAKEMAKE_S3_PREFIX=f"s3://{s3_server['bucket']}/whole", MLFLOW_TRACKING_URI=mlflow_server,
                     **s3_server["env"])
    assert report.returncode == 0, (report.stdout + report.stderr)[-4000:]
    assert quiet.jobs() == []
    html = (project / "results/report.html").read_text()
    assert "metrics.html" in html and "confusion_matrix.png" in html and "prepare.html" in html, html[:2000]
