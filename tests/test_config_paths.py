"""Paths in config/config.yaml are data: every path-like key stays inside the project (refused at validation, naming
the key, before anything runs), and every path reaches the shell quoted, so spaces, quotes, `;` and `$(...)` in a
path are only characters of a file name.

The path-like keys are those the config schema marks as `$ref: "#/$defs/project_path"` (smkml.schemas)."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest
import yaml
from snakemake.exceptions import WorkflowError

from conftest import generate, project_config, run
from smkml import schemas

PATH_KEYS = [".".join(keys) for keys in schemas.project_path_keys()]
# A value that a shell would run if it were pasted into a command line unquoted.
HOSTILE = "my dir; $(touch PWNED) `touch PWNED` \"q\" 'x' &"
ESCAPING = {
    "../../outside": "leaves the project directory ('..')",
    "data/../../outside": "leaves the project directory ('..')",
    "/tmp/outside": "is not relative to the project directory",
    "~/outside": "is not relative to the project directory",
    "data/line\nbreak": "contains a control character",
    "data/{wildcard}": "contains a brace",
}


def test_every_path_like_key_is_marked_in_the_schema():
    assert set(PATH_KEYS) == {"data.raw", "data.processed_dir", "prepare.notebook", "reproduce.reference"}


def with_value(key, value):
    section, name = key.split(".")
    config = project_config()
    return {section: {**config[section], name: value}}


@pytest.mark.parametrize("key", PATH_KEYS)
@pytest.mark.parametrize("value", list(ESCAPING), ids=list(ESCAPING))
@pytest.mark.reliability(
    tried="A path-like config key pointing outside the project",
    sees="an error naming the key and the value, before anything runs",
    left="nothing",
)
def test_path_outside_the_project_is_refused_naming_the_key(key, value):
    if key == "prepare.notebook":
        value += ".ipynb"
    with pytest.raises(WorkflowError) as error:
        project_config(**with_value(key, value))
    assert f"config {key} {value!r} {ESCAPING[value.removesuffix('.ipynb')]}" in str(error.value)


@pytest.mark.parametrize("key", PATH_KEYS)
@pytest.mark.reliability(
    tried="Spaces, quotes, `;`, `$()` and newlines in a path-like config key",
    sees="accepted: the value is data",
    left="nothing extra",
)
def test_odd_characters_inside_the_project_are_allowed(key):
    value = f"data/{HOSTILE}" + (".ipynb" if key == "prepare.notebook" else "")
    assert project_config(**with_value(key, value))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("paths"), project_name="Path Study")


def set_config(project, **values):
    path = project / "config/config.yaml"
    config = yaml.safe_load(path.read_text())
    for key, value in values.items():
        section, name = key.split(".")
        config[section][name] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


@pytest.mark.parametrize("value", ["../outside", "/tmp/smkml-outside-of-project"])
@pytest.mark.reliability(
    tried="`snakemake` with a data path outside the project",
    sees="an error naming the key, exit 1",
    left="nothing: no logs, no results",
)
def test_workflow_stops_before_anything_runs(project, value, tmp_path):
    original = (project / "config/config.yaml").read_text()
    try:
        set_config(project, **{"data.processed_dir": value})
        result = run(["snakemake", "--profile", "profiles/local"], project, check=False)
    finally:
        (project / "config/config.yaml").write_text(original)
    assert result.returncode != 0
    assert f"config data.processed_dir '{value}'" in result.stderr + result.stdout
    assert not (project.parent / "outside").exists() and not (project / "results/mlflow").exists()
    assert not (project / "logs").exists() or not any((project / "logs").iterdir())


@pytest.mark.reliability(
    tried="Shell syntax in every path-like config key (whole pipeline)",
    sees="the pipeline runs; no command executed from a value",
    left="the run's results, at the odd paths",
)
def test_hostile_paths_are_quoted_in_every_command(project):
    """Every path-like key holding shell syntax: the dry run plans every job, the real run of the data steps writes
    the files under those names, and nothing the syntax would run has run."""
    original = (project / "config/config.yaml").read_text()
    notebook = f"notebooks/{HOSTILE}.ipynb"
    processed = f"data/{HOSTILE}"
    reference = f"results/{HOSTILE}.json"
    raw = f"data/raw/{HOSTILE}.csv"
    shutil.copy(project / "notebooks/prepare.ipynb", project / notebook)
    shutil.copy(project / "data/raw/digits.csv.dvc", project / f"{raw}.dvc")  # the fetch step's input
    try:
        set_config(project, **{"data.raw": raw, "data.processed_dir": processed, "prepare.notebook": notebook,
                               "reproduce.reference": reference})
        (project / reference).parent.mkdir(parents=True, exist_ok=True)
        (project / reference).write_text("{}")
        dry = run(["snakemake", "-n", "-p", "--profile", "profiles/local", "all", "compare_to_reference"], project)
        for job in ("fetch_data", "prepare_data", "train_model", "evaluate_model", "compare_to_reference"):
            assert job in dry.stdout
        for path in (f"{raw}.dvc", raw, notebook, f"{processed}/train.npz", f"{processed}/test.npz", reference):
            assert shlex.quote(path) in dry.stdout, f"{path} is not quoted in the commands"
        # The real run with the DVC-tracked file where its .dvc file says it is.
        set_config(project, **{"data.raw": "data/raw/digits.csv"})
        real = run(["snakemake", "--profile", "profiles/local", "prepare_data"], project)
        assert (project / processed / "train.npz").is_file(), real.stdout + real.stderr
        assert (project / processed / "test.npz").is_file()
        assert "prepare_data" in real.stdout + real.stderr
    finally:
        (project / "config/config.yaml").write_text(original)
    assert not list(project.parent.rglob("PWNED")), "shell syntax in a path was run"


@pytest.mark.reliability(
    tried="An absolute data.processed_dir with data.processed_dir_outside_project: true (data on /scratch)",
    sees="accepted; the steps write there; Apptainer binds it; Charliecloud refuses it naming both",
    left="the prepared data at the absolute path",
)
def test_an_absolute_data_location_needs_the_explicit_opt_in(tmp_path):
    from smkml.launch import ContainerError, with_data_binds

    outside = str(tmp_path / "scratch" / "processed")
    with pytest.raises(Exception, match=r"data.processed_dir_outside_project: true \(e.g. on /scratch\)"):
        project_config(**with_value("data.processed_dir", outside))
    config = project_config(data={"raw": "data/raw/digits.csv", "processed_dir": outside,
                                  "processed_dir_outside_project": True})
    assert config["data"]["processed_dir"] == outside
    for value, problem in ((f"{outside}/../x", "contains '..'"), ("~/scratch", "is not relative")):
        with pytest.raises(Exception, match=re.escape(problem)):
            project_config(data={"raw": "data/raw/digits.csv", "processed_dir": value,
                                 "processed_dir_outside_project": True})
    with pytest.raises(Exception, match="config data.raw '/data/raw.csv' is not relative"):  # only processed_dir
        project_config(data={"raw": "/data/raw.csv", "processed_dir": "data/processed",
                             "processed_dir_outside_project": True})
    apptainer = {"runtime": "apptainer", "image": "x.sif", "gpu": "none", "binds": ["/pfs"]}
    assert with_data_binds(apptainer, outside)["binds"] == ["/pfs", outside]
    assert with_data_binds(apptainer, "data/processed") == apptainer
    with pytest.raises(ContainerError, match="charliecloud cannot bind"):
        with_data_binds({**apptainer, "runtime": "charliecloud"}, outside)


def test_the_pipeline_writes_to_an_opted_in_absolute_data_location(project, tmp_path):
    """As a LUMI user would put prepared data on /scratch: the dry run plans the prepare step's outputs there."""
    outside = tmp_path / "scratch processed"
    original = (project / "config/config.yaml").read_text()
    try:
        set_config(project, **{"data.processed_dir": str(outside), "data.processed_dir_outside_project": True})
        result = run(["snakemake", "-n", "--profile", "profiles/local"], project)
    finally:
        (project / "config/config.yaml").write_text(original)
    assert f"{outside}/train.npz" in result.stdout
