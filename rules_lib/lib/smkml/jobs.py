"""What every job's shell runs first: strict bash, the project's package on PYTHONPATH, the MLflow store, and where
the steps run (SMKML_CLUSTER, the cluster profile's name, which tracking and provenance record).

Where the steps run reaches the jobs through this prefix and not as a rule parameter, so that switching profiles
(local, lumi, ...) is recorded as provenance and is never a reason for Snakemake to rerun a step.
"""

from __future__ import annotations

import shlex

CLUSTER_VARIABLE = "SMKML_CLUSTER"


def shell_prefix(config: dict) -> str:
    """The prefix of every shell command (a validated config). Braces are doubled: Snakemake formats the prefix.
    An MLFLOW_TRACKING_URI set by the user wins over the config's `tracking.uri`."""
    return (
        "set -euo pipefail; "
        'export PYTHONPATH="$PWD/src${{PYTHONPATH:+:$PYTHONPATH}}"; '
        f"export MLFLOW_TRACKING_URI=${{{{MLFLOW_TRACKING_URI:-{shlex.quote(config['tracking']['uri'])}}}}}; "
        f"export {CLUSTER_VARIABLE}={shlex.quote(config['cluster']['name'])}; "
    )
