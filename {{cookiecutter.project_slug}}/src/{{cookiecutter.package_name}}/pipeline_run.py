"""The pipeline's one MLflow run as its steps see it: the id file `tracking start` writes, and logging into it.

Every step that produces numbers resumes the run by id (`resume`), so params, metrics, artifacts and the model all
land in one place. Inside a Slurm job a step's job id becomes a tag on the run (`slurm.job_id.<step>`), which the
provenance step reads back. This module imports nothing of the package: `provenance` and `tracking` build on it.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

SLURM_TAG = "slurm.job_id."


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


@contextmanager
def resume(run_file: str | Path, step: str | None = None):
    """Log into the pipeline's run (created by `tracking start`). Inside a Slurm job the step's job id becomes a tag
    `slurm.job_id.<step>` (step: the module that logs, e.g. `train`, unless named)."""
    import mlflow

    info = read_run_file(run_file)
    mlflow.set_tracking_uri(info["tracking_uri"])
    with mlflow.start_run(run_id=info["run_id"]) as run:
        mlflow.set_tags(slurm_job_tag(step or Path(sys.argv[0]).stem))
        yield run
