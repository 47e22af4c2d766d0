"""What every job's shell runs first: strict bash, the project's package on PYTHONPATH, and where the steps run
(SMKML_CLUSTER, the cluster profile's name, which tracking and provenance record).

Where the steps run reaches the jobs through this prefix and not as a rule parameter, so that switching profiles
(local, lumi, ...) is recorded as provenance and is never a reason for Snakemake to rerun a step.
"""

from __future__ import annotations

import shlex

CLUSTER_VARIABLE = "SMKML_CLUSTER"

# When a command fails, say so and point to the step's log (the file its output was redirected to: `> logs/x.log`),
# with the log's last lines: Snakemake's own error block shows `message: None` and the command. Bash runs an ERR
# trap with the failing command in BASH_COMMAND (also for a subshell `( ... ) > log`), before `set -e` exits.
FAILURE_TRAP = (
    "trap 's=$?; l=; [[ $BASH_COMMAND =~ \\>\\>?[[:space:]]*([^[:space:]]+\\.log) ]] && l=${{BASH_REMATCH[1]}}; "
    'if [ -n "$l" ]; then echo "error: this step failed (exit status $s); the end of its log $l:" >&2; '
    'tail -n 25 "$l" >&2 || true; echo "error: the whole log of the failed step: $l" >&2; fi' "' ERR; "
)


def shell_prefix(config: dict) -> str:
    """The prefix of every shell command (a validated config). Braces are doubled: Snakemake formats the prefix.
    The MLflow store is not here: it may hold credentials, and Snakemake prints a failed command with its prefix
    (workflow/rules/common.smk sets MLFLOW_TRACKING_URI in the environment instead)."""
    return (
        "set -euo pipefail; "
        + FAILURE_TRAP
        +
        'export PYTHONPATH="$PWD/src${{PYTHONPATH:+:$PYTHONPATH}}"; '
        f"export {CLUSTER_VARIABLE}={shlex.quote(config['cluster']['name'])}; "
    )
