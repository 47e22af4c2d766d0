"""The project against the cookiecutter template it came from (recorded in .cruft.json).

`cruft check` fails this test when the template has moved on since the project was generated or last updated;
`cruft update` shows the changes (answer `v`) and brings them in. Skipped, with the reason, where it cannot run: no
.cruft.json, cruft not installed, or the template repository unreachable (compute nodes have no internet).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[1]
CRUFT_FILE = PROJECT_DIR / ".cruft.json"


@pytest.mark.template
def test_project_is_up_to_date_with_its_template():
    if not CRUFT_FILE.is_file():
        pytest.skip("no .cruft.json: this project does not record the template it came from")
    cruft = shutil.which("cruft")
    if cruft is None:
        pytest.skip("cruft is not installed: pip install cruft==2.16.0 (it is in requirements.lock)")
    state = json.loads(CRUFT_FILE.read_text())
    template = state["template"]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=10"}
    try:
        reach = subprocess.run(
            ["git", "ls-remote", template, "HEAD"], capture_output=True, text=True, timeout=30, env=env
        )
        unreachable = reach.returncode != 0 and (reach.stderr.strip().splitlines() or ["no answer"])[-1]
    except subprocess.TimeoutExpired:
        unreachable = "no answer within 30 s"
    if unreachable:
        pytest.skip(f"the template {template} is unreachable from here ({unreachable}): cannot check for drift")

    check = subprocess.run([cruft, "check"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300, env=env)
    assert check.returncode == 0, (
        f"the template {template} has changed since this project was generated or last updated "
        f"(at commit {state['commit'][:12]}): commit your work, then `cruft update` shows the changes "
        f"and brings them in.\n{check.stdout}{check.stderr}"
    )
