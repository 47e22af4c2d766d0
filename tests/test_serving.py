"""Serving the registered model on Kubernetes: `make deploy-manifests`, checked up to the API schema and run for real.

1. Rendering (no training needed): every manifest the renderer can write (Deployment, Service, Ingress, HPA, the
   notebook pod; CPU and GPU clusters) is validated against the OpenAPI schema of Kubernetes KUBERNETES_VERSION with
   kubernetes-validate, strict (unknown fields are errors), and its security context, probes and resources checked.
2. For real, on this machine (module fixture `served`): a generated project is trained (2 epochs) and registers its
   model; `make deploy-manifests` renders deploy/ from results/mlflow/registered_model.json. The project's Charliecloud
   image (containers/cpu/build-charliecloud.sh, cached as in test_container_image) is imported into podman
   (`tar | podman import`), the serving image is built from the rendered deploy/Containerfile (`podman build`: the
   model as one layer), and the rendered deploy/deployment.yaml is started unchanged with `podman kube play`
   (podman 4.3 from Debian, runc: crun refuses this machine's hybrid cgroups; the ulimits FACTS.md names). The test
   then does what the kubelet and kube-proxy would: polls the readiness probe's path and port at the pod's address,
   resolves the Service's port to the container port, checks the liveness probe, and posts the held-out split to
   /invocations: the predicted classes equal results/predictions.csv. It also reads the user, capabilities and
   read-only root of the running container.
3. On a real cluster (`test_applies_to_a_real_cluster`): only when KUBECONFIG points to a reachable cluster and
   SMKML_SERVE_IMAGE names the serving image pushed where that cluster can pull it; skipped with that message
   otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import generate, project_config, run

KUBERNETES_VERSION = "1.37.0"  # the newest schema kubernetes-validate 1.37.0 ships (requirements/dev.txt)
REGISTERED = {"name": "digits-classifier", "version": 3, "model_uri": "models:/digits-classifier/3",
              "model_id": "m-0123", "run_id": "0abc", "tracking_uri": "sqlite:///mlflow.db"}
IMAGE = "registry.example.org/digits-classifier-model:3"


def validate(manifest: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def rendered(**kwargs) -> dict[str, dict]:
    from smkml import deploy

    sections = kwargs.pop("sections", {})
    return deploy.render(REGISTERED, project_config("kubernetes", **sections), IMAGE, **kwargs)


# --- 1. Rendering, up to the schema -------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"ingress_host": "digits.example.org", "ingress_class": "nginx",
                                          "tls_secret": "digits-tls", "hpa_max": 4, "hpa_min": 2}])
def test_every_rendered_manifest_is_valid_kubernetes(options):
    manifests = rendered(**options)
    expected = {"deployment.yaml", "service.yaml", "notebook/pod.yaml"}
    if options:
        expected |= {"ingress.yaml", "hpa.yaml"}
    assert set(manifests) == expected
    for manifest in manifests.values():
        validate(manifest)
    if options:
        assert manifests["deployment.yaml"]["spec"]["replicas"] == 2  # the HPA's minimum
        assert manifests["hpa.yaml"]["spec"]["scaleTargetRef"]["name"] == "digits-classifier-model"
        assert manifests["ingress.yaml"]["spec"]["rules"][0]["host"] == "digits.example.org"


def test_the_schema_check_is_strict():
    """A misspelt field is an error, not silently dropped (as the API server's strict field validation does)."""
    import kubernetes_validate

    manifest = rendered()["deployment.yaml"]
    manifest["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(manifest)


def test_the_server_is_mlflow_on_the_baked_model_with_probes_and_a_restricted_context():
    deployment = rendered()["deployment.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["command"] == ["/opt/venv/bin/python", "-m", "mlflow", "models", "serve", "--model-uri",
                                     "/opt/model", "--env-manager", "local", "--host", "0.0.0.0", "--port", "8080",
                                     "--workers", "1"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ping", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"] == {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False
    # The one writable place: an emptyDir at /tmp, where HOME and TMPDIR point.
    assert container["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]
    assert {"name": "HOME", "value": "/tmp"} in container["env"]
    # MLflow starts uvicorn by name: the image's venv must come first on PATH whatever the image's own config.
    assert {"name": "PATH", "value": "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"} in container["env"]
    assert deployment["metadata"]["annotations"]["smkml.org/model-uri"] == "models:/digits-classifier/3"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "3"


def test_resources_come_from_the_vocabulary():
    """resources.serve_model / resources.notebook of config/config.yaml over resources.default, planned for the
    Kubernetes cluster description; GPUs become the cluster's GPU resource with its toleration and node selector."""
    manifests = rendered()
    serve = manifests["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert serve == {"requests": {"cpu": "1", "memory": "2000Mi"}, "limits": {"cpu": "1", "memory": "2000Mi"}}
    notebook = manifests["notebook/pod.yaml"]["spec"]["containers"][0]["resources"]
    assert notebook["requests"] == {"cpu": "2", "memory": "8000Mi"}
    config = project_config("kubernetes")
    table = {**config["resources"], "serve_model": {"cpus": 4, "mem_mb": 16000, "gpus": 1}}
    cluster = {**config["cluster"], "machine_type": {"cpu": "", "gpu": "gpu-a100"}}
    manifests = rendered(sections={"resources": table, "cluster": cluster})
    validate(manifests["deployment.yaml"])
    pod = manifests["deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "16000Mi", "nvidia.com/gpu": "1"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "gpu-a100"}


def test_a_request_one_pod_cannot_hold_is_refused():
    from smkml.resources import ResourceError

    config = project_config("kubernetes")
    with pytest.raises(ResourceError, match="nodes"):
        rendered(sections={"resources": {**config["resources"], "serve_model": {"nodes": 2}}})


def test_the_notebook_pod_runs_the_project_image_as_non_root():
    pod = rendered()["notebook/pod.yaml"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == IMAGE
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["command"][:4] == ["/opt/venv/bin/python", "-m", "jupyter", "lab"]


# --- 2. For real: a trained project, its image, podman kube play ----------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_podman() -> None:
    """podman, runc (see containers.conf below) and catatonit (the pause process of pods) from apt when missing
    (root only)."""
    if shutil.which("podman") and shutil.which("runc") and shutil.which("catatonit"):
        return
    if os.geteuid() != 0:
        pytest.fail("the serving test needs podman, runc and catatonit: apt-get install podman runc catatonit")
    from system_packages import apt_install

    apt_install(["podman", "runc", "catatonit"])


def podman(*args: str, conf: Path, check: bool = True, timeout: int = 900, stdin=None) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env={**os.environ, "CONTAINERS_CONF": str(conf)}, stdin=stdin,
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def http(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A generated project trained for 2 epochs (torch DDP, 2 ranks), its model registered, deploy/ rendered."""
    project = generate(tmp_path_factory.mktemp("serving"), training_backend="torch_ddp")
    config_path = project / "config/config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["train"]["hyperparameters"]["epochs"] = 2
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.monotonic()
    run(["snakemake", "--profile", "profiles/local", "results/mlflow/registered_model.json",
         "results/predictions.csv"], project, timeout=900)
    port = free_port()
    rendering = run(["make", "deploy-manifests", f"SERVE_PORT={port}"], project, timeout=300)
    return {"project": project, "port": port, "render_output": rendering.stdout,
            "pipeline_seconds": time.monotonic() - started}


@pytest.mark.e2e
def test_make_deploy_manifests_renders_the_registered_version(trained):
    project = trained["project"]
    registered = json.loads((project / "results/mlflow/registered_model.json").read_text())
    deploy_dir = project / "deploy"
    for name in ("deployment.yaml", "service.yaml", "notebook/pod.yaml"):
        validate(yaml.safe_load((deploy_dir / name).read_text()))
    assert not (deploy_dir / "ingress.yaml").exists() and not (deploy_dir / "hpa.yaml").exists()
    deployment = yaml.safe_load((deploy_dir / "deployment.yaml").read_text())
    assert deployment["metadata"]["annotations"]["smkml.org/model-uri"] == registered["model_uri"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"localhost/digits-classifier-model:{registered['version']}"
    assert (deploy_dir / "model/MLmodel").is_file()  # the registered version, downloaded from the registry
    assert "COPY model/ /opt/model/" in (deploy_dir / "Containerfile").read_text()


@pytest.mark.e2e
def test_sizing_the_server_never_retrains(trained):
    """resources.serve_model and resources.notebook are not inputs of the results: changing them leaves the pipeline
    with nothing to do (any other resources change starts a new run, as documented in config/README.md)."""
    project = trained["project"]
    config_path = project / "config/config.yaml"
    original = config_path.read_text()
    config = yaml.safe_load(original)
    config["resources"]["serve_model"] = {"cpus": 3, "mem_mb": 3000}
    config["resources"]["notebook"] = {"cpus": 1, "mem_mb": 1000}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        result = run(["snakemake", "-n", "--profile", "profiles/local", "results/mlflow/registered_model.json"],
                     project)
    finally:
        config_path.write_text(original)
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """The rendered Deployment started with `podman kube play` in the serving image; yields what the test ran."""
    from test_container_image import build_image, ensure_charliecloud

    ensure_podman()
    ensure_charliecloud()
    project, port = trained["project"], trained["port"]
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    # runc: crun 1.8 refuses this machine's hybrid cgroup v1/v2 layout; the ulimits: FACTS.md (podman 4.3 here).
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                    '[engine]\nruntime = "runc"\n')
    ran = []
    timings = {}
    started = time.monotonic()
    image_dir, _ = build_image(project)  # the Charliecloud image (cached); its folder name carries its inputs' key
    timings["charliecloud image"] = time.monotonic() - started
    base = f"localhost/{image_dir.name}:charliecloud"
    started = time.monotonic()
    if podman("image", "exists", base, conf=conf, check=False).returncode != 0:
        # As a user makes the pods' image: containers/build.sh oci (the cached Charliecloud image, imported).
        imported = run(["bash", "containers/build.sh", "oci", base, "--backend", "horovod", "--python", sys.executable],
                       project, timeout=1200, CONTAINERS_CONF=str(conf), USER=os.environ.get("USER", "root"))
        assert imported.stdout.strip().splitlines()[-1] == base, imported.stdout
        ran.append(f"containers/build.sh oci {base}")
    else:
        ran.append(f"(reused) containers/build.sh oci of {image_dir} as {base}")
    # Imports of earlier builds of this project's image (other inputs, other key) only take space: 2.4 GB each.
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", conf=conf).stdout.split()
    prefix = f"localhost/{image_dir.name.rsplit('-', 1)[0]}-"
    for stale in listed:
        if stale.startswith(prefix) and stale.endswith(":charliecloud") and stale != base:
            podman("rmi", stale, conf=conf, check=False)
    timings["podman import"] = time.monotonic() - started
    deployment_path = project / "deploy/deployment.yaml"
    deployment = yaml.safe_load(deployment_path.read_text())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    started = time.monotonic()
    podman("kube", "play", "--down", str(deployment_path), conf=conf, check=False)
    podman("rmi", image, conf=conf, check=False)  # the previous run's serving image of this tag
    podman("build", "-f", str(project / "deploy/Containerfile"), "--build-arg", f"BASE={base}", "-t", image,
           str(project / "deploy"), conf=conf)
    ran.append(f"podman build -f deploy/Containerfile --build-arg BASE={base} -t {image} deploy/")
    timings["podman build"] = time.monotonic() - started
    podman("kube", "play", "--down", str(deployment_path), conf=conf, check=False)
    started = time.monotonic()
    podman("kube", "play", str(deployment_path), conf=conf)
    ran.append("podman kube play deploy/deployment.yaml")
    try:
        pod_name = f"{deployment['metadata']['name']}-pod-0"
        info = json.loads(podman("pod", "inspect", pod_name, conf=conf).stdout)
        info = info[0] if isinstance(info, list) else info
        infra = json.loads(podman("inspect", info["InfraContainerID"], conf=conf).stdout)[0]
        address = next(iter(infra["NetworkSettings"]["Networks"].values()))["IPAddress"]
        container_name = f"{pod_name}-{deployment['spec']['template']['spec']['containers'][0]['name']}"
        # The readiness probe as the kubelet runs it: its path and port, from the node, at the pod's address.
        probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        url = f"http://{address}:{probe['httpGet']['port']}{probe['httpGet']['path']}"
        deadline = time.monotonic() + 300
        status = None
        while time.monotonic() < deadline:
            try:
                status, _ = http("GET", url, timeout=3)
            except OSError:
                status = None
            if status == 200:
                break
            state = json.loads(podman("inspect", container_name, conf=conf).stdout)[0]["State"]
            assert state["Running"], podman("logs", container_name, conf=conf, check=False).stderr[-4000:]
            time.sleep(1)
        assert status == 200, f"{url} not ready after 300 s:\n" + podman("logs", container_name, conf=conf,
                                                                          check=False).stderr[-4000:]
        timings["until ready"] = time.monotonic() - started
        ran.append(f"readiness probe GET {url} -> 200")
        print("\nserving test ran:\n  " + "\n  ".join(ran) + f"\ntimings (s): {timings}")
        yield {"address": address, "deployment": deployment, "container": container_name, "conf": conf,
               "project": project, "ran": ran, "timings": timings, "image": image, "base": base}
    finally:
        podman("kube", "play", "--down", str(deployment_path), conf=conf, check=False)


@pytest.mark.container
def test_podman_serves_the_registered_model_and_its_answers_equal_the_evaluation(served):
    project, deployment = served["project"], served["deployment"]
    service = yaml.safe_load((project / "deploy/service.yaml").read_text())
    # The Service's port as kube-proxy resolves it: targetPort (a name) -> the container's port of that name.
    (port_spec,) = service["spec"]["ports"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    target = next(p["containerPort"] for p in container["ports"] if p["name"] == port_spec["targetPort"])
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    base = f"http://{served['address']}:{target}"
    liveness = container["livenessProbe"]["httpGet"]
    assert http("GET", f"{base}{liveness['path']}")[0] == 200
    with np.load(project / "data/processed/test.npz") as split:
        features = split["features"]
    status, body = http("POST", f"{base}/invocations", {"inputs": features.tolist()}, timeout=120)
    assert status == 200, body[:2000]
    answer = np.asarray(json.loads(body)["predictions"])
    assert answer.shape == (len(features), 10)
    with (project / "results/predictions.csv").open() as handle:
        expected = [int(row["prediction"]) for row in csv.DictReader(handle)]
    assert answer.argmax(axis=1).tolist() == expected
    served["ran"].append(f"POST {base}/invocations ({len(features)} held-out samples) -> equal to predictions.csv")


@pytest.mark.container
def test_the_running_server_is_non_root_without_capabilities_on_a_read_only_root(served):
    conf, name = served["conf"], served["container"]
    probe = ("import os; print(os.getuid()); "
             "open('/tmp/ok', 'w').write('x'); "
             "exec('try:\\n open(\"/opt/model/x\", \"w\")\\nexcept OSError as e: print(e.errno)')")
    result = podman("exec", name, "/opt/venv/bin/python", "-c", probe, conf=conf)
    uid, errno = result.stdout.split()
    assert uid == str(served["deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"])
    assert errno == "30"  # EROFS: the root filesystem is read-only; /tmp (emptyDir) is writable
    state = json.loads(podman("inspect", name, conf=conf).stdout)[0]
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    status = podman("exec", name, "grep", "CapEff", "/proc/1/status", conf=conf).stdout
    assert status.split()[-1] == "0000000000000000"


@pytest.mark.container
def test_the_pods_image_runs_as_non_root_with_the_venv_and_no_index(served):
    """containers/build.sh oci, the image pipeline pods run in: the Kubernetes executor plugin sets no security context,
    so the image itself says who runs (the serving manifests' non-root user), with the project's venv on PATH; the
    plugin's first command in every pod, `pip install --target ... snakemake-storage-plugin-s3`, works offline."""
    conf, base = served["conf"], served["base"]
    config = json.loads(podman("image", "inspect", base, conf=conf).stdout)[0]["Config"]
    user = served["deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert config["User"] == f"{user}:{user}" and config["WorkingDir"] == "/workdir", config
    assert "PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin" in config["Env"], config["Env"]
    script = ("id -u; command -v python; command -v snakemake; "
              "pip install --quiet --target .snakemake/pip-deployments snakemake-storage-plugin-s3 && "
              "PYTHONPATH=.snakemake/pip-deployments python -c 'import snakemake_storage_plugin_s3; print(\"plugin ok\")'")
    result = podman("run", "--rm", "--network", "none", base, "sh", "-c", script, conf=conf, timeout=600)
    assert result.stdout.split() == [str(user), "/opt/venv/bin/python", "/opt/venv/bin/snakemake", "plugin", "ok"], (
        result.stdout + result.stderr)


# --- 3. A real cluster, when there is one ----------------------------------------------------------------------------

@pytest.fixture
def kube_cluster():
    """The cluster KUBECONFIG names, if any is reachable, and the serving image it can pull."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig or not Path(kubeconfig).is_file():
        pytest.skip("no real cluster: KUBECONFIG does not point to a kubeconfig (kind, minikube, CSC Rahti); the "
                    "manifests were checked up to the schema and run with podman kube play")
    image = os.environ.get("SMKML_SERVE_IMAGE")
    if not image:
        pytest.skip("KUBECONFIG is set but SMKML_SERVE_IMAGE is not: build and push the serving image "
                    "(make serving-image; podman push) and name it there")
    from kubernetes import client, config

    config.load_kube_config(kubeconfig)
    try:
        client.VersionApi().get_code(_request_timeout=10)
    except Exception as error:  # noqa: BLE001 - any failure to reach it means: no cluster to test on
        pytest.skip(f"the cluster of KUBECONFIG={kubeconfig} is not reachable: {error}")
    return client, image


def test_applies_to_a_real_cluster(kube_cluster, trained):
    client, image = kube_cluster
    project = trained["project"]
    namespace = f"smkml-serve-{os.getpid()}"
    core, apps = client.CoreV1Api(), client.AppsV1Api()
    deployment = yaml.safe_load((project / "deploy/deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = image
    service = yaml.safe_load((project / "deploy/service.yaml").read_text())
    notebook = yaml.safe_load((project / "deploy/notebook/pod.yaml").read_text())
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        apps.create_namespaced_deployment(namespace, deployment)
        core.create_namespaced_service(namespace, service)
        core.create_namespaced_pod(namespace, notebook, dry_run="All")  # admitted (schema, pod security)
        name = deployment["metadata"]["name"]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = apps.read_namespaced_deployment_status(name, namespace).status
            if (status.ready_replicas or 0) >= deployment["spec"]["replicas"]:
                break
            time.sleep(5)
        else:
            pytest.fail(f"deployment {name} not ready in 600 s: {status}")
        with np.load(project / "data/processed/test.npz") as split:
            features = split["features"]
        body = core.connect_post_namespaced_service_proxy_with_path(
            f"{service['metadata']['name']}:http", namespace, "invocations",
            body={"inputs": features.tolist()}, _preload_content=False)
        answer = np.asarray(json.loads(body.data)["predictions"])
        with (project / "results/predictions.csv").open() as handle:
            expected = [int(row["prediction"]) for row in csv.DictReader(handle)]
        assert answer.argmax(axis=1).tolist() == expected
    finally:
        core.delete_namespace(namespace)
