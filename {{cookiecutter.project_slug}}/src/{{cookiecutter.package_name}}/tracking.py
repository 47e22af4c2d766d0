"""MLflow tracking: one run per pipeline.

The first step creates the run, tagged with the pipeline's provenance, and writes its id to a small JSON file. The
compute steps record what they log in JSON records (`pipeline_run.record`); `publish` sends records to the run (the
bookkeeping steps on the submitting host, or a sweep member's step at once), so params, metrics, artifacts and the
model all land in one place. The last step puts the provenance on the run and registers the model.
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
from .pipeline_run import FAILED_STEP_TAG, read_record, read_run_file, record, resume, slurm_job_tag, tracking_uri
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
        mlflow.set_tags(provenance.to_tags(provenance.collect(".", config=params), data=False))
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


def start_child(run_file: str | Path, parent_run_file: str | Path, name: str, params: dict) -> str:
    """A sweep member's run, nested under the sweep's parent run (tag mlflow.parentRunId), with the member's
    parameters; it stays RUNNING until its train and evaluate steps have logged into it (`fail` marks it FAILED)."""
    import mlflow

    parent = read_run_file(parent_run_file)
    mlflow.set_tracking_uri(tracking_uri(parent))
    client = mlflow.MlflowClient()
    run = client.create_run(
        parent["experiment_id"],
        run_name=name,
        tags={"mlflow.parentRunId": parent["run_id"], "sweep.member": name, **slurm_job_tag("sweep_member")},
    )
    # Its training hyper-parameters under their config path, and the prepare notebook's parameters it changes
    # (`prepare.seed`, ...) as they are named in the sweep.
    training = {key: value for key, value in params.items() if not key.startswith("prepare.")}
    prepare = {key: value for key, value in params.items() if key.startswith("prepare.")}
    for key, value in {**flatten(training, "train.hyperparameters."), **prepare}.items():
        client.log_param(run.info.run_id, key, value)
    info = {**parent, "run_id": run.info.run_id, "parent_run_id": parent["run_id"], "member": name}
    run_file = Path(run_file)
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(info, indent=2) + "\n")
    return info["run_id"]


def settle(run_file: str | Path, note: str | Path) -> str | None:
    """Mark the run FAILED for a failure noted in `note` before the run existed (`mark_failed`); the note is
    removed. None when nothing was noted."""
    note = Path(note)
    if not note.is_file():
        return None
    noted = json.loads(note.read_text())
    outcome = (mark_failed(run_file, noted["step"], noted["new_run"]) if Path(run_file).is_file()
               else f"step {noted['step']} failed before the MLflow run was created, and no run was created")
    note.unlink(missing_ok=True)
    return outcome


def mark_failed(run_file: str | Path, step: str | None = None, new_run: bool = False,
                note: str | Path | None = None) -> str:
    """Mark the run FAILED, with the failing step as tag `pipeline.failed_step`, so the MLflow UI shows what broke
    (a sweep member among its siblings, the pipeline's run). With `new_run` (a step before the run holds its model:
    prepare, train) the run file is removed, so the rerun starts a new run and this one stays FAILED; it is removed
    too when the store no longer has the run (deleted or replaced), since nothing can log to it any more.
    Without a run file yet (the prepare step runs beside the step that creates the run) the failure is written to
    `note`, if given, and marked when the run is there (`settle`, which the workflow calls when it stops on an
    error). Returns what happened, in words."""
    if not Path(run_file).is_file():
        if note is None:
            return f"no MLflow run to mark FAILED ({run_file} is not there)"
        note = Path(note)
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(json.dumps({"step": step, "new_run": new_run}) + "\n")
        return f"the MLflow run is still being created: it is marked FAILED once it is (noted in {note})"
    import mlflow
    from mlflow.exceptions import MlflowException

    info = read_run_file(run_file)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(info))
    try:
        if step:
            client.set_tag(info["run_id"], FAILED_STEP_TAG, step)
        client.set_terminated(info["run_id"], status="FAILED")
        outcome = f"MLflow run {info['run_id']} is marked FAILED" + (f" ({FAILED_STEP_TAG}={step})" if step else "")
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        outcome = f"MLflow run {info['run_id']} is not in the store {info['tracking_uri']} (deleted or replaced)"
        new_run = True
    if new_run:
        Path(run_file).unlink(missing_ok=True)
        outcome += "; the next run starts a new MLflow run"
    return outcome


# MLflow takes at most this many metrics in one batch (a long training's history is sent in several).
METRICS_PER_BATCH = 1000


def log_model(model: dict):
    """Log the trained model a record names ({"path", "example", "dtype"}) as the run's model, exported with
    torch.export (`pt2`) so that it loads and serves without this project's code."""
    import mlflow
    import numpy as np
    import torch

    from . import model as model_lib

    net, _ = model_lib.load(model["path"])
    return mlflow.pytorch.log_model(
        net,
        name="model",
        input_example=np.asarray(model["example"], dtype=model.get("dtype", "float32")),
        serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )


def publish(run_file: str | Path, records: list, step: str = "publish") -> dict:
    """Send records (dicts, or paths of record files) to the pipeline's run, in order: tags, params (redacted,
    flattened), metrics with their steps, artifacts, the model. Returns {"run_id", "model_id"} (None without a
    model) of what was sent."""
    import mlflow
    from mlflow.entities import Metric

    logged = {"run_id": None, "model_id": None, "records": len(records)}
    with resume(run_file, step) as run:
        client = mlflow.MlflowClient()
        logged["run_id"] = run.info.run_id
        for entry in records:
            entry = read_record(entry) if isinstance(entry, (str, Path)) else entry
            if entry["tags"]:
                mlflow.set_tags(entry["tags"])
            if entry["params"]:
                mlflow.log_params(flatten(redact(entry["params"])))
            metrics = [Metric(name, value, stamp, index) for name, value, index, stamp in entry["metrics"]]
            for first in range(0, len(metrics), METRICS_PER_BATCH):
                client.log_batch(run.info.run_id, metrics=metrics[first:first + METRICS_PER_BATCH])
            for path in entry["artifacts"]:
                mlflow.log_artifact(str(path))
            if entry["model"]:
                logged["model_id"] = log_model(entry["model"]).model_id
    return logged


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
    register_cmd.add_argument("--run-file", help="the run whose model is registered")
    register_cmd.add_argument("--name", required=True, help="registered model name")
    register_cmd.add_argument("--metrics", help="metrics JSON of the evaluate step")
    register_cmd.add_argument("--best", help="a sweep's best.json: its best member's run and metrics")
    register_cmd.add_argument("--provenance", help="provenance JSON of the run: put on the run (tags and artifact) "
                              "and its tags on the version")
    register_cmd.add_argument("--records", nargs="*", default=[],
                              help="records to send to the run first (the evaluation's, `publish`)")
    register_cmd.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                              help="another tag on the version (e.g. the sweep's parent run)")
    child_cmd = sub.add_parser("start-child", help="create a sweep member's run under the sweep's parent run")
    child_cmd.add_argument("--out", required=True, help="where to write the member's run id file")
    child_cmd.add_argument("--parent-run-file", required=True)
    child_cmd.add_argument("--name", required=True, help="the member id")
    child_cmd.add_argument("--params", required=True, help="JSON file of the member's hyper-parameters")
    settle_cmd = sub.add_parser("settle", help="mark the run FAILED for a failure noted before it existed")
    settle_cmd.add_argument("--run-file", required=True)
    settle_cmd.add_argument("--note", required=True, help="where `fail --failure-note` noted the failure")
    publish_cmd = sub.add_parser("publish", help="send the steps' records to the pipeline's MLflow run")
    publish_cmd.add_argument("--run-file", required=True)
    publish_cmd.add_argument("--out", required=True, help="where to write what was sent (run id, model id)")
    publish_cmd.add_argument("records", nargs="+", help="record files (pipeline_run.record), sent in this order")
    fail_cmd = sub.add_parser("fail", help="mark a run FAILED after a step failed, naming the step")
    fail_cmd.add_argument("--run-file", required=True)
    fail_cmd.add_argument("--step", required=True, help="the step (rule) that failed")
    fail_cmd.add_argument("--new-run", action="store_true",
                          help="remove the run file: the rerun starts a new run (the step ran before the model)")
    fail_cmd.add_argument("--notebook", help="where the failed step's executed notebook is kept")
    fail_cmd.add_argument("--failure-note", help="without a run file yet: note the failure here, for `settle`")
    register_cmd.add_argument("--out", required=True, help="where to write name, version and model URI")
    args = parser.parse_args(argv)
    if args.command == "start":
        run_id = start(args.out, args.experiment, json.loads(args.params))
        print(f"MLflow run {run_id} in experiment '{args.experiment}'")
        return
    if args.command == "start-child":
        run_id = start_child(args.out, args.parent_run_file, args.name, json.loads(Path(args.params).read_text()))
        print(f"MLflow run {run_id} for sweep member {args.name}")
        return
    if args.command == "settle":
        outcome = settle(args.run_file, args.note)
        if outcome:
            print(f"error: {outcome}")
        return
    if args.command == "publish":
        logged = publish(args.run_file, args.records)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(logged, indent=2) + "\n")
        model = f", model {logged['model_id']}" if logged["model_id"] else ""
        print(f"sent {len(args.records)} record(s) to MLflow run {logged['run_id']}{model}")
        return
    if args.command == "fail":
        outcome = mark_failed(args.run_file, args.step, args.new_run, args.failure_note)
        kept = (f"; the executed notebook, with the error, is kept in {args.notebook}"
                if args.notebook and Path(args.notebook).is_file() else "")
        print(f"error: step {args.step} failed{kept}; {outcome}")
        return
    if args.best:  # a sweep's best member: its run file, its metrics next to it
        args.run_file = json.loads(Path(args.best).read_text())["run_file"]
        args.metrics = str(Path(args.run_file).parent / "metrics.json")
    if not (args.run_file and args.metrics):
        parser.error("register needs --run-file and --metrics, or --best")
    prov = json.loads(Path(args.provenance).read_text()) if args.provenance else None
    tags = provenance.to_tags(prov) if prov is not None else {}
    # The provenance goes on the run as one more record: its tags, and the file as the artifact provenance.json.
    on_run = [record(None, "register", tags=tags, artifacts=[args.provenance])] if prov is not None else []
    if args.records or on_run:
        publish(args.run_file, [*args.records, *on_run], step="register")
    tags.update(dict(tag.split("=", 1) for tag in args.tag))
    parent = read_run_file(args.run_file).get("parent_run_id")
    if parent:
        tags["sweep.parent_run_id"] = parent
    registered = register(args.run_file, args.name, json.loads(Path(args.metrics).read_text()), tags)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(registered, indent=2) + "\n")
    print(f"registered {registered['model_uri']} (model {registered['model_id']}, run {registered['run_id']})")


if __name__ == "__main__":
    main()
