"""How `make test` shares the suite between pytest-xdist workers (`-n 2 --dist loadgroup --no-loadscope-reorder`).

The suite spends much of its time waiting: the Slurm executor plugin polls the cluster every 5-80 s, the image
build downloads, and each pipeline step starts Python. Two workers fill those waits with the other tests. What must
stay together stays together:

- every test that uses the session's mini-LUMI cluster (`slurm_cluster`) runs on one worker: one cluster per
  session, its network namespaces and ports used by one process;
- the tests that share a module-scoped fixture (a trained project, a served model) run on one worker, in their
  module's order, so that fixture is built once;
- every other test is a unit of its own.

Units are handed out in the order below (longest first, so that short tests fill the end): the mini-LUMI group and
the cold build of the project's container image (marker `image_build`: the first two units, so one worker each),
then the modules that run whole pipelines (marker `e2e`), then the other shared-fixture modules, then single tests.
Within the mini-LUMI group the tests that run the image (marker `container`) come last: by then the other worker
has built it and they find it in the cache, instead of the cluster's worker building it (about 10 min cold) while
its Slurm tests wait. A serial run (`pytest` without `-n`) keeps pytest's order.

How: each worker works out the groups from its collected tests (fixtures and markers are only known there) and
writes them to a file the controller gave it; the controller's scheduler (xdist's load-scope scheduler, which hands
out whole units) reads them. xdist's own `xdist_group` marks cannot be used: pytest-xdist 3.8 renames the test ids
through `item._nodeid`, which pytest 9.2 no longer reads, so its groups are silently ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

SHARED_SCOPES = {"module", "class", "package"}
CLUSTER_GROUP = "mini-lumi"
GROUPS_KEY = "smkml_groups_dir"


def group_of(item: pytest.Item) -> tuple[int, str | None]:
    """(rank, group name) of one test: its place in the hand-out order and the unit it belongs to (None: alone)."""
    if "slurm_cluster" in item.fixturenames:
        return 0, CLUSTER_GROUP
    if item.get_closest_marker("image_build"):
        return 0, item.nodeid.split("::", 1)[0]
    fixtures = getattr(item, "_fixtureinfo", None)
    definitions = fixtures.name2fixturedefs.values() if fixtures else ()
    if any(d.scope in SHARED_SCOPES for defs in definitions for d in defs):
        return (1 if item.get_closest_marker("e2e") else 2), item.nodeid.split("::", 1)[0]
    return 3, None


def uses_image_in_cluster(item: pytest.Item, group: str | None) -> bool:
    """A mini-LUMI test that runs the container image: last in its group (the image is built beside it)."""
    return group == CLUSTER_GROUP and item.get_closest_marker("container") is not None


def _loadgroup(config: pytest.Config) -> bool:
    # xdist's workers see dist "no" and loadgroup True (xdist/remote.py setup_config); the controller the option.
    return bool(getattr(config.option, "loadgroup", False) or getattr(config.option, "dist", "no") == "loadgroup")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a worker: order the tests by rank (the same order in every worker) and write each one's group."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or GROUPS_KEY not in workerinput or not _loadgroup(config):
        return
    ranked = sorted(((*group_of(item), index, item) for index, item in enumerate(items)),
                    key=lambda entry: (entry[0], uses_image_in_cluster(entry[3], entry[1]), entry[2]))
    items[:] = [item for _, _, _, item in ranked]
    groups = {item.nodeid: group for _, group, _, item in ranked if group is not None}
    target = Path(workerinput[GROUPS_KEY]) / f"{workerinput['workerid']}.json"
    partial = target.with_suffix(".tmp")
    partial.write_text(json.dumps(groups))
    os.replace(partial, target)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """In the controller: where the worker writes its groups."""
    config = node.config
    if not hasattr(config, "_smkml_groups_dir"):
        config._smkml_groups_dir = tempfile.mkdtemp(prefix="smkml-xdist-groups-")
    node.workerinput[GROUPS_KEY] = config._smkml_groups_dir


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if getattr(config.option, "dist", "no") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """Whole units to one worker; a unit is a group written by the workers, or one test."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = {}
                for path in sorted(Path(config._smkml_groups_dir).glob("*.json")):
                    self.groups.update(json.loads(path.read_text()))
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = getattr(config, "_smkml_groups_dir", None)
    if directory:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
