"""A recording stand-in for the Kubernetes API server, for running the real Kubernetes executor up to the boundary.

No Kubernetes control plane can run on the test machines. This HTTP server answers the few calls
snakemake-executor-plugin-kubernetes makes (create and delete the run's Secret, create a Job, read its status,
list its pods, delete it) and records every request, so a test can run `snakemake --profile profiles/kubernetes`
for real and read the Job manifests the plugin would have sent to a cluster. Every Job it is given is reported as
failed (nothing runs), so Snakemake stops after the first round of submissions.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

JOB = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/?]+))?(?P<status>/status)?")
SECRET = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/?]+))?")
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods")


class KubernetesApi:
    def __init__(self):
        self.requests: list[dict] = []  # {"method", "path", "body"}
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
                if JOB.match(self.path) or SECRET.match(self.path):
                    return self._reply(201, body)
                return self._reply(404, {"kind": "Status", "status": "Failure", "code": 404})

            def do_GET(self):
                self._record()
                job = JOB.match(self.path)
                if job and job["name"]:
                    return self._reply(
                        200,
                        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job["name"]}, "status": {"failed": 1}},
                    )
                if PODS.match(self.path):
                    return self._reply(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
                return self._reply(404, {"kind": "Status", "status": "Failure", "code": 404})

            def do_DELETE(self):
                self._record()
                return self._reply(200, {"apiVersion": "v1", "kind": "Status", "status": "Success"})

        return Handler
