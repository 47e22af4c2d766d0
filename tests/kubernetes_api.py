"""A stand-in for the Kubernetes API server, for running the real Kubernetes executor against this machine.

No Kubernetes control plane can run on the test machines. This HTTP server answers the few calls
snakemake-executor-plugin-kubernetes makes (create and delete the run's Secret, create a Job, read its status,
list its pods, read a pod's log, delete it) and records every request, so a test can run
`snakemake --profile profiles/kubernetes` for real and read the Job manifests the plugin sent.

Two modes:
- recording (`KubernetesApi()`): every Job is reported failed and nothing runs, so Snakemake stops after the first
  round of submissions; the tests read the manifests.
- executing (`KubernetesApi(pods=CharliecloudPods(image, scratch))`): each Job's pod is really run, as a kubelet
  would run it: the container's command and args, its environment (plain values, and `secretKeyRef`s resolved from
  the Secrets this server received), in a fresh empty working directory at the container's `workingDir` (the
  plugin's `emptyDir` volume), in the project's Charliecloud image with the image's own environment
  (`ch-run --set-env`). The Job is active while the command runs and then succeeded or failed from its real exit
  code; the pod's output is its log. Not emulated: resource requests and limits (the process gets this machine),
  GPUs, node selectors and tolerations, the pod's network (ch-run shares this machine's: the pods reach the S3 and
  MLflow servers at 127.0.0.1), and the image's writable layer (ch-run mounts the image read-only; `/tmp` is private
  to the pod and is its HOME).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

JOB = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/?]+))?(?P<status>/status)?")
SECRET = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/?]+))?")
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods")
POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/?]+)/log")
JOB_SELECTOR = re.compile(r"labelSelector=job-name%3D(?P<job>[^&]+)|labelSelector=job-name=(?P<plain>[^&]+)")


class CharliecloudPods:
    """Runs pod containers in a Charliecloud image directory (see the module's docstring for what is emulated).
    `network`: variables every pod gets from the cluster it runs on (e.g. proxies of a network without a package
    index), not from its manifest."""

    def __init__(self, image: Path, scratch: Path, network: dict[str, str] | None = None):
        self.image = Path(image)
        self.scratch = Path(scratch)
        self.network = dict(network or {})
        self.started: list[str] = []  # Job names, in order
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, job: str, container: dict, secrets: dict[str, dict]) -> None:
        workdir = self.scratch / job
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        env = {"USER": os.environ.get("USER", "root"), "HOME": "/tmp", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin",
               **self.network}  # the image's PATH and friends come from its /ch/environment (--set-env)
        for variable in container.get("env") or []:
            if "value" in variable:
                env[variable["name"]] = variable["value"]
            else:
                ref = variable["valueFrom"]["secretKeyRef"]
                env[variable["name"]] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
        guest = container.get("workingDir") or "/"
        command = [
            shutil.which("ch-run") or "ch-run", "--set-env", "--private-tmp", "-b", f"{workdir}:{guest}", "-c", guest,
            str(self.image), "--", *(container.get("command") or []), *(container.get("args") or []),
        ]
        with (self.scratch / f"{job}.log").open("wb") as log:
            self.processes[job] = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(job)

    def returncode(self, job: str) -> int | None:
        """None while the pod runs (or for a Job never started here); its exit status once it ended."""
        process = self.processes.get(job)
        return None if process is None else process.poll()

    def kill(self, job: str) -> None:
        process = self.processes.get(job)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()

    def log(self, job: str) -> str:
        path = self.scratch / f"{job}.log"
        return path.read_text(errors="replace") if path.is_file() else ""


class KubernetesApi:
    def __init__(self, pods: CharliecloudPods | None = None):
        self.requests: list[dict] = []  # {"method", "path", "body"}
        self.pods = pods
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def jobs(self) -> list[dict]:
        """The Job manifests submitted, in order."""
        return [r["body"] for r in self.requests if r["method"] == "POST" and JOB.match(r["path"])]

    def secrets(self) -> list[dict]:
        """The Secrets created (the run's: the variables every pod reads), in order."""
        return [r["body"] for r in self.requests if r["method"] == "POST" and SECRET.match(r["path"])]

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "recorder", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "test-token"}}],
                    "contexts": [{"name": "recorder", "context": {"cluster": "recorder", "user": "tester"}}],
                    "current-context": "recorder",
                }
            )
        )
        return path

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        for job in self.pods.processes if self.pods else ():
            self.pods.kill(job)

    # Executing mode: a Job's state from its pod's process.
    def _submit(self, body: dict) -> None:
        (container,) = body["spec"]["template"]["spec"]["containers"]
        secrets = {r["body"]["metadata"]["name"]: r["body"] for r in self.requests
                   if r["method"] == "POST" and SECRET.match(r["path"])}
        with self._lock:
            self.pods.start(body["metadata"]["name"], container, secrets)

    def _job_status(self, job: str) -> dict:
        if self.pods is None:
            return {"failed": 1}
        code = self.pods.returncode(job)
        return {"active": 1} if code is None else {"succeeded": 1} if code == 0 else {"failed": 1}

    def _pod_list(self, path: str) -> list[dict]:
        selector = JOB_SELECTOR.search(path)
        job = selector and (selector["job"] or selector["plain"])
        if self.pods is None or not job or job not in self.pods.processes:
            return []
        code = self.pods.returncode(job)
        state = {"running": {}} if code is None else {"terminated": {"exitCode": code}}
        status = {"name": "snakemake", "image": "stand-in", "imageID": "", "ready": code is None, "restartCount": 0,
                  "state": state}
        return [{"metadata": {"name": f"{job}-pod", "labels": {"job-name": job}}, "status": {"containerStatuses": [status]}}]

    def _delete(self, path: str) -> None:
        job = JOB.match(path)
        if self.pods is not None and job and job["name"]:
            self.pods.kill(job["name"])  # a cancelled Job: its pod is killed (a finished one is left as it is)


    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> dict | None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append({"method": self.command, "path": self.path, "body": body})
                return body

            def do_POST(self):
                body = self._record()
                if JOB.match(self.path) and api.pods is not None:
                    api._submit(body)
                if JOB.match(self.path) or SECRET.match(self.path):
                    return self._reply(201, body)
                return self._reply(404, {"kind": "Status", "status": "Failure", "code": 404})

            def do_GET(self):
                self._record()
                job = JOB.match(self.path)
                if job and job["name"]:
                    return self._reply(
                        200,
                        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job["name"]},
                         "status": api._job_status(job["name"])},
                    )
                log = POD_LOG.match(self.path)
                if log:
                    text = api.pods.log(log["name"].removesuffix("-pod")).encode() if api.pods else b""
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    return self.wfile.write(text)
                if PODS.match(self.path):
                    return self._reply(
                        200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": api._pod_list(self.path)}
                    )
                return self._reply(404, {"kind": "Status", "status": "Failure", "code": 404})

            def do_DELETE(self):
                self._record()
                api._delete(self.path)
                return self._reply(200, {"apiVersion": "v1", "kind": "Status", "status": "Success"})

        return Handler
