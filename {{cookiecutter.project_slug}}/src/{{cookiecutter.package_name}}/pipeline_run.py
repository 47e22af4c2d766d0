"""The pipeline's one MLflow run as its steps see it: the id file `tracking start` writes, and logging into it.

The pipeline's compute steps (prepare, train, evaluate) do not talk to MLflow: each writes what it logs to a small
JSON record (`record`: params, metrics, tags, artifact paths, the model), and the bookkeeping steps on the submitting
host send the records to the run (`tracking publish`, `tracking register`), the training's while evaluation runs. So
MLflow's imports and its one-writer store stay off the critical path, and a compute step needs no MLflow store.
Sweep members log at once: they send their record to their own run in the same process (`--run-file`).
Either way everything lands in one run. Inside a Slurm job a step's job id goes in its record as a tag
(`slurm.job_id.<step>`), which the provenance step reads back. The run file records the tracking URI without
credentials (redaction); the steps connect with MLFLOW_TRACKING_URI, which the workflow sets. This module imports nothing of the package but the
standard-library-only `redaction`: `provenance` and `tracking` build on it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .redaction import MASK, redact_uri

SLURM_TAG = "slurm.job_id."
# Set by `tracking fail` on the run a step failed in; a later step that logs into the same run again (the rerun after
# the fix) moves it to PREVIOUS_FAILED_STEP_TAG, so a FINISHED run never names a failing step as if it still failed.
FAILED_STEP_TAG = "pipeline.failed_step"
PREVIOUS_FAILED_STEP_TAG = "pipeline.previous_failed_step"


def slurm_job_tag(step: str) -> dict[str, str]:
    """The tag a step sets on the pipeline's run when it runs inside a Slurm job."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    cluster = os.environ.get("SLURM_CLUSTER_NAME")
    return {f"{SLURM_TAG}{step}": job, **({"slurm.cluster": cluster} if cluster else {})}


def read_run_file(run_file: str | Path) -> dict:
    """run_id, experiment_id, experiment and tracking_uri of the pipeline's run."""
    return json.loads(Path(run_file).read_text())


def tracking_uri(info: dict) -> str:
    """The URI to connect to the run's store: MLFLOW_TRACKING_URI when it is the store the run file names (the run
    file holds it redacted, `redact_uri`), else the run file's own URI when it holds no redacted credentials."""
    current = os.environ.get("MLFLOW_TRACKING_URI")
    recorded = info["tracking_uri"]
    if current and redact_uri(current) == recorded:
        return current
    if MASK in recorded:
        raise SystemExit(
            f"error: the pipeline's MLflow run is in {recorded}, whose credentials are not recorded: set "
            "MLFLOW_TRACKING_URI (or config tracking.uri) to that store's full URI"
        )
    return recorded


@contextmanager
def resume(run_file: str | Path, step: str | None = None):
    """Log into the pipeline's run (created by `tracking start`). Inside a Slurm job the step's job id becomes a tag
    `slurm.job_id.<step>` (step: the module that logs, e.g. `train`, unless named). A run marked FAILED by an earlier
    attempt is RUNNING again (MLflow), and FINISHED when the step ends; its failed step becomes the previous one."""
    import mlflow

    info = read_run_file(run_file)
    mlflow.set_tracking_uri(tracking_uri(info))
    with mlflow.start_run(run_id=info["run_id"]) as run:
        failed = run.data.tags.get(FAILED_STEP_TAG)
        if failed:
            mlflow.set_tag(PREVIOUS_FAILED_STEP_TAG, failed)
            mlflow.MlflowClient().delete_tag(run.info.run_id, FAILED_STEP_TAG)
        mlflow.set_tags(slurm_job_tag(step or Path(sys.argv[0]).stem))
        yield run


def empty_record() -> dict:
    return {"tags": {}, "params": {}, "metrics": [], "artifacts": [], "model": None}


def record(
    path: str | Path | None,
    step: str,
    *,
    new: bool = False,
    params: dict | None = None,
    metrics: dict | list | None = None,
    tags: dict | None = None,
    artifacts=(),
    model: dict | None = None,
) -> dict:
    """Add what a step logs to its record file and return the whole record. One step may record from several
    commands (the integrity check, then the notebook): the first passes `new` (what the file held is dropped), the
    others add to it. Without a path nothing is written (a sweep member publishes the record at once). Standard
    library only, so a step records without importing MLflow. `metrics`: {name: value}, or (name, value, step)
    triples (a history); `model`: {"path": the saved model.pt, "example": a few input rows, "dtype"}. Written whole
    (a temporary file, then renamed): a record is never half-written."""
    path = Path(path) if path else None
    data = json.loads(path.read_text()) if path and path.is_file() and not new else empty_record()
    now = int(time.time() * 1000)
    data["tags"].update({**slurm_job_tag(step), **(tags or {})})
    data["params"].update(params or {})
    items = metrics.items() if isinstance(metrics, dict) else (metrics or [])
    for item in items:
        name, value, index = (*item, 0) if len(item) == 2 else item
        data["metrics"].append([name, float(value), int(index), now])
    data["artifacts"].extend(str(artifact) for artifact in artifacts)
    if model is not None:
        data["model"] = model
    if path is None:
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
    os.replace(handle.name, path)
    return data


def read_record(path: str | Path) -> dict:
    """A record file as `record` writes it."""
    return {**empty_record(), **json.loads(Path(path).read_text())}
