"""Generate the template across option combinations and check each project as its user would.

The options come from cookiecutter.json, as cookiecutter-data-science's test matrix does: coupled options
(backend x cluster) are taken as a full product; the others are cycled over it. Every combination is generated and
checked for layout, rendering, answers, vendored files and git/DVC state. The checks that run the project's own
tools (make lint, the project's unit tests, dry runs under each profile) run on a covering subset: the fewest
combinations in which every value of every option appears at least once (COVERING, computed from the options file).
The project's slow unit tests (marker `slow`: model training, an MLflow store) do not depend on any answer but the
backend, so they run once per backend.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib

import pytest
import yaml

from conftest import OFFLINE, choices, cluster_description, run

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
OPTIONS = ("training_backend", "cluster", *CYCLED)


def covering(combos: list[dict]) -> list[dict]:
    """The fewest combinations (greedy) in which every value of every option appears, with and without an account."""
    def values(answers):
        return {(key, answers[key]) for key in OPTIONS} | {("account", "slurm_account" in answers)}

    wanted = set().union(*(values(answers) for answers in combos))
    chosen = []
    while wanted:
        best = max(combos, key=lambda answers: len(values(answers) & wanted))
        chosen.append(best)
        wanted -= values(best)
    return sorted(chosen, key=combos.index)


COVERING = covering(COMBINATIONS)
# The first covering combination of each backend runs the project's whole unit suite, slow tests included.
FULL_UNIT_SUITE = [next(a for a in COVERING if a["training_backend"] == backend) for backend in BACKENDS]


def combo_id(answers):
    return "-".join(answers[key] for key in OPTIONS)


@pytest.fixture(scope="module")
def bake(cookies_session):
    """bake(answers): the project generated with these answers (each combination generated once per module)."""
    baked = {}

    def bake(answers):
        key = combo_id(answers)
        if key not in baked:
            result = cookies_session.bake(extra_context=answers)
            assert result.exit_code == 0 and result.exception is None, result.exception
            baked[key] = (answers, result.project_path)
        return baked[key]

    return bake


@pytest.fixture(scope="module", params=COMBINATIONS, ids=combo_id)
def project(request, bake):
    return bake(request.param)


@pytest.fixture(scope="module", params=COVERING, ids=combo_id)
def covered_project(request, bake):
    return bake(request.param)


def test_covering_subset_has_every_value_of_every_option():
    for key in OPTIONS:
        assert {answers[key] for answers in COVERING} == set(choices(key)), key
    assert {"slurm_account" in answers for answers in COVERING} == {True, False}
    assert len(COVERING) < len(COMBINATIONS)


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


def test_readme_names_a_slurm_account_only_for_a_cluster_that_takes_one(project):
    """The README's cluster section: for lumi and slurm where the account goes (and the answer, when given); for a
    cluster without accounts (kubernetes, local) not a word about accounts."""
    answers, path = project
    readme = (path / "README.md").read_text()
    account = cluster_description(answers["cluster"]).get("cluster", {}).get("account")
    if account is None:
        assert "account" not in readme.lower(), [line for line in readme.splitlines() if "account" in line.lower()]
        return
    assert f"The Slurm account of `make cluster` is `account.value` in `profiles/{answers['cluster']}/cluster.yaml`" in readme
    assert f"`{account['pattern']}`" in readme
    given = answers.get("slurm_account")
    assert (f"`{given}`, the answer given at generation" if given else "read from `$SBATCH_ACCOUNT` at run time") in readme


def test_docs_name_the_file_the_account_answer_is_written_to(project, template_dir):
    """Where the hook writes slurm_account (found by content in the committed project) is the file the quickstart
    and the options page name."""
    answers, path = project
    account = answers.get("slurm_account")
    if not account:
        return  # (the combinations with an account check it)
    holders = set(run(["git", "grep", "-l", "-F", account], path).stdout.split()) - {".cruft.json", "README.md"}
    named = "`profiles/<cluster>/cluster.yaml`"
    assert holders == {named.strip("`").replace("<cluster>", answers["cluster"])}
    for page in ("quickstart.md", "options.md"):
        lines = (template_dir / "docs" / page).read_text().splitlines()
        rows = [line for line in lines if line.startswith("|")]  # a table row is one line
        prose = " ".join(" ".join(line for line in lines if not line.startswith("|")).split())
        units = rows + re.split(r"(?<=[.;])\s", prose)  # table rows and sentences
        assert [unit for unit in units if re.search(r"slurm_account|Slurm account", unit) and named in unit], page


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
    # DVC wraps its table at 80 columns when not on a terminal (a long remote path would be split): as in a wide one.
    remotes = run(["dvc", "remote", "list"], path, COLUMNS="1000").stdout
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


def test_make_lint(covered_project, tmp_path):
    """`make lint`: the vendored files as received, snakemake --lint and the pre-commit checks on every file, which
    pass on a clean project (the template commit in .cruft.json and vendored.json, the md5s in .dvc files and the
    sha256s in vendored.json are not secrets) offline, with an empty pre-commit cache."""
    _, path = covered_project
    lint = run(["make", "lint"], path, check=False, **OFFLINE, PRE_COMMIT_HOME=str(tmp_path / "pre-commit-cache"))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr
    assert "vendored files: " in lint.stdout
    for hook in ("snakefmt", "nbstripout", "detect-secrets"):
        assert re.search(rf"^{hook} .*Passed$", lint.stdout, re.MULTILINE), lint.stdout


def test_project_unit_tests(covered_project):
    answers, path = covered_project
    # Not the template-drift test: a commit to this checkout during the run would fail it (test_template_updates.py).
    selection = "not template" if answers in FULL_UNIT_SUITE else "not template and not slow"
    result = run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", selection, "tests"], path)
    assert " passed" in result.stdout


JOBS = ["start_tracking", "prepare_data", "train_model", "evaluate_model"]
# Snakemake's note when config comes from the command line; the cluster profiles load their description that way,
# and the workflow does not show the note (nobody typed --config).
CLI_CONFIG_NOTE = "is extended by additional config specified via the command line"


@pytest.mark.parametrize("profile", ["local", "lumi", "slurm"])
def test_dry_run_under_profile(covered_project, profile):
    _, path = covered_project
    result = run(["snakemake", "-n", "--profile", f"profiles/{profile}"], path, SBATCH_ACCOUNT="project_465000001")
    for job in JOBS:
        assert job in result.stdout
    assert CLI_CONFIG_NOTE not in result.stdout + result.stderr


def test_profiles_installed_for_snakemake_profile_name(covered_project, tmp_path):
    """`snakemake --profile lumi` as users type it, after installing the profiles; the path form works too."""
    _, path = covered_project
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


def test_dry_run_under_kubernetes_profile(covered_project, s3_server):
    _, path = covered_project
    result = run(
        ["snakemake", "-n", "--profile", "profiles/kubernetes", "--storage-s3-endpoint-url", s3_server["endpoint"]],
        path,
        SNAKEMAKE_S3_PREFIX=f"s3://{s3_server['bucket']}/{path.name}",
        # as docs/kubernetes.md tells users: pods share no filesystem, so the MLflow store is a server (not contacted
        # by a dry run)
        MLFLOW_TRACKING_URI="https://mlflow.example.org",
        **s3_server["env"],
    )
    assert f"s3://{s3_server['bucket']}/{path.name}/results/metrics.json" in result.stdout
    for job in JOBS:
        assert job in result.stdout
    assert CLI_CONFIG_NOTE not in result.stdout + result.stderr
