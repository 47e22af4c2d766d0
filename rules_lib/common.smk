# Shared set-up for every rule module: paths from the config, the project's package on PYTHONPATH,
# the MLflow store, and the launch helper. The including Snakefile defines PACKAGE.
import json
import os
import sys
from pathlib import Path


sys.path.insert(0, str(Path(workflow.basedir) / "lib"))
from smkml.launch import training_command


PROJECT_DIR = Path(workflow.basedir).parent
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(PROJECT_DIR / "src"), os.environ.get("PYTHONPATH")) if p
)
os.environ.setdefault("MLFLOW_TRACKING_URI", config["tracking"]["uri"])

RAW_DATA = config["data"]["raw"]
PROCESSED_DIR = config["data"]["processed_dir"]
RUN_FILE = "results/mlflow/run.json"
