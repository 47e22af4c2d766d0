"""`snakemake --profile profiles/kubernetes` for real, up to the Kubernetes API: the Job manifests it submits.

No Kubernetes control plane runs on the test machines, so the real Snakemake, the real Kubernetes executor plugin,
the project's profile and a real S3 server (moto) run against a recording API endpoint (tests/kubernetes_api.py)
that accepts the Jobs and reports them failed. The inputs of the step under test are put into the bucket first, so
Snakemake submits that step at once. The tests read the manifests as the cluster would have received them: the pod
image, the CPU, memory and GPU requests and limits, the GPU toleration, the node selector and the training command.
"""

from __future__ import annotations

import re

import boto3
import pytest
import yaml

from conftest import generate, run
from kubernetes_api import KubernetesApi

IMAGE = "registry.example.org/digits-classifier:1.0"
# Pods share no filesystem: the MLflow store of a Kubernetes run is a server. Nothing runs in these tests (the
# recording API fails every Job, and no step runs on this machine), so this one is never contacted.
TRACKING = {"MLFLOW_TRACKING_URI": "http://mlflow.invalid:5000"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("kubernetes"))


@pytest.fixture
def bucket_prefix(s3_server, request):
    """A fresh prefix in the bucket holding train_model's inputs (their content does not matter: nothing runs)."""
    return put_inputs(s3_server, request.node.name)


def put_inputs(s3_server, name: str) -> str:
    prefix = re.sub(r"[^a-z0-9-]", "-", name.lower())[:60]
    client = boto3.client(
        "s3",
        endpoint_url=s3_server["endpoint"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    for key in ("data/processed/train.npz", "results/mlflow/run.json"):
        client.put_object(Bucket=s3_server["bucket"], Key=f"{prefix}/{key}", Body=b"input")
    return f"s3://{s3_server['bucket']}/{prefix}"


def submit(project, s3_server, prefix, tmp_path, *args, cluster: dict | None = None, config: dict | None = None):
    """Run `snakemake <args> --profile profiles/kubernetes` against a recording API; (result, API).

    `cluster` updates the project's cluster description (profiles/kubernetes/cluster.yaml) for this run only;
    `config` is merged over config/config.yaml.
    """
    description = project / "profiles/kubernetes/cluster.yaml"
    original = description.read_text()
    if cluster:
        description.write_text(yaml.safe_dump({"cluster": {**yaml.safe_load(original)["cluster"], **cluster}}))
    extra = []
    if config:
        (tmp_path / "override.yaml").write_text(yaml.safe_dump(config))
        # A --configfile on the command line replaces the profile's: name the cluster description too.
        extra = ["--configfile", "config/config.yaml", "profiles/kubernetes/cluster.yaml", str(tmp_path / "override.yaml")]
    try:
        with KubernetesApi() as api:
            result = run(
                # Options that take several values (--allowed-rules, --configfile) go before the profile's.
                ["snakemake", *args, *extra, "--profile", "profiles/kubernetes",
                 "--storage-s3-endpoint-url", s3_server["endpoint"]],
                project,
                check=False,
                timeout=300,
                KUBECONFIG=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                SNAKEMAKE_S3_PREFIX=prefix,
                **s3_server["env"],
                **TRACKING,
            )
    finally:
        description.write_text(original)
    return result, api


def train_pod(project, s3_server, prefix, tmp_path, **kwargs) -> tuple[dict, dict, str]:
    """Submit train_model alone; its pod spec, its container and the step's shell command."""
    return first_attempt(*submit_train(project, s3_server, prefix, tmp_path, **kwargs))


def submit_train(project, s3_server, prefix, tmp_path, **kwargs):
    return submit(
        project, s3_server, prefix, tmp_path,
        "--container-image", IMAGE, "results/model/model.pt", "--allowed-rules", "train_model",
        **kwargs,
    )


@pytest.fixture(scope="module")
def default_submission(project, s3_server, tmp_path_factory):
    """train_model submitted once with the default config (read by the two tests below)."""
    return submit_train(project, s3_server, put_inputs(s3_server, "default-config"), tmp_path_factory.mktemp("default"))


def first_attempt(result, api) -> tuple[dict, dict, str]:
    jobs = api.jobs()
    # The profile retries a failed step once (the recording API fails every Job): the first attempt is read here.
    assert len(jobs) == 2, f"expected two attempts of train_model\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    spec = jobs[0]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    # The pod runs Snakemake on the one job; the job's shell command is what Snakemake prints for it.
    assert "--target-jobs 'train_model:'" in container["args"][-1]
    commands = re.findall(r"^Shell command: (.*)$", result.stdout + result.stderr, re.MULTILINE)
    assert commands and len(set(commands)) == 1, commands  # printed per attempt, the same each time
    return spec, container, commands[0]


def test_gpu_training_pod(default_submission):
    """The default config (train_model: gpus 1): one NVIDIA GPU as request and limit, its toleration, 1 rank."""
    spec, container, command = first_attempt(*default_submission)
    assert container["image"] == IMAGE
    resources = container["resources"]
    # Kubernetes takes GPUs as limits (requests, if given, must equal them); a request alone is refused.
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "4000M"
    assert resources["limits"]["cpu"] == "1000m"  # cpus 1 x 1 rank
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in spec["tolerations"]
    assert not spec.get("nodeSelector")
    # One rank per GPU, started in the pod without a launcher and without a container runtime of its own.
    assert "python -m digits_classifier.train --backend horovod" in command
    assert "local_ranks" not in command and "singularity" not in command and "apptainer" not in command


def test_a_retried_step_asks_for_twice_the_memory(default_submission):
    """The recording API fails every Job; the profile's one retry asks for 2 x mem_mb, the same GPUs and CPU."""
    result, api = default_submission
    first, second = (job["spec"]["template"]["spec"]["containers"][0] for job in api.jobs())
    assert "--attempt 1" in first["args"][-1] and "--attempt 2" in second["args"][-1]
    first, second = first["resources"], second["resources"]
    assert first["limits"]["memory"] == "4000M" and second["limits"]["memory"] == "8000M"
    assert first["limits"]["nvidia.com/gpu"] == second["limits"]["nvidia.com/gpu"] == "1"
    assert first["limits"]["cpu"] == second["limits"]["cpu"]
    assert result.returncode != 0


def test_cpu_training_pod(project, s3_server, bucket_prefix, tmp_path):
    """gpus 0: CPU ranks (train.processes) under the local launcher, CPU from cpus x ranks, no GPU, no limits."""
    spec, container, command = train_pod(
        project, s3_server, bucket_prefix, tmp_path,
        config={"resources": {"train_model": {"gpus": 0, "cpus": 2}}, "train": {"processes": 2}},
    )
    resources = container["resources"]
    assert resources["requests"]["cpu"] == "3800m"  # 2 cpus x 2 ranks, scaled by the plugin's cpu_scalar 0.95
    assert resources["requests"]["memory"] == "4000M"
    assert not any(name.endswith("/gpu") for name in resources["requests"])
    assert not spec.get("tolerations")
    assert "python -m digits_classifier.local_ranks --backend horovod --processes 2 -- python -m digits_classifier.train" in command


def test_amd_gpus_on_a_machine_type(project, s3_server, bucket_prefix, tmp_path):
    """A cluster description with AMD GPUs and a GPU machine type: amd.com/gpu, its toleration, a node selector."""
    spec, container, command = train_pod(
        project, s3_server, bucket_prefix, tmp_path,
        cluster={"gpu": {"manufacturer": "amd", "max_per_pod": 8}, "machine_type": {"cpu": "", "gpu": "mi250x-8"}},
        config={"resources": {"train_model": {"gpus": 4}}},
    )
    resources = container["resources"]
    assert resources["limits"]["amd.com/gpu"] == resources["requests"]["amd.com/gpu"] == "4"
    assert "nvidia.com/gpu" not in resources["requests"]
    assert resources["limits"]["cpu"] == "4000m"  # cpus 1 x 4 ranks
    assert spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "mi250x-8"}
    assert [t["key"] for t in spec["tolerations"]] == ["amd.com/gpu"]
    assert "python -m digits_classifier.local_ranks --backend horovod --processes 4 -- python -m digits_classifier.train" in command


def test_without_a_pod_image_nothing_is_submitted(project, s3_server, bucket_prefix, tmp_path):
    """Snakemake's default image has no PyTorch or project: the run stops before any Job, saying what to pass."""
    result, api = submit(project, s3_server, bucket_prefix, tmp_path, "results/model/model.pt", "--allowed-rules", "train_model")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Snakemake's default" in output and "--container-image REGISTRY/IMAGE:TAG" in output, output[-3000:]
    assert api.jobs() == []


def test_a_configfile_that_drops_the_cluster_description_stops_before_submission(
    project, s3_server, bucket_prefix, tmp_path
):
    """`--configfile` on the command line replaces the profile's `configfile:` (the cluster description): the
    Kubernetes executor would get unmapped jobs, so the run stops before any Job, saying what to name."""
    with KubernetesApi() as api:
        result = run(
            ["snakemake", "--container-image", IMAGE, "results/model/model.pt", "--allowed-rules", "train_model",
             "--configfile", "config/config.yaml", "--profile", "profiles/kubernetes",
             "--storage-s3-endpoint-url", s3_server["endpoint"]],
            project, check=False, timeout=300, KUBECONFIG=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
            SNAKEMAKE_S3_PREFIX=bucket_prefix, **s3_server["env"],
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "the kubernetes executor runs the steps, but the resources are mapped for cluster 'local'" in output, output[-3000:]
    assert "profiles/<cluster>/cluster.yaml" in output
    assert api.jobs() == []


@pytest.mark.parametrize(
    "config, message",
    [
        ({"resources": {"train_model": {"nodes": 2}}}, "2 nodes requested; the Kubernetes executor runs each step in one pod"),
        ({"resources": {"train_model": {"gpus": 9}}}, "9 GPUs requested; pods on kubernetes have at most 8"),
        ({"resources": {"prepare_data": {"partition": "small-g"}}}, "partition 'small-g' is a Slurm setting"),
        (
            {"container": {"runtime": "apptainer", "image": "train.sif"}},
            "container.runtime 'apptainer' is not supported on cluster 'kubernetes' (allowed: none)",
        ),
    ],
    ids=["nodes", "gpus", "partition", "runtime"],
)
def test_requests_kubernetes_cannot_satisfy_stop_before_submission(
    project, s3_server, bucket_prefix, tmp_path, config, message
):
    result, api = submit(
        project, s3_server, bucket_prefix, tmp_path, "--container-image", IMAGE, "-n", config=config
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
    assert api.jobs() == []


@pytest.mark.reliability(
    tried="A Kubernetes run without a setting it needs from this machine",
    sees="one line naming the setting and what to set, before the bucket is read or the cluster called",
    left="nothing: no Secret, no Job",
)
@pytest.mark.parametrize(
    "change, message",
    [
        ({"SNAKEMAKE_S3_PREFIX": None}, "SNAKEMAKE_S3_PREFIX is not set: pods share no filesystem"),
        ({"SNAKEMAKE_S3_PREFIX": "my-bucket/digits"}, "SNAKEMAKE_S3_PREFIX 'my-bucket/digits' is not an S3 location"),
        ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
         "no S3 credentials for the pipeline's bucket (s3://pipeline; pods read and write every step's files there): "
         "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ({"SNAKEMAKE_S3_PREFIX": "s3://no-such-bucket/digits"},
         "bucket 'no-such-bucket' of SNAKEMAKE_S3_PREFIX does not exist at http://127.0.0.1:"),
        ({"MLFLOW_TRACKING_URI": None},
         "MLflow store 'sqlite:///mlflow.db' (tracking.uri) is a file, and pods share no filesystem"),
        ({"MLFLOW_TRACKING_URI": "file:///srv/mlruns"}, "MLflow store 'file:///srv/mlruns' (tracking.uri) is a file"),
        ({"KUBECONFIG": None}, "no kubeconfig (~/.kube/config, KUBECONFIG unset): the Kubernetes executor needs one"),
        ({"KUBECONFIG": "{tmp}/missing.yaml"}, "KUBECONFIG={tmp}/missing.yaml names no file"),
        ({"KUBECONFIG": "{tmp}/empty.yaml"}, "the kubeconfig (KUBECONFIG={tmp}/empty.yaml) cannot be used: Invalid kube-config file"),
    ],
    ids=["no-prefix", "bad-prefix", "no-credentials", "no-bucket", "sqlite-store", "file-store", "no-kubeconfig",
         "missing-kubeconfig", "empty-kubeconfig"],
)
def test_a_missing_setting_stops_before_anything_is_submitted(project, s3_server, bucket_prefix, tmp_path, change, message):
    """Each setting a Kubernetes run needs from this machine, missing: one line naming it, before Snakemake reads
    the bucket or calls the cluster (the API stand-in receives nothing: no Secret, no Job)."""
    import subprocess

    from conftest import command_env

    (tmp_path / "empty.yaml").write_text("{}\n")
    home = tmp_path / "home"  # no ~/.aws, no ~/.kube
    home.mkdir()
    with KubernetesApi() as api:
        env = command_env(
            HOME=str(home), KUBECONFIG=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
            SNAKEMAKE_S3_PREFIX=bucket_prefix, **s3_server["env"], **TRACKING,
        )
        for name, value in change.items():
            env.pop(name, None)
            if value is not None:
                env[name] = value.format(tmp=tmp_path)
        for name in ("AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "KUBERNETES_SERVICE_HOST"):
            env.pop(name, None)
        result = subprocess.run(
            ["snakemake", "--container-image", IMAGE, "--profile", "profiles/kubernetes",
             "--storage-s3-endpoint-url", s3_server["endpoint"]],
            cwd=project, env=env, capture_output=True, text=True, timeout=300,
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    message = message.format(tmp=tmp_path)
    lines = [line for line in output.splitlines() if message in line]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith(message.split(" ")[0])  # the message is the whole line, not a fragment of one
    assert "botocore" not in output and "ConfigException" not in output and "must start with s3" not in output
    assert api.requests == []


@pytest.mark.parametrize(
    "uri, shared",
    [
        ("http://mlflow.example.org:5000", True),
        ("https://user:token@mlflow.example.org", True),
        ("postgresql://mlflow@db.example.org/mlflow", True),
        ("databricks", True),  # Databricks' hosted store
        ("sqlite:///mlflow.db", False),
        ("sqlite:////scratch/project_465000001/mlflow.db", False),
        ("file:///srv/mlruns", False),
        ("mlruns", False),
    ],
)
def test_only_a_store_the_pods_reach_is_accepted(uri, shared):
    """Pods share no filesystem: a tracking server or a database server is one store for all; a file or folder
    would be a new, empty store in every pod."""
    from smkml import pods

    if shared:
        pods.check_tracking_store(uri)
    else:
        with pytest.raises(pods.SettingError, match="pods share no filesystem"):
            pods.check_tracking_store(uri)
