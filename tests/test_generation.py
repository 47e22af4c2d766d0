"""Generate the template across option combinations and check each project as its user would.

The options come from cookiecutter.json, as cookiecutter-data-science's test matrix does: coupled options
(backend x cluster) are taken as a full product; the others are cycled over it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib

import pytest
import yaml

from conftest import choices, run

BACKENDS = choices("training_backend")
CLUSTERS = choices("cluster")
CYCLED = {name: choices(name) for name in ("dvc_remote", "license")}
ACCOUNTS = {"lumi": "project_465000001", "slurm": "my_group"}


# Template syntax left unrendered. (Doubled braces alone are legitimate: Snakemake escapes braces that way.)
JINJA = re.compile(r"\{\{\s*cookiecutter|\{%|\{#")


def combinations():
    for index, (backend, cluster) in enumerate(itertools.product(BACKENDS, CLUSTERS)):
        answers = {"training_backend": backend, "cluster": cluster}
        answers.update({key: values[index % len(values)] for key, values in CYCLED.items()})
        if index % 2 == 0 and cluster in ACCOUNTS:
            answers["slurm_account"] = ACCOUNTS[cluster]
        answers["project_name"] = f"Combo {index} Study"
        yield answers


COMBINATIONS = list(combinations())


def combo_id(answers):
    return "-".join(answers[key] for key in ("training_backend", "cluster", "dvc_remote", "license"))


@pytest.fixture(scope="module", params=COMBINATIONS, ids=combo_id)
def project(request, cookies_session):
    answers = request.param
    result = cookies_session.bake(extra_context=answers)
    assert result.exit_code == 0 and result.exception is None, result.exception
    return answers, result.project_path


REQUIRED_FILES = [
    "README.md",
    "LICENSE",
    "Makefile",
    "pyproject.toml",
    "requirements.lock",
    "requirements-lab.lock",
    ".gitignore",
    "workflow/Snakefile",
    "workflow/rules/common.smk",
    "workflow/rules/tracking.smk",
    "workflow/rules/fetch.smk",
    "workflow/rules/prepare.smk",
    "workflow/rules/train.smk",
    "workflow/rules/evaluate.smk",
    "workflow/lib/smkml/launch.py",
    "workflow/envs/pipeline.yaml",
    "workflow/schemas/config.schema.yaml",
    "workflow/report/metrics.rst",
    "workflow/description.rst",
    "vendored.json",
    "config/config.yaml",
    "notebooks/prepare.ipynb",
    "profiles/local/profile.yaml",
    "profiles/lumi/profile.yaml",
    "profiles/lumi/cluster.yaml",
    "profiles/slurm/profile.yaml",
    "profiles/slurm/cluster.yaml",
    "profiles/kubernetes/profile.yaml",
    "profiles/kubernetes/cluster.yaml",
    "containers/horovod/build-horovod.sh",
    "data/raw/digits.csv.dvc",
    ".cruft.json",
    "tests",
]


def test_layout_and_rendering(project):
    answers, path = project
    package = path.name.replace("-", "_")
    assert path.name == answers["project_name"].lower().replace(" ", "-")
    missing = [name for name in REQUIRED_FILES if not (path / name).exists()]
    assert not missing, f"missing from the generated project: {missing}"
    for module in ("__init__", "data", "model", "backends", "train", "evaluate", "tracking"):
        assert (path / "src" / package / f"{module}.py").is_file()
    leftovers = [
        str(file.relative_to(path))
        for file in path.rglob("*")
        if file.is_file() and ".git" not in file.parts and JINJA.search(file.read_text(errors="ignore"))
    ]
    assert not leftovers, f"unrendered template syntax in {leftovers}"


def test_answers_reach_the_project(project):
    answers, path = project
    config = yaml.safe_load((path / "config/config.yaml").read_text())
    assert config["train"]["backend"] == answers["training_backend"]
    assert config["tracking"]["experiment"] == path.name
    pyproject = tomllib.loads((path / "pyproject.toml").read_text())
    assert pyproject["project"]["license"]["text"] == answers["license"]
    assert "snakemake==9.27.1" in pyproject["project"]["dependencies"]
    assert answers["cluster"] in (path / "Makefile").read_text()
    account = answers.get("slurm_account")
    if account:
        cluster = yaml.safe_load((path / "profiles" / answers["cluster"] / "cluster.yaml").read_text())["cluster"]
        assert cluster["account"]["value"] == account


def test_vendored_files_are_the_templates_and_recorded(project, template_dir):
    """Every file of the template's shared trees landed at its place (rules_lib/ laid out as workflow/), and
    vendored.json records each with its sha256 and the template's version and commit."""
    answers, path = project
    manifest = json.loads((path / "vendored.json").read_text())
    expected = {}
    for source, target in (("rules_lib", "workflow"), ("profiles", "profiles"), ("containers", "containers")):
        for file in (template_dir / source).rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                expected[str(target / file.relative_to(template_dir / source))] = file
    assert set(manifest["files"]) == {str(name) for name in expected}
    for name, source in expected.items():
        content = (path / name).read_bytes()
        assert manifest["files"][name] == hashlib.sha256(content).hexdigest(), name
        if not (answers.get("slurm_account") and name == f"profiles/{answers['cluster']}/cluster.yaml"):
            assert content == source.read_bytes(), name  # only the account answer changes a vendored file
    assert manifest["version"] == json.loads((template_dir / "cookiecutter.json").read_text())["_template_version"]
    assert manifest["commit"] == json.loads((path / ".cruft.json").read_text())["commit"]


def test_git_and_dvc_state(project):
    answers, path = project
    assert run(["git", "status", "--porcelain"], path).stdout == ""
    assert len(run(["git", "log", "--oneline"], path).stdout.splitlines()) == 1
    tracked = run(["git", "ls-files"], path).stdout.split()
    assert "data/raw/digits.csv.dvc" in tracked and "data/raw/digits.csv" not in tracked
    remotes = run(["dvc", "remote", "list"], path).stdout
    if answers["dvc_remote"] == "local":
        remote = path.parent / f"{path.name}-dvc-remote"
        assert str(remote) in remotes
        assert any(remote.rglob("*")), "the data was not pushed to the local DVC remote"
        # Like a fresh clone: the first pipeline step pulls the data.
        assert not (path / "data/raw/digits.csv").exists()
    else:
        assert f"s3://{path.name}-data/dvc" in remotes
        # No credentials in the test environment: nothing pushed, the data stays in the working tree.
        assert (path / "data/raw/digits.csv").exists()


def test_make_lint(project):
    """`make lint`: snakemake --lint, snakefmt --check and the vendored files as received."""
    _, path = project
    lint = run(["make", "lint"], path, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr
    assert "vendored files: " in lint.stdout


def test_project_unit_tests(project):
    _, path = project
    # Not the template-drift test: a commit to this checkout during the run would fail it (test_template_updates.py).
    result = run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not template", "tests"], path)
    assert " passed" in result.stdout


JOBS = ["start_tracking", "prepare_data", "train_model", "evaluate_model"]


@pytest.mark.parametrize("profile", ["local", "lumi", "slurm"])
def test_dry_run_under_profile(project, profile):
    _, path = project
    result = run(["snakemake", "-n", "--profile", f"profiles/{profile}"], path, SBATCH_ACCOUNT="project_465000001")
    for job in JOBS:
        assert job in result.stdout


def test_profiles_installed_for_snakemake_profile_name(project, tmp_path):
    """`snakemake --profile lumi` as users type it, after installing the profiles; the path form works too."""
    _, path = project
    config_home = tmp_path / "xdg"
    installed = run(["python", "workflow/lib/smkml/install_profiles.py", "--dest", str(config_home / "snakemake")], path)
    assert "snakemake --profile lumi" in installed.stdout
    for name in ("lumi", "slurm", "kubernetes", "local"):
        assert (config_home / "snakemake" / name / "profile.yaml").is_file()
    by_name = run(["snakemake", "-n", "--profile", "lumi"], path, XDG_CONFIG_HOME=str(config_home), SBATCH_ACCOUNT="project_465000001")
    assert "train_model" in by_name.stdout and "Using profile lumi" in by_name.stderr + by_name.stdout
    # A different profile already installed is not overwritten without --force.
    (config_home / "snakemake/lumi/profile.yaml").write_text("executor: slurm\n")
    clash = run(["python", "workflow/lib/smkml/install_profiles.py", "--dest", str(config_home / "snakemake")], path, check=False)
    assert clash.returncode != 0 and "--force" in clash.stderr
    assert (config_home / "snakemake/lumi/profile.yaml").read_text() == "executor: slurm\n"


def test_dry_run_under_kubernetes_profile(project, s3_server):
    _, path = project
    result = run(
        ["snakemake", "-n", "--profile", "profiles/kubernetes", "--storage-s3-endpoint-url", s3_server["endpoint"]],
        path,
        SNAKEMAKE_S3_PREFIX=f"s3://{s3_server['bucket']}/{path.name}",
        **s3_server["env"],
    )
    assert f"s3://{s3_server['bucket']}/{path.name}/results/metrics.json" in result.stdout
    for job in JOBS:
        assert job in result.stdout
