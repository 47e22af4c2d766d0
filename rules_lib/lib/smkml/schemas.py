"""The workflow's JSON schemas (workflow/schemas/*.schema.yaml): the one source of the config's allowed values and
defaults. The helpers read the allowed values from here instead of repeating them; `validate` checks a config or a
section of it and fills in the defaults, as the Snakefile's `validate(config, ...)` does for the whole config.
"""

from __future__ import annotations

import functools
import unicodedata
from pathlib import Path, PurePosixPath

import yaml

# This file is workflow/lib/smkml/schemas.py in a project (rules_lib/lib/smkml/ in the template): two levels up.
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


# libyaml's safe loader when PyYAML has it (the lock's wheels do): the schemas are read on every Snakemake start,
# and the pure-Python loader took 0.08 s of a 2 s no-op rerun.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _load(name: str) -> dict:
    return yaml.load((SCHEMA_DIR / f"{name}.schema.yaml").read_text(), Loader=SAFE_LOADER)


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
    """`data` checked against schema `name` with its defaults filled in (in place), and its paths inside the project
    (check_paths); raises Snakemake's WorkflowError naming the bad value and what is allowed."""
    from snakemake.utils import validate as snakemake_validate

    snakemake_validate(data, str(SCHEMA_DIR / f"{name}.schema.yaml"))
    check_paths(data, name)
    return data


PROJECT_PATH = "#/$defs/project_path"


def project_path_keys(name: str = "config") -> list[tuple[str, ...]]:
    """The keys of schema `name` whose values are paths inside the project (`$ref: "#/$defs/project_path"`)."""

    def walk(schema, path):
        if not isinstance(schema, dict):
            return
        if schema.get("$ref") == PROJECT_PATH:
            yield path
        for key, child in schema.get("properties", {}).items():
            yield from walk(child, (*path, key))

    return list(walk(_load(name), ()))


# The one path-like key that may point outside the project, when the config says so explicitly: the key that opts in.
OUTSIDE_PROJECT = {("data", "processed_dir"): ("data", "processed_dir_outside_project")}


def path_problem(value: str, absolute_allowed: bool = False) -> str | None:
    """Why `value` is not a path inside the project (None: it is); `absolute_allowed`: an absolute path is fine."""
    if any(unicodedata.category(c)[0] == "C" for c in value):
        return "contains a control character (a newline, a tab, ...)"
    if "{" in value or "}" in value:
        return "contains a brace, which Snakemake reads as a wildcard"
    path = PurePosixPath(value)
    if absolute_allowed and path.is_absolute():
        if ".." in path.parts:
            return "contains '..': give the absolute path itself"
        return None if path != PurePosixPath("/") else "is the root directory"
    if path.is_absolute() or value.startswith("~"):
        return "is not relative to the project directory"
    if ".." in path.parts:
        return "leaves the project directory ('..')"
    if path == PurePosixPath("."):
        return "is the project directory itself"
    return None


def check_paths(config: dict, name: str = "config") -> None:
    """Every path-like key of the config (project_path_keys) inside the project, else a WorkflowError naming each
    bad key and value: checked before anything runs (workflow/rules/common.smk), as the schema is."""
    def get(keys):
        value = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    problems = []
    for keys in project_path_keys(name):
        value = get(keys)
        opt_in = OUTSIDE_PROJECT.get(keys)
        allowed = bool(opt_in and get(opt_in) is True)
        if isinstance(value, str) and path_problem(value, allowed):
            hint = (f", or an absolute path with {'.'.join(opt_in)}: true (e.g. on /scratch)"
                    if opt_in and not allowed else "")
            problems.append(
                f"config {'.'.join(keys)} {value!r} {path_problem(value, allowed)}: give a path inside the project, "
                f"relative to it, without '..', braces or control characters (e.g. 'data/processed'){hint}"
            )
    if problems:
        from snakemake.exceptions import WorkflowError

        raise WorkflowError("\n".join(problems))


def training_problems(config: dict, ranks: int, *, local: bool, cores: int) -> list[str]:
    """Why the machine cannot carry the training the config asks for (empty: it can): a global batch that the
    `ranks` do not divide, or (`local`) more ranks than `cores` without `train.oversubscribe`."""
    problems = []
    batch = config["train"]["hyperparameters"]["batch_size"]
    if batch % ranks:
        below, above = batch - batch % ranks, batch - batch % ranks + ranks
        problems.append(
            f"config train.hyperparameters.batch_size {batch} is not divisible by the {ranks} training ranks: the "
            f"global batch is split evenly, so give a multiple of {ranks} (e.g. {below or ranks} or {above})"
        )
    if local and ranks > cores and not config["train"].get("oversubscribe", False):
        problems.append(
            f"config train.processes {ranks} is more than the {cores} core(s) this machine lets the run use: give "
            f"1 to {cores}, or set train.oversubscribe: true to start more ranks than cores anyway"
        )
    return problems


def check_training(config: dict, ranks: int, *, local: bool, cores: int) -> None:
    """training_problems as a WorkflowError, before anything runs (workflow/rules/common.smk)."""
    problems = training_problems(config, ranks, local=local, cores=cores)
    if problems:
        from snakemake.exceptions import WorkflowError

        raise WorkflowError("\n".join(problems))
