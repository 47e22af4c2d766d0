# Shared set-up for every rule module: paths from the config, the launch helper, and the environment
# of every job (the project's src/ on PYTHONPATH, the MLflow store). The including Snakefile defines PACKAGE.
import functools
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "lib"))
from smkml import resources as vocabulary
from smkml.launch import training_command

# Jobs run in the project directory (braces doubled: Snakemake formats the prefix); an MLFLOW_TRACKING_URI set by the user wins over the config.
# SMKML_CLUSTER: where the pipeline runs (the profile's name, config `profile`), recorded in the provenance.
shell.prefix(
    "set -euo pipefail; "
    'export PYTHONPATH="$PWD/src${{PYTHONPATH:+:$PYTHONPATH}}"; '
    "export MLFLOW_TRACKING_URI=${{MLFLOW_TRACKING_URI:-"
    + shlex.quote(config["tracking"]["uri"])
    + "}}; "
    + "export SMKML_CLUSTER="
    + shlex.quote(str(config.get("profile", "")))
    + "; "
)

RAW_DATA = config["data"]["raw"]
PROCESSED_DIR = config["data"]["processed_dir"]
RUN_FILE = "results/mlflow/run.json"

# The cluster description the profile names (`config: cluster: lumi`); none when running locally.
# Bad requests (account, partition, GPUs, runtime) stop the run here, before anything is submitted.
CLUSTER = vocabulary.load_cluster(
    config.get("cluster"), Path(workflow.basedir).parent / "profiles"
)
SLURM_ACCOUNT = vocabulary.account(CLUSTER) if CLUSTER else ""

# step_resources("rule", tasks=N): what a rule needs (config `resources:`), in the scheduler's terms;
# runtime and memory grow with each retry (the cluster profiles set `retries:`).
step_resources = functools.partial(
    vocabulary.step_resources, config, CLUSTER, SLURM_ACCOUNT
)
# step_threads("rule", tasks=N): cores for all N ranks (`cpus` each); on Kubernetes the pod's CPU request.
step_threads = functools.partial(vocabulary.step_threads, config)


onstart:
    # Real runs only (not -n); jobs start with --no-hooks, so this runs once, where Snakemake was started.
    vocabulary.check_pod_image(
        CLUSTER, workflow.remote_execution_settings.container_image
    )


# Training ranks: one per GPU on a cluster (resources.train_model gpus x nodes), else train.processes.
TRAIN_NEEDS = vocabulary.step_needs(config, "train_model")
TRAIN_RANKS = (
    vocabulary.ranks(TRAIN_NEEDS, config["train"]["processes"])
    if CLUSTER
    else config["train"]["processes"]
)
