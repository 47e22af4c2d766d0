"""Template updates with cruft: a generated project records its template (.cruft.json); when the template changes,
`cruft check` and the project's own test report the drift, and `cruft update` brings the change in, vendored rule
modules included, without touching the user's code, config edits, git history, DVC state or data.

The template is a copy of this checkout in a temporary git repository, so that it can be changed and committed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import BIN_DIR, TEMPLATE_DIR, generate, run

CRUFT = str(BIN_DIR / "cruft")
TEMPLATE_LINE = "# Template v2: this line arrived with `cruft update`."
USER_HELPER = "\n\ndef user_helper():\n    return 'written by the user'\n"


def git(cwd, *args):
    return run(["git", "-c", "user.name=Tester", "-c", "user.email=t@example.org", *args], cwd).stdout.strip()


def copy_template(dest):
    """This checkout as it is now (tracked and new files, not ignored ones), as the first commit of a new repository."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], TEMPLATE_DIR).stdout
    for name in filter(None, listed.split("\0")):
        source = TEMPLATE_DIR / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git(dest, "init", "--quiet", "--initial-branch=main")
    git(dest, "add", "--all")
    git(dest, "commit", "--quiet", "-m", "template v1")
    return git(dest, "rev-parse", "HEAD")


def project_test(project, check=True):
    """The generated project's own template test, as `make test` runs it."""
    return run(["python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_template.py"], project,
               check=check)


def tree_listing(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    template = tmp_path_factory.mktemp("tmpl") / "template"
    template.mkdir()
    first = copy_template(template)
    project = generate(tmp_path_factory.mktemp("projects"), template=template, project_name="Drift Study")
    return {"template": template, "first": first, "project": project}


def test_project_records_its_template(generated):
    project = generated["project"]
    state = json.loads((project / ".cruft.json").read_text())
    assert state["template"] == str(generated["template"])
    assert state["commit"] == generated["first"]
    assert state["context"]["cookiecutter"]["project_slug"] == "drift-study"
    assert state["context"]["cookiecutter"]["_commit"] == generated["first"]
    assert {".git", ".dvc", "data", "results", "mlflow.db"} <= set(state["skip"])
    assert "_repo_dir" not in state["context"]["cookiecutter"]  # a path of the generating machine
    assert ".cruft.json" in run(["git", "ls-files"], project).stdout.split()
    assert "up to date" in run([CRUFT, "check"], project).stdout
    assert " passed" in project_test(project).stdout


def test_template_change_is_reported_then_brought_in(generated):
    template, project = generated["template"], generated["project"]
    package = project / "src" / "drift_study"

    # The user works on the project: own code and a changed hyper-parameter, committed.
    with (package / "model.py").open("a") as handle:
        handle.write(USER_HELPER)
    config = project / "config/config.yaml"
    assert "    epochs: 30\n" in config.read_text()
    config.write_text(config.read_text().replace("    epochs: 30\n", "    epochs: 5\n"))
    git(project, "commit", "--quiet", "-am", "my experiment")
    commits_before = git(project, "rev-list", "--count", "HEAD")
    remote = project.parent / "drift-study-dvc-remote"
    remote_before = tree_listing(remote)
    dvc_config_before = (project / ".dvc/config").read_text()

    # The template moves on: a vendored rule module, a template file, and the config away from the user's edit.
    fetch_rule = template / "rules_lib/rules/fetch.smk"
    fetch_rule.write_text(TEMPLATE_LINE + "\n" + fetch_rule.read_text())
    readme = template / "{{cookiecutter.project_slug}}/README.md"
    readme.write_text(readme.read_text() + "\n## Template v2\n\nNew section for {{ cookiecutter.project_name }}.\n")
    template_config = template / "{{cookiecutter.project_slug}}/config/config.yaml"
    head, rest = template_config.read_text().split("\n", 1)
    template_config.write_text(f"{head}\n{TEMPLATE_LINE}\n{rest}")
    git(template, "commit", "--quiet", "-am", "template v2")
    second = git(template, "rev-parse", "HEAD")

    drift = run([CRUFT, "check"], project, check=False)
    assert drift.returncode != 0 and "out of date" in drift.stdout
    stale = project_test(project, check=False)
    assert stale.returncode != 0
    assert f"the template {template} has changed" in stale.stdout and "cruft update" in stale.stdout

    update = run([CRUFT, "update", "-y"], project)
    assert "Good work" in update.stdout
    assert "rendered by cruft: vendored files only" in update.stdout + update.stderr

    # The change arrived, in the vendored rule module too ...
    assert (project / "workflow/rules/fetch.smk").read_text().startswith(TEMPLATE_LINE + "\n")
    assert "## Template v2\n\nNew section for Drift Study." in (project / "README.md").read_text()
    merged = config.read_text()
    assert TEMPLATE_LINE in merged and "    epochs: 5\n" in merged and "epochs: 30" not in merged
    # ... the user's work did not move ...
    assert (package / "model.py").read_text().endswith(USER_HELPER)
    assert not list(project.rglob("*.rej")) and not list(project.rglob("*.orig"))
    changed = {line[3:] for line in run(["git", "status", "--porcelain"], project).stdout.splitlines()}
    assert changed == {".cruft.json", "README.md", "config/config.yaml", "workflow/rules/fetch.smk", "vendored.json"}
    manifest = json.loads((project / "vendored.json").read_text())
    assert manifest["commit"] == second
    assert manifest["files"]["workflow/rules/fetch.smk"] == hashlib.sha256(fetch_rule.read_bytes()).hexdigest()
    # ... and neither did git history, DVC config or the DVC remote (the re-rendering hook left them alone).
    assert git(project, "rev-list", "--count", "HEAD") == commits_before
    assert (project / ".dvc/config").read_text() == dvc_config_before
    assert tree_listing(remote) == remote_before
    assert json.loads((project / ".cruft.json").read_text())["commit"] == second

    git(project, "commit", "--quiet", "-am", "Update from the template")
    assert "up to date" in run([CRUFT, "check"], project).stdout
    assert " passed" in project_test(project).stdout
    dry = run(["snakemake", "-n"], project)
    assert "fetch_data" in dry.stdout or "train_model" in dry.stdout


def test_unreachable_template_skips_the_drift_check_with_the_reason(generated, tmp_path):
    project = generated["project"]
    cruft_file = project / ".cruft.json"
    original = cruft_file.read_text()
    state = json.loads(original)
    state["template"] = str(tmp_path / "gone")  # as on a compute node: the template cannot be reached
    cruft_file.write_text(json.dumps(state))
    try:
        result = project_test(project)
    finally:
        cruft_file.write_text(original)
    assert "1 skipped" in result.stdout
    assert f"the template {tmp_path / 'gone'} is unreachable from here" in result.stdout
    assert "cannot check for drift" in result.stdout


def test_cruft_rendering_runs_no_git_or_dvc(generated, tmp_path):
    """What `cruft update` and `cruft diff` render from the template: the project's files; no repository, no data."""
    from cookiecutter.generate import generate_files
    from cruft._commands.utils.cookiecutter import generate_cookiecutter_context

    state = json.loads((generated["project"] / ".cruft.json").read_text())
    answers = {key: value for key, value in state["context"]["cookiecutter"].items() if not key.startswith("_")}
    # As cruft does it (cruft/_commands/utils/generate.py): its own context, then cookiecutter's generate_files.
    context = generate_cookiecutter_context(
        state["template"], state["commit"], generated["template"], extra_context=answers, no_input=True
    )
    rendered = Path(generate_files(repo_dir=str(generated["template"]), context=context, output_dir=str(tmp_path)))
    assert rendered == tmp_path / "drift-study"
    assert (rendered / "workflow/rules/fetch.smk").is_file() and (rendered / "profiles/lumi/profile.yaml").is_file()
    for state_path in (".git", ".dvc", ".dvcignore", "data", ".cruft.json"):
        assert not (rendered / state_path).exists(), f"{state_path} made while cruft rendered the template"
    assert not (tmp_path / "drift-study-dvc-remote").exists()


def test_make_lint_names_a_vendored_file_edited_by_hand(tmp_path):
    """vendored.json records every vendored file; `make lint` (part of `make test`) names one edited by hand and says
    how to bring the change in properly. Edited profiles (site settings) are notes, not errors."""
    project = generate(tmp_path, project_name="Lint Study", cluster="slurm")
    assert "vendored files: " in run(["python", "workflow/lib/smkml/vendored.py", "check"], project).stdout

    cluster = project / "profiles/slurm/cluster.yaml"
    cluster.write_text(cluster.read_text().replace("small: {gpus_per_node: 0", "short: {gpus_per_node: 0"))
    noted = run(["python", "workflow/lib/smkml/vendored.py", "check"], project)
    assert "NOTE: profiles/slurm/cluster.yaml: edited by hand (site settings: yours to edit)" in noted.stdout

    rule = project / "workflow/rules/train.smk"
    rule.write_text(rule.read_text() + "\n# my change\n")
    (project / "workflow/lib/smkml/jobs.py").unlink()
    lint = run(["make", "lint"], project, check=False)
    assert lint.returncode != 0
    errors = [line for line in lint.stderr.splitlines() if line.startswith("ERROR: ")]
    assert [line.split(" (vendored from")[0] for line in errors] == [
        "ERROR: workflow/lib/smkml/jobs.py: missing",
        "ERROR: workflow/rules/train.smk: edited by hand",
    ]
    assert "cookiecutter-snakemake-ml 0.1.0 at " in errors[0]
    assert "`cruft update`" in lint.stderr and "`cruft diff`" in lint.stderr
