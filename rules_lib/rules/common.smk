# Shared set-up of the rule modules (where the steps run, how each step is planned for it, the environment of
# every job). The including Snakefile defines PACKAGE and validates the config, which fills in the defaults.
import functools
import hashlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path

# Where copies of a module's files go when the workflow is used as a Snakemake module from a git repository: one
# folder per version of the module (named after the sha256 of its vendored.json, which lists every file's sha256).
MODULE_COPIES = Path(".snakemake/smkml-module")


def copy_out(name, folder):
    """The module's file `name` (relative to its project root) copied from Snakemake's source cache to
    folder/name, so that helpers import and scripts run under their own names. Written whole and renamed into
    place: jobs parsing the workflow at the same time only ever see complete files, all with the same content.
    """
    target = folder / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(workflow.source_path(f"../../{name}"), partial)
        os.replace(partial, target)
    return target


def module_copy():
    """The folder holding this module version's copied files (None: the workflow runs from its own folder)."""
    if Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).is_dir():
        return None
    manifest = Path(workflow.source_path("../../vendored.json")).read_bytes()
    return MODULE_COPIES / hashlib.sha256(manifest).hexdigest()[:16]


def workflow_folder(copy):
    """workflow/ of this workflow: the folder itself, or, for a module read from a git repository (snakedeploy's
    github(...)), copies of the vendored files of its workflow/ (listed in its vendored.json).
    """
    if copy is None:
        return Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parent
    manifest = json.loads(copy_out("vendored.json", copy).read_text())
    for name in manifest["files"]:
        if name.startswith("workflow/"):
            copy_out(name, copy)
    return copy / "workflow"


def project_file(path):
    """A file of the project, relative to where Snakemake runs; when the workflow is used as a module and the
    deploying folder has no such file, the module's own (e.g. the notebook)."""
    if not AS_MODULE or Path(path).exists():
        return path
    return (
        str(copy_out(path, MODULE_COPY))
        if MODULE_COPY
        else str(workflow.source_path(f"../../{path}"))
    )


MODULE_COPY = module_copy()
WORKFLOW_DIR = workflow_folder(MODULE_COPY)
# Used as a Snakemake module (snakedeploy): the rules come from another folder than the one Snakemake runs in.
AS_MODULE = WORKFLOW_DIR.resolve() != (Path.cwd() / "workflow").resolve()
LIB_DIR = WORKFLOW_DIR / "lib"
sys.path.insert(0, str(LIB_DIR))
from smkml import resources as vocabulary
from smkml import schemas
from smkml.jobs import shell_prefix
from smkml.launch import (
    container_probe,
    launcher_prefix,
    resolve_container,
    training_command,
    with_data_binds,
)

# Jobs run in the project directory with the package on PYTHONPATH and SMKML_CLUSTER set.
shell.prefix(shell_prefix(config))


def load_redaction():
    """The package's redaction module (standard library only), loaded by its path: the workflow redacts with the
    same function as the steps do."""
    import importlib.util

    path = project_file(f"src/{PACKAGE}/redaction.py")
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}_redaction", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


redaction = load_redaction()
# The MLflow store reaches the jobs through the environment (this file is parsed again in every cluster job and
# pod), never through a command line, a parameter or Snakemake's records, since tracking.uri may hold credentials.
# An MLFLOW_TRACKING_URI set by the user wins over the config's.
TRACKING_URI = os.environ.setdefault("MLFLOW_TRACKING_URI", config["tracking"]["uri"])

# Every path from the config stays inside the project (the schema's project_path keys); the shell commands quote
# them ({input:q}, {output:q}, {params.x:q}), so spaces, quotes, `;` or `$(...)` in a path are only characters.
schemas.check_paths(config)
RAW_DATA = config["data"]["raw"]
PROCESSED_DIR = config["data"]["processed_dir"]
RUN_FILE = "results/mlflow/run.json"
# A step that fails before the run exists notes it here (`tracking fail --failure-note`); the workflow marks the run
# FAILED when it stops (onerror in tracking.smk).
FAILURE_NOTE = "results/mlflow/failed_before_run.json"
# What each compute step logs, recorded for the bookkeeping steps that send it to the run (pipeline_run.record).
RECORDS = {
    step: f"results/mlflow/records/{step}.json"
    for step in ("prepare_data", "train_model", "evaluate_model")
}
# A registration names a version in the store's model registry: a single run's, or a sweep's best member's.
REGISTERED_FILE = "results/mlflow/registered_model.json"
SWEEP_REGISTERED_FILE = "results/sweep/mlflow/registered_model.json"

# Where the steps run: the cluster description the profile loads as config (profiles/<name>/cluster.yaml), or
# this machine. Bad requests (account, partition, GPUs, runtime) stop the run here, before anything is submitted.
CLUSTER = config["cluster"]
SLURM_ACCOUNT = vocabulary.account(CLUSTER)
# Kubernetes: every step but the local ones runs in a pod, and pods share no filesystem: inputs and outputs go
# through the S3 bucket of SNAKEMAKE_S3_PREFIX, the MLflow store must be a server the pods reach. What that needs
# from this machine (prefix, S3 credentials and bucket, MLflow store, kubeconfig) is checked here, before the bucket
# is read or anything is submitted, and the settings the pods need go into the run's Kubernetes Secret (registered
# variables; never on a command line). workflow/lib/smkml/pods.py.
PODS = vocabulary.scheduler(CLUSTER) == "kubernetes"
if PODS and workflow.is_main_process:
    from smkml import pods

    S3_SETTINGS = (workflow.storage_provider_settings or {}).get("s3")
    workflow.register_envvars(
        *pods.prepare(
            workflow.storage_settings.default_storage_prefix,
            TRACKING_URI,
            redaction.redact_uri,
            s3_settings=S3_SETTINGS.get_settings() if S3_SETTINGS else None,
            dryrun=workflow.output_settings.dryrun,
        )
    )


def sha256_of(path):
    """Hex sha256 of a file's content."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# What the results depend on: the config without where the steps ran (provenance, never a reason to rerun),
# without the sweep (each member's parameters are in its id; adding members must not start the pipeline over),
# without what only the pods serving or exploring the results need (resources.serve_model, resources.notebook:
# `make deploy-manifests`), so that sizing the model server never retrains, and without credentials (a tracking.uri
# with a token): it is a rule parameter, logged and recorded.
DEPLOY_ONLY = ("serve_model", "notebook")
RUN_CONFIG = json.dumps(
    redaction.redact(
        {
            key: (
                {name: need for name, need in value.items() if name not in DEPLOY_ONLY}
                if key == "resources"
                else value
            )
            for key, value in config.items()
            if key not in ("cluster", "sweep")
        }
    ),
    sort_keys=True,
)


# step("rule", ranks=N): the step of a rule planned once for CLUSTER (its partition chosen there), with `.threads`
# (cores for all its ranks; the pod's CPU on Kubernetes), `.resources` (in the scheduler's terms, growing with each
# retry, which the cluster profiles allow) and `.layout`.
step = functools.cache(
    functools.partial(vocabulary.Step.plan, config, account=SLURM_ACCOUNT)
)


# Training ranks: one per GPU on a cluster (resources.train_model gpus x nodes), else train.processes.
TRAIN_RANKS = vocabulary.ranks(
    vocabulary.step_needs(config, "train_model"),
    CLUSTER,
    config["train"]["processes"],
)
# Training this machine or the ranks cannot carry stops here, before any step runs: first a request the cluster
# cannot give (planning the step checks it), then a global batch the ranks do not divide; locally, more ranks than
# cores (unless train.oversubscribe).
step("train_model", TRAIN_RANKS)
schemas.check_training(
    config,
    TRAIN_RANKS,
    local=vocabulary.scheduler(CLUSTER) == "local",
    cores=len(os.sched_getaffinity(0)),
)


onsuccess:
    # Snakemake (9.27) arms a one-second re-evaluation timer (a threading.Timer, not a daemon) each time it starts
    # jobs, and Python waits for the last one before the process exits: every run that did work ended a second late.
    # The run is done and nothing is left to schedule, so the timers are cancelled.
    for timer in threading.enumerate():
        if isinstance(timer, threading.Timer):
            timer.cancel()
