"""MLflow tracking: one run per pipeline.

The first step creates the run and writes its id to a small JSON file; every later step that produces
numbers resumes that run by id, so params, metrics, artifacts and the model all land in one place.
The tracking URI comes from MLFLOW_TRACKING_URI (the workflow sets it from config/config.yaml).
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path


def flatten(values: dict, prefix: str = "") -> dict[str, str]:
    """{'train': {'epochs': 3}} -> {'train.epochs': '3'} (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def start(run_file: str | Path, experiment: str, params: dict, run_name: str | None = None) -> str:
    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(flatten(params))
        info = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "experiment": experiment,
            "tracking_uri": mlflow.get_tracking_uri(),
        }
    run_file = Path(run_file)
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(info, indent=2) + "\n")
    return info["run_id"]


def read_run_file(run_file: str | Path) -> dict:
    return json.loads(Path(run_file).read_text())


@contextmanager
def resume(run_file: str | Path):
    """Log into the pipeline's run (created by `start`)."""
    import mlflow

    info = read_run_file(run_file)
    mlflow.set_tracking_uri(info["tracking_uri"])
    with mlflow.start_run(run_id=info["run_id"]) as run:
        yield run


def log_to_run(run_file, params: dict | None = None, metrics: dict | None = None, artifacts=()) -> None:
    import mlflow

    with resume(run_file):
        if params:
            mlflow.log_params(flatten(params))
        if metrics:
            mlflow.log_metrics(metrics)
        for path in artifacts:
            mlflow.log_artifact(str(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tracking", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start", help="create the pipeline's MLflow run")
    start_cmd.add_argument("--out", required=True, help="where to write the run id file")
    start_cmd.add_argument("--experiment", required=True)
    start_cmd.add_argument("--params", default="{}", help="JSON object logged as params")
    start_cmd.add_argument("--run-name")
    args = parser.parse_args(argv)
    run_id = start(args.out, args.experiment, json.loads(args.params), args.run_name)
    print(f"MLflow run {run_id} in experiment '{args.experiment}'")


if __name__ == "__main__":
    main()
