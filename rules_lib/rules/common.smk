# Shared set-up for every rule module: where the steps run, how each step is planned for it, and the environment
# of every job. The including Snakefile defines PACKAGE and validates the config (which fills in the defaults).
import functools
import json
import sys
from pathlib import Path

# workflow/lib/, next to this module's folder (found so also when the workflow is used as a Snakemake module).
LIB_DIR = (
    Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parent / "lib"
)
sys.path.insert(0, str(LIB_DIR))
from smkml import resources as vocabulary
from smkml.jobs import shell_prefix
from smkml.launch import container_probe, resolve_container, training_command

# Jobs run in the project directory with the package on PYTHONPATH, the MLflow store and SMKML_CLUSTER set.
shell.prefix(shell_prefix(config))

RAW_DATA = config["data"]["raw"]
PROCESSED_DIR = config["data"]["processed_dir"]
RUN_FILE = "results/mlflow/run.json"

# Where the steps run: the cluster description the profile loads as config (profiles/<name>/cluster.yaml), or
# this machine. Bad requests (account, partition, GPUs, runtime) stop the run here, before anything is submitted.
CLUSTER = config["cluster"]
SLURM_ACCOUNT = vocabulary.account(CLUSTER)
# What the results depend on: the config without where the steps ran (provenance, never a reason to rerun).
RUN_CONFIG = json.dumps(
    {key: value for key, value in config.items() if key != "cluster"}, sort_keys=True
)


# step("rule", ranks=N): the step of a rule planned once for CLUSTER (its partition chosen there), with `.threads`
# (cores for all its ranks; the pod's CPU on Kubernetes), `.resources` (in the scheduler's terms, growing with each
# retry, which the cluster profiles allow) and `.srun_options`.
step = functools.cache(
    functools.partial(vocabulary.Step.plan, config, account=SLURM_ACCOUNT)
)


onstart:
    # Real runs only (not -n); jobs start with --no-hooks, so this runs once, where Snakemake was started.
    vocabulary.check_executor(CLUSTER, workflow.executor_plugin.name)
    vocabulary.check_pod_image(
        CLUSTER, workflow.remote_execution_settings.container_image
    )


# Training ranks: one per GPU on a cluster (resources.train_model gpus x nodes), else train.processes.
TRAIN_RANKS = vocabulary.ranks(
    vocabulary.step_needs(config, "train_model"),
    CLUSTER,
    config["train"]["processes"],
)
