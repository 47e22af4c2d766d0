"""docs/reliability.md is the table the tests' reliability markers give today (tests/reliability.py)."""

from __future__ import annotations

import subprocess
import sys

from conftest import TEMPLATE_DIR, command_env


def test_reliability_page_is_current(tmp_path):
    written = tmp_path / "reliability.md"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         f"--reliability-table={written}"],
        cwd=TEMPLATE_DIR, env=command_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = written.read_text()
    cases = int(table.split(" cases.", 1)[0].rsplit("\n", 1)[-1])
    assert cases >= 50, f"the issue asks for at least 50 bad inputs and faults; the tests try {cases}"
    page = (TEMPLATE_DIR / "docs/reliability.md").read_text()
    assert page == table, "docs/reliability.md is out of date: run `make reliability-table` and commit it"
