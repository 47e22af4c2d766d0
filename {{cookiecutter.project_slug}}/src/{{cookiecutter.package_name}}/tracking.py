"""MLflow tracking: one run per pipeline.

The first step creates the run, tagged with the pipeline's provenance, and writes its id to a small JSON file;
every later step that produces numbers resumes that run by id (`resume`, `log_to_run`; see pipeline_run), so params,
metrics, artifacts and the model all land in one place. The last step registers the model.
The tracking URI comes from MLFLOW_TRACKING_URI (the workflow sets it from config/config.yaml); it is recorded and
printed only without credentials (`redaction`), as are the params.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from . import provenance
from .pipeline_run import read_run_file, resume, slurm_job_tag, tracking_uri
from .redaction import redact, redact_uri


MLFLOW_NAME = re.compile(r"^[\w\-. :/]+$")


def flatten(values: dict, prefix: str = "") -> dict[str, str]:
    """{'train': {'epochs': 3}} -> {'train.epochs': '3'} (MLflow params are flat strings). A mapping with keys
    MLflow does not accept as names (e.g. globs such as `per_class.*`) is kept whole, as JSON."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not all(MLFLOW_NAME.match(str(k)) for k in value):
            flat[name] = json.dumps(value, sort_keys=True)
        elif isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def start(run_file: str | Path, experiment: str, params: dict) -> str:
    """Create the pipeline's run; under `mlflow run` (MLFLOW_RUN_ID set) adopt the run MLflow made."""
    import mlflow

    params = redact(params)
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_params(flatten(params))
        mlflow.set_tags(provenance.to_tags(provenance.collect(".", config=params)))
        mlflow.set_tags(slurm_job_tag("tracking"))
        experiment = mlflow.get_experiment(run.info.experiment_id).name
        info = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "experiment": experiment,
            "tracking_uri": redact_uri(mlflow.get_tracking_uri()),
        }
    run_file = Path(run_file)
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(info, indent=2) + "\n")
    return info["run_id"]


def log_to_run(run_file, params: dict | None = None, metrics: dict | None = None, artifacts=(),
               step: str | None = None) -> None:
    import mlflow

    with resume(run_file, step):
        if params:
            mlflow.log_params(flatten(redact(params)))
        if metrics:
            mlflow.log_metrics(metrics)
        for path in artifacts:
            mlflow.log_artifact(str(path))


def latest_logged_model(info: dict):
    """The newest model logged in the pipeline's run (the train step logs it)."""
    import mlflow

    models = mlflow.search_logged_models(
        experiment_ids=[info["experiment_id"]],
        filter_string=f"source_run_id = '{info['run_id']}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        output_format="list",
    )
    if not models:
        raise SystemExit(f"error: run {info['run_id']} has no logged model: run the train step first")
    return models[0]


def register(run_file: str | Path, name: str, metrics: dict, provenance_tags: dict) -> dict:
    """Register the run's model as a new version of `name`, tagged with the run's provenance and test scores."""
    import mlflow

    info = read_run_file(run_file)
    mlflow.set_tracking_uri(tracking_uri(info))
    logged = latest_logged_model(info)
    tags = {**provenance_tags, "mlflow.run_id": info["run_id"]}
    tags.update({f"test_{key}": str(metrics[key]) for key in ("accuracy", "macro_f1") if key in metrics})
    version = mlflow.register_model(f"models:/{logged.model_id}", name, tags=tags)
    return {
        "name": name,
        "version": int(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "model_id": logged.model_id,
        "run_id": info["run_id"],
        "tracking_uri": info["tracking_uri"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.tracking", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start", help="create the pipeline's MLflow run")
    start_cmd.add_argument("--out", required=True, help="where to write the run id file")
    start_cmd.add_argument("--experiment", required=True)
    start_cmd.add_argument("--params", default="{}", help="JSON object logged as params")
    register_cmd = sub.add_parser("register", help="register the run's model in the MLflow model registry")
    register_cmd.add_argument("--run-file", required=True)
    register_cmd.add_argument("--name", required=True, help="registered model name")
    register_cmd.add_argument("--metrics", required=True, help="metrics JSON of the evaluate step")
    register_cmd.add_argument("--provenance", required=True, help="provenance JSON of the run")
    register_cmd.add_argument("--out", required=True, help="where to write name, version and model URI")
    args = parser.parse_args(argv)
    if args.command == "start":
        run_id = start(args.out, args.experiment, json.loads(args.params))
        print(f"MLflow run {run_id} in experiment '{args.experiment}'")
        return
    prov = json.loads(Path(args.provenance).read_text())
    registered = register(args.run_file, args.name, json.loads(Path(args.metrics).read_text()),
                          provenance.to_tags(prov))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(registered, indent=2) + "\n")
    print(f"registered {registered['model_uri']} (model {registered['model_id']}, run {registered['run_id']})")


if __name__ == "__main__":
    main()
