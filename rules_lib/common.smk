# Shared set-up for every rule module: paths from the config, the launch helper, and the environment
# of every job (the project's src/ on PYTHONPATH, the MLflow store). The including Snakefile defines PACKAGE.
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "lib"))
from smkml.launch import training_command

# Jobs run in the project directory (braces doubled: Snakemake formats the prefix); an MLFLOW_TRACKING_URI set by the user wins over the config.
shell.prefix(
    "set -euo pipefail; "
    'export PYTHONPATH="$PWD/src${{PYTHONPATH:+:$PYTHONPATH}}"; '
    "export MLFLOW_TRACKING_URI=${{MLFLOW_TRACKING_URI:-"
    + shlex.quote(config["tracking"]["uri"])
    + "}}; "
)

RAW_DATA = config["data"]["raw"]
PROCESSED_DIR = config["data"]["processed_dir"]
RUN_FILE = "results/mlflow/run.json"
