"""docs/reliability.md, written from the tests themselves so that it cannot drift from them.

A test of a bad input or a fault carries the marker

    @pytest.mark.reliability(tried="...", sees="...", left="...")

(`left`: what is left behind; "nothing" by default; `show_expected=False` where the expected message depends on
the machine, such as its number of cores). Every collected case of it (each parameter set of a
parametrized test) is one row of the table: its case id, and for parametrized tests the message the test expects
(a `message`/`expected` parameter) as what the user sees. `python -m pytest --collect-only -q
--reliability-table=docs/reliability.md` writes the page; tests/test_reliability_table.py checks it is current.
"""

from __future__ import annotations

from pathlib import Path

HEADER = """# Reliability: bad input and faults

Every bad input and fault the template's test suite tries, what the user sees, and what is left behind. Generated
from the tests (the `reliability` marker on each; `make reliability-table` rewrites this page, and the test suite
fails when it is out of date), so every row is checked on every CI run. A case is one parameter set of a test.

"""

EXPECTED_PARAMETERS = ("message", "expected", "named")


def cell(text: object) -> str:
    """Markdown table cell text: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def code(text: str) -> str:
    """Markdown inline code (double backticks around text that holds one)."""
    text = cell(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def rows(items) -> list[dict[str, str]]:
    table = []
    for item in items:
        marker = item.get_closest_marker("reliability")
        if marker is None:
            continue
        callspec = getattr(item, "callspec", None)
        sees = marker.kwargs["sees"]
        shown = marker.kwargs.get("show_expected", True)  # False where the message depends on the machine
        expected = next((callspec.params[name] for name in EXPECTED_PARAMETERS
                         if shown and callspec and isinstance(callspec.params.get(name), (str, list))), None)
        if isinstance(expected, list):
            expected = " … ".join(str(part) for part in expected)
        if expected:
            sees = f"{sees}: {code(expected)}"
        table.append({
            "tried": marker.kwargs["tried"],
            "case": code(callspec.id) if callspec else "",
            "sees": sees,
            "left": marker.kwargs.get("left", "nothing"),
            "test": f"`{item.nodeid.split('[')[0]}`",
        })
    return table


def render(table: list[dict[str, str]]) -> str:
    lines = [HEADER, f"{len(table)} cases.\n\n",
             "| # | What is tried | Case | What the user sees | Left behind | Test |\n",
             "|---|---|---|---|---|---|\n"]
    for number, row in enumerate(table, 1):
        lines.append(f"| {number} | {cell(row['tried'])} | {row['case']} | {cell(row['sees'])} | "
                     f"{cell(row['left'])} | {row['test']} |\n")
    return "".join(lines)


def pytest_addoption(parser):
    parser.addoption("--reliability-table", metavar="PATH", default=None,
                     help="write the reliability table (docs/reliability.md) of the collected tests to PATH")


def pytest_collection_modifyitems(session, config, items):
    path = config.getoption("--reliability-table")
    if path:
        Path(path).write_text(render(rows(items)))
