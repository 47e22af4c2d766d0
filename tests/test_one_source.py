"""One source per value: the lists that must agree are read from their one place, and this fails when they drift.

- the template's choices live in cookiecutter.json (the test matrix and the hooks read them there);
- the config's allowed values and defaults live in the schema (rules_lib/schemas/config.schema.yaml), which the
  helpers in rules_lib/lib read; the backends the package implements must be exactly the schema's;
- the clusters a project can be generated for are exactly the profiles, and each cluster description is valid.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from smkml import launch, resources, schemas

from conftest import PROFILES, TEMPLATE_DIR, choices, cluster_description, generate, project_config


def test_backends_agree_across_answers_schema_and_package(tmp_path):
    schema = list(schemas.allowed("config", "properties", "train", "properties", "backend"))
    assert choices("training_backend") == schema
    assert list(launch.BACKENDS) == schema
    project = generate(tmp_path, training_backend=schema[-1])
    package = project.name.replace("-", "_")
    implemented = subprocess.run(
        [sys.executable, "-c", f"from {package}.backends import BACKENDS; print(list(BACKENDS))"],
        cwd=project / "src", capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(implemented.replace("'", '"')) == schema


def test_clusters_agree_with_the_profiles():
    profiles = sorted(path.parent.name for path in PROFILES.glob("*/profile.yaml"))
    assert sorted(choices("cluster")) == profiles
    default = schemas.node("config", "properties", "cluster")["default"]
    assert default["name"] == "local" and not (PROFILES / "local/cluster.yaml").exists()
    for name in profiles:
        config = project_config(name)  # validated against the schema
        assert config["cluster"]["name"] == name
        assert config["cluster"]["launcher"] in launch.LAUNCHERS


@pytest.mark.parametrize("name", ["lumi", "slurm", "kubernetes"])
def test_each_cluster_profile_loads_its_own_description(name):
    import yaml

    profile = yaml.safe_load((PROFILES / name / "profile.yaml").read_text())
    assert profile["configfile"] == f"profiles/{name}/cluster.yaml"
    assert "config" not in profile  # a --config on the command line would drop it
    assert set(cluster_description(name)) == {"cluster"}


def test_resource_vocabulary_and_defaults_are_the_schemas():
    step = schemas.node("config", "$defs", "step_resources", "properties")
    assert resources.VOCABULARY == tuple(step)
    needs = resources.step_needs(project_config(), "fetch_data")
    defaults = schemas.node("config", "properties", "resources", "properties", "default", "properties")
    assert {key: needs[key] for key in defaults} == {key: spec["default"] for key, spec in defaults.items()}


def test_the_hooks_repeat_no_choice_list():
    """The answers' checks (template_answers.py, run again by the pre-generation hook) leave choice answers to
    cookiecutter and read account formats from profiles/."""
    hook = (TEMPLATE_DIR / "hooks/pre_gen_project.py").read_text() + (TEMPLATE_DIR / "template_answers.py").read_text()
    for name in ("training_backend", "cluster", "license"):  # (the DVC remote's kinds are handled one by one)
        listed = [choice for choice in choices(name) if f'"{choice}"' in hook]
        assert len(listed) < len(choices(name)), f"pre_gen_project.py lists the {name} choices {listed}"
    for name in ("lumi", "slurm"):
        assert cluster_description(name)["cluster"]["account"]["pattern"] not in hook
