"""How `make test` shares the suite between pytest-xdist workers (`-n 2 --dist loadgroup --no-loadscope-reorder`).

The suite spends much of its time waiting: the Slurm executor plugin polls the cluster every 5-80 s, the image
build downloads, and each pipeline step starts Python. Two workers fill those waits with the other tests. What must
stay together stays together:

- every test that uses the session's mini-LUMI cluster (`slurm_cluster`) runs on one worker: one cluster per
  session, its network namespaces and ports used by one process;
- the tests that share a module-scoped fixture (a trained project, a served model) run on one worker, in their
  module's order, so that fixture is built once;
- every other test is a unit of its own.

Units are handed out in the order below (longest first, so that short tests fill the end): the mini-LUMI group, then
the modules that run whole pipelines (marker `e2e`), then the other shared-fixture modules, then single tests. A
serial run (`pytest` without `-n`) keeps pytest's order.
"""

from __future__ import annotations

import pytest

SHARED_SCOPES = {"module", "class", "package"}
CLUSTER_GROUP = "mini-lumi"


def group_of(item: pytest.Item) -> tuple[int, str | None]:
    """(rank, group name) of one test: its place in the hand-out order and the unit it belongs to (None: alone)."""
    if "slurm_cluster" in item.fixturenames:
        return 0, CLUSTER_GROUP
    fixtures = getattr(item, "_fixtureinfo", None)
    definitions = fixtures.name2fixturedefs.values() if fixtures else ()
    if any(d.scope in SHARED_SCOPES for defs in definitions for d in defs):
        return (1 if item.get_closest_marker("e2e") else 2), item.nodeid.split("::", 1)[0]
    return 3, None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # xdist's workers see dist "no" and loadgroup True (xdist/remote.py setup_config); the controller the option.
    if not (getattr(config.option, "loadgroup", False) or getattr(config.option, "dist", "no") == "loadgroup"):
        return
    ranked = []
    for index, item in enumerate(items):
        rank, group = group_of(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
        ranked.append((rank, index, item))
    items[:] = [item for _, _, item in sorted(ranked, key=lambda entry: entry[:2])]
