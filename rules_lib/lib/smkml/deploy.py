"""Kubernetes manifests for serving the registered model version, and a notebook pod, in the project's image.

`make deploy-manifests` runs `python -m smkml.deploy` (PYTHONPATH=workflow/lib) in the project. It reads
results/mlflow/registered_model.json (written by the register_model step: name, version, model URI, tracking URI),
config/config.yaml and the Kubernetes cluster description (profiles/kubernetes/cluster.yaml), and writes deploy/:

    deploy/model/            the registered version's MLflow model, downloaded from the registry (MLmodel, data/)
    deploy/Containerfile     the serving image: the project's image plus deploy/model/ as /opt/model (one layer)
    deploy/deployment.yaml   `mlflow models serve` on /opt/model, probes on /ping and /health, restricted security
    deploy/service.yaml      ClusterIP Service, port 80 -> the container's `http` port
    deploy/ingress.yaml      only with --ingress-host
    deploy/hpa.yaml          only with --hpa-max (autoscaling/v2 on CPU utilisation)
    deploy/notebook/pod.yaml a notebook pod in the project's image (`kubectl apply -f deploy/notebook/`)

The model is baked into an image layer rather than fetched by an init container: the registry of a project is
usually an SQLite file and a local artifact folder on a laptop or on LUMI's parallel filesystem, which a Kubernetes
cluster cannot reach, and a pod needs no credentials, no network and no MLflow client to start; the image digest
then pins the exact model version (rollback = the previous image). See docs/kubernetes.md.

Resources come from the project's resource vocabulary (`resources.serve_model` and `resources.notebook` in
config/config.yaml, over `resources.default`), planned by smkml.resources for the Kubernetes cluster description,
exactly as the pipeline's pods are. Manifests are built as data and serialised with yaml.safe_dump.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import yaml

from . import resources, schemas

SERVE_RULE = "serve_model"
NOTEBOOK_RULE = "notebook"
MODEL_DIR = "/opt/model"  # where the serving image holds the registered model version
PYTHON = "/opt/venv/bin/python"  # the project's environment in every image (containers/install-project.sh)
SCRATCH = "/tmp"  # the one writable path of the serving container (emptyDir); HOME and TMPDIR point there
USER_ID = 65532  # non-root; the image's files are root-owned and world-readable
SERVING_FILES = ("deployment.yaml", "service.yaml", "ingress.yaml", "hpa.yaml")
GPU_RESOURCE = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}


def dns_name(text: str) -> str:
    """A DNS-1123 label (Kubernetes object names, port names excepted)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:50].strip("-")
    if not name:
        raise ValueError(f"no Kubernetes name can be made of {text!r}")
    return name


def load_config(config_path: str | Path, cluster_path: str | Path) -> dict:
    """config/config.yaml with the Kubernetes cluster description under `cluster`, validated (defaults filled in)."""
    config = yaml.safe_load(Path(config_path).read_text())
    config.update(yaml.safe_load(Path(cluster_path).read_text()))
    return schemas.validate(config)


def pod_resources(config: dict, rule: str) -> tuple[dict, dict]:
    """(container resources, pod placement) of `rule` from the resource vocabulary, planned for the cluster.

    CPU and memory requests equal the limits (Guaranteed QoS: a model server is not throttled below what it asked
    for, nor evicted first); GPUs (nvidia.com/gpu or amd.com/gpu) are limits, as Kubernetes requires. Placement:
    the node selector for the cluster's machine type of the kind of step, and the GPU toleration.
    """
    if resources.scheduler(config["cluster"]) != "kubernetes":
        raise resources.ResourceError(f"cluster '{config['cluster']['name']}' is not a Kubernetes cluster description")
    step = resources.Step.plan(config, rule)
    request = step.request  # the executor plugin's terms: mem_mb, gpu, gpu_manufacturer, machine_type
    amounts = {"cpu": str(step.threads), "memory": f"{int(request['mem_mb'])}Mi"}
    limits = dict(amounts)
    placement: dict = {}
    if request.get("gpu"):
        name = GPU_RESOURCE[request["gpu_manufacturer"]]
        limits[name] = str(request["gpu"])
        placement["tolerations"] = [{"key": name, "operator": "Exists", "effect": "NoSchedule"}]
    if request.get("machine_type"):
        placement["nodeSelector"] = {"node.kubernetes.io/instance-type": request["machine_type"]}
    return {"requests": amounts, "limits": limits}, placement


def pod_security() -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": USER_ID,
        "runAsGroup": USER_ID,
        "fsGroup": USER_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict:
    """The restricted Pod Security Standard, plus a read-only root filesystem."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_env(home: str = SCRATCH) -> list[dict]:
    """The project's environment first on PATH (an image imported from a root filesystem, e.g. `podman import` of
    the Charliecloud image, carries no ENV of its own; uvicorn is started by name), and the scratch volume as
    HOME and TMPDIR."""
    return [
        {"name": "PATH", "value": "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"},
        {"name": "VIRTUAL_ENV", "value": "/opt/venv"},
        {"name": "HOME", "value": home},
        {"name": "TMPDIR", "value": SCRATCH},
        {"name": "MPLCONFIGDIR", "value": f"{SCRATCH}/matplotlib"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]


def labels(name: str, component: str, version: str | None = None) -> dict:
    found = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component,
             "app.kubernetes.io/managed-by": "smkml-deploy"}
    if version is not None:
        found["app.kubernetes.io/version"] = version
    return found


def serve_command(port: int, workers: int = 1) -> list[str]:
    """MLflow's scoring server on the baked model, in the project's own environment (no env creation, no network)."""
    return [PYTHON, "-m", "mlflow", "models", "serve", "--model-uri", MODEL_DIR, "--env-manager", "local",
            "--host", "0.0.0.0", "--port", str(port), "--workers", str(workers)]


def deployment(registered: dict, image: str, config: dict, port: int = 8080, replicas: int = 1) -> dict:
    name = dns_name(registered["name"])
    version = str(registered["version"])
    selector = labels(name, "model-server")
    container_resources, placement = pod_resources(config, SERVE_RULE)
    probe = {"httpGet": {"path": "/ping", "port": port}, "periodSeconds": 5, "timeoutSeconds": 3,
             "failureThreshold": 3}
    container = {
        "name": "model",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": serve_command(port),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": scratch_env(),
        "resources": container_resources,
        "securityContext": container_security(),
        # Ready once the model is loaded (/ping answers 200 only then); restarted when /health stops answering.
        "readinessProbe": {**probe, "initialDelaySeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/health", "port": port}, "initialDelaySeconds": 60,
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{name}-model",
            "labels": labels(name, "model-server", version),
            "annotations": {"smkml.org/model-uri": registered["model_uri"],
                            "smkml.org/model-id": str(registered.get("model_id", "")),
                            "smkml.org/run-id": str(registered.get("run_id", ""))},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels(name, "model-server", version)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(),
                    "containers": [container],
                    "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
                    **placement,
                },
            },
        },
    }


def service(registered: dict) -> dict:
    name = dns_name(registered["name"])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-model", "labels": labels(name, "model-server", str(registered["version"]))},
        "spec": {
            "type": "ClusterIP",
            "selector": labels(name, "model-server"),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def ingress(registered: dict, host: str, ingress_class: str | None = None, tls_secret: str | None = None) -> dict:
    name = dns_name(registered["name"])
    spec: dict = {
        "rules": [{"host": host, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": f"{name}-model", "port": {"name": "http"}}},
        }]}}],
    }
    if ingress_class:
        spec["ingressClassName"] = ingress_class
    if tls_secret:
        spec["tls"] = [{"hosts": [host], "secretName": tls_secret}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": f"{name}-model", "labels": labels(name, "model-server")}, "spec": spec}


def autoscaler(registered: dict, max_replicas: int, min_replicas: int = 1, cpu_percent: int = 70) -> dict:
    name = dns_name(registered["name"])
    if not 1 <= min_replicas <= max_replicas:
        raise ValueError(f"replicas: need 1 <= min ({min_replicas}) <= max ({max_replicas})")
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"{name}-model", "labels": labels(name, "model-server")},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{name}-model"},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu_percent}}}],
        },
    }


def notebook_pod(project: str, image: str, config: dict, port: int = 8888) -> dict:
    """JupyterLab in the project's image: the same environment the batch steps use; work in an emptyDir (mount a
    PersistentVolumeClaim there to keep it). Reach it with `kubectl port-forward pod/<name> 8888`."""
    name = dns_name(project)
    container_resources, placement = pod_resources(config, NOTEBOOK_RULE)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-notebook", "labels": labels(name, "notebook")},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": pod_security(),
            "containers": [{
                "name": "notebook",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": [PYTHON, "-m", "jupyter", "lab", "--no-browser", "--ip=0.0.0.0", f"--port={port}",
                            "--ServerApp.root_dir=/work"],
                "workingDir": "/work",
                "ports": [{"name": "jupyter", "containerPort": port, "protocol": "TCP"}],
                "env": scratch_env(home="/work"),
                "resources": container_resources,
                "securityContext": container_security(),
                "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}, {"name": "work", "mountPath": "/work"}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "work", "emptyDir": {}}],
            **placement,
        },
    }


def containerfile(registered: dict) -> str:
    """The serving image: the project's image (build arg BASE) plus the model as one layer."""
    lines = [
        "# The serving image of " + f"{registered['model_uri']} (written by `make deploy-manifests`):",
        "# the project's image plus the registered model version, one layer.",
        "# podman build -f deploy/Containerfile --build-arg BASE=<project image> -t <image> deploy/",
        "ARG BASE",
        "FROM ${BASE}",
        f"COPY model/ {MODEL_DIR}/",
        f"LABEL org.smkml.model-uri={json.dumps(registered['model_uri'])}"
        f" org.smkml.model-id={json.dumps(str(registered.get('model_id', '')))}",
        f"USER {USER_ID}:{USER_ID}",
    ]
    return "\n".join(lines) + "\n"


def export_model(registered: dict, destination: Path) -> Path:
    """Download the registered version's MLflow model (MLmodel, weights) from the registry into `destination`."""
    import mlflow

    mlflow.set_tracking_uri(registered["tracking_uri"])
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    mlflow.artifacts.download_artifacts(artifact_uri=registered["model_uri"], dst_path=str(destination))
    if not (destination / "MLmodel").is_file():
        raise SystemExit(f"error: {registered['model_uri']} downloaded to {destination} has no MLmodel file")
    return destination


def render(registered: dict, config: dict, image: str, *, port: int = 8080, replicas: int = 1,
           ingress_host: str | None = None, ingress_class: str | None = None, tls_secret: str | None = None,
           hpa_max: int | None = None, hpa_min: int = 1, hpa_cpu: int = 70, notebook_image: str | None = None,
           project: str | None = None) -> dict[str, dict]:
    """The manifests by file name under deploy/."""
    manifests = {
        "deployment.yaml": deployment(registered, image, config, port, replicas if hpa_max is None else hpa_min),
        "service.yaml": service(registered),
    }
    if ingress_host:
        manifests["ingress.yaml"] = ingress(registered, ingress_host, ingress_class, tls_secret)
    if hpa_max is not None:
        manifests["hpa.yaml"] = autoscaler(registered, hpa_max, hpa_min, hpa_cpu)
    manifests["notebook/pod.yaml"] = notebook_pod(project or registered["name"], notebook_image or image, config)
    return manifests


def write(manifests: dict[str, dict], out_dir: Path) -> list[Path]:
    for stale in [*SERVING_FILES, "notebook/pod.yaml"]:  # a flag dropped since the last render drops its file
        (out_dir / stale).unlink(missing_ok=True)
    written = []
    for name, manifest in manifests.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m smkml.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--registered", default="results/mlflow/registered_model.json")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--cluster", default="profiles/kubernetes/cluster.yaml",
                        help="the Kubernetes cluster description (GPU resource name, machine types)")
    parser.add_argument("--out", default="deploy")
    parser.add_argument("--image", help="the serving image (default: localhost/<model>-model:<version>)")
    parser.add_argument("--notebook-image", help="the notebook pod's image (default: the serving image)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--ingress-host", help="write deploy/ingress.yaml for this host name")
    parser.add_argument("--ingress-class")
    parser.add_argument("--tls-secret")
    parser.add_argument("--hpa-max", type=int, help="write deploy/hpa.yaml scaling up to this many replicas")
    parser.add_argument("--hpa-min", type=int, default=1)
    parser.add_argument("--hpa-cpu", type=int, default=70, help="target average CPU utilisation, percent")
    parser.add_argument("--no-model", action="store_true", help="do not download the model into deploy/model/")
    args = parser.parse_args(argv)

    registered_path = Path(args.registered)
    if not registered_path.is_file():
        raise SystemExit(f"error: {registered_path} not found: run the pipeline first (make run), which registers "
                         "the trained model")
    registered = json.loads(registered_path.read_text())
    image = args.image or f"localhost/{dns_name(registered['name'])}-model:{registered['version']}"
    config = load_config(args.config, args.cluster)
    project = config["tracking"]["experiment"]
    manifests = render(registered, config, image, port=args.port, replicas=args.replicas,
                       ingress_host=args.ingress_host, ingress_class=args.ingress_class, tls_secret=args.tls_secret,
                       hpa_max=args.hpa_max, hpa_min=args.hpa_min, hpa_cpu=args.hpa_cpu,
                       notebook_image=args.notebook_image, project=project)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in write(manifests, out):
        print(f"wrote {path}")
    if not args.no_model:
        print(f"wrote {export_model(registered, out / 'model')} ({registered['model_uri']})")
    (out / "Containerfile").write_text(containerfile(registered))
    print(f"wrote {out / 'Containerfile'}")
    print(f"serving image: {image} (build: podman build -f {out}/Containerfile --build-arg BASE=<project image> "
          f"-t {image} {out}/)")


if __name__ == "__main__":
    sys.exit(main())
