"""The workflow's JSON schemas (workflow/schemas/*.schema.yaml): the one source of the config's allowed values and
defaults. The helpers read the allowed values from here instead of repeating them; `validate` checks a config or a
section of it and fills in the defaults, as the Snakefile's `validate(config, ...)` does for the whole config.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

# This file is workflow/lib/smkml/schemas.py in a project (rules_lib/lib/smkml/ in the template): two levels up.
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


@functools.cache
def _load(name: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())


def node(name: str, *path: str) -> dict:
    """A part of schema `name` (config), e.g. node("config", "properties", "train")."""
    found = _load(name)
    for key in path:
        found = found[key]
    return found


def allowed(name: str, *path: str) -> tuple[str, ...]:
    """The allowed values (`enum`) at `path` of schema `name`, e.g. allowed("config", "$defs", "runtime")."""
    return tuple(node(name, *path)["enum"])


def validate(data: dict, name: str = "config") -> dict:
    """`data` checked against schema `name` with its defaults filled in (in place); raises Snakemake's
    WorkflowError naming the bad value and what is allowed."""
    from snakemake.utils import validate as snakemake_validate

    snakemake_validate(data, str(SCHEMA_DIR / f"{name}.schema.yaml"))
    return data
