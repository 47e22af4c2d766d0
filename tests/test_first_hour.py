"""The first hour of a new user (issue 18): what generation, `make demo`, `make env`, `make run` and `make cluster`
say and do, and the LICENSE each licence answer writes. Cheap: generation and make, no pipeline run."""

from __future__ import annotations

import datetime
import sys
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import OFFLINE, TEMPLATE_DIR, choices, generate, run


# What each licence's LICENSE must say (besides the year and the author).
LICENCE_TEXT = {
    "MIT": ["MIT License", "Permission is hereby granted, free of charge", 'THE SOFTWARE IS PROVIDED "AS IS"'],
    "BSD-3-Clause": ["BSD 3-Clause License", "Redistribution and use in source and binary forms",
                     "Neither the name of the copyright holder"],
    "Apache-2.0": ["Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION",
                   "END OF TERMS AND CONDITIONS"],
    "Proprietary": ["All rights reserved."],
}


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """One generated project per licence answer (the first is the one the make tests use), with the hook's output."""
    made = {}
    for licence in choices("license"):
        out = tmp_path_factory.mktemp(licence.lower().replace(".", "-"))
        result = run(
            [str(Path(sys.executable).parent / "cookiecutter"), "--no-input", "--output-dir", str(out),
             str(TEMPLATE_DIR), f"license={licence}", "author_name=Ada Lovelace"],
            out,
        )
        made[licence] = (out / "digits-classifier", result.stdout + result.stderr)
    return made


def test_every_licence_choice_is_covered():
    assert set(LICENCE_TEXT) == set(choices("license"))


@pytest.mark.parametrize("licence", choices("license"))
def test_licence_answer_writes_license_file(projects, licence):
    project, _ = projects[licence]
    text = (project / "LICENSE").read_text()
    year = datetime.datetime.now(datetime.timezone.utc).year
    assert re.search(rf"Copyright (\(c\) )?{year},? Ada Lovelace", text), text[:300]
    for phrase in LICENCE_TEXT[licence]:
        assert phrase in text, phrase
    others = {phrase for other, phrases in LICENCE_TEXT.items() if other != licence for phrase in phrases}
    assert not [phrase for phrase in others if phrase in text and phrase not in LICENCE_TEXT[licence]]
    if licence == "Proprietary":
        assert len(text) < 600
    assert "LICENSE" in run(["git", "ls-files"], project).stdout


def test_post_generation_message_says_make_env_first(projects):
    project, output = next(iter(projects.values()))
    assert f"Next: cd {project} && make env && make run" in output


def bare_env(**extra: str) -> dict[str, str]:
    """An environment without the test interpreter's bin/ (no snakemake), as in a fresh shell."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "MAKE"))}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.update(extra)
    return env


@pytest.mark.parametrize("target", ["run", "cluster", "report"])
def test_make_without_env_says_make_env(projects, target):
    project, _ = next(iter(projects.values()))
    assert not (project / ".venv").exists()
    result = subprocess.run(["make", target], cwd=project, env=bare_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "run `make env` first" in result.stderr, result.stderr
    assert "No such file or directory" not in result.stderr


def test_make_cluster_passes_args_to_snakemake(projects):
    project, _ = next(iter(projects.values()))
    dry = run(["make", "-n", "cluster", "ARGS=--container-image example.org/img:1 --dry-run"], project).stdout
    assert "snakemake --profile profiles/" in dry
    line = next(line for line in dry.splitlines() if line.startswith("snakemake --profile"))
    assert line.endswith("--container-image example.org/img:1 --dry-run"), line
    assert "ARGS=" in run(["make", "help"], project).stdout


def test_pyproject_states_requires_python(projects):
    import tomllib

    project, _ = next(iter(projects.values()))
    assert tomllib.loads((project / "pyproject.toml").read_text())["project"]["requires-python"] == ">=3.11"


def test_make_env_refuses_an_older_python_with_a_clear_message(projects, tmp_path):
    """make env checks requires-python before creating anything; here the requirement is raised above this Python."""
    project, _ = next(iter(projects.values()))
    copy = tmp_path / "p"
    subprocess.run(["cp", "-r", str(project), str(copy)], check=True)
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('requires-python = ">=3.11"', 'requires-python = ">=3.99"'))
    result = subprocess.run(["make", "env"], cwd=copy, env=bare_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "this project needs Python >= 3.99 (requires-python in pyproject.toml)" in result.stderr, result.stderr
    assert "LUMI" in result.stderr
    assert not (copy / ".venv").exists()


def test_make_env_creates_the_locked_environment(projects, tmp_path):
    """`make env` in a fresh shell, as the README says, on the default project: the whole lock with uv (given this
    machine's pip settings), Horovod (from the wheel the template's own `make env` cached), the pre-commit hook;
    then the reviewer's environment check passes and the pipeline's tools run from .venv."""
    project, _ = next(iter(projects.values()))
    copy = tmp_path / "p"
    subprocess.run(["cp", "-a", str(project), str(copy)], check=True)
    result = subprocess.run(["make", "env"], cwd=copy, env=bare_env(), capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "install_env: installing requirements.lock, . with uv" in output, output[-6000:]
    assert "with pip" not in output
    assert re.search(r"build-horovod: horovod 0\.28\.1 gloo: True mpi: True", output), output[-3000:]
    venv = copy / ".venv/bin"
    check = subprocess.run([str(venv / "python"), "-m", "digits_classifier.reproduce", "check-env", "--lock",
                            "requirements.lock"], cwd=copy, env=bare_env(), capture_output=True, text=True)
    assert check.returncode == 0 and "environment matches requirements.lock" in check.stdout, check.stdout + check.stderr
    snakemake = subprocess.run([str(venv / "snakemake"), "--version"], capture_output=True, text=True, check=True)
    locked = (copy / "requirements.lock").read_text()
    assert f"snakemake=={snakemake.stdout.strip()}" in locked
    assert (copy / ".git/hooks/pre-commit").exists()


def stub(path: Path, text: str) -> None:
    path.write_text("#!/bin/bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_make_demo_twice_keeps_the_previous_demo_and_says_so(tmp_path):
    """The template's `make demo` with a stub environment (cookiecutter writes a project whose `make run` only
    records it ran): the second call moves the first demo aside, naming it and its MLflow store."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub(venv / "bin" / "cookiecutter",
         'out="$3"; mkdir -p "$out/digits-classifier"; '
         'printf "run:\\n\\techo demo pipeline ran > mlflow.db\\n" > "$out/digits-classifier/Makefile"\n')
    (venv / ".installed").touch()
    demo = tmp_path / "build" / "demo"
    args = ["make", "--no-print-directory", "-C", str(TEMPLATE_DIR), "demo", f"VENV={venv}", f"DEMO_DIR={demo}"]
    first = subprocess.run(args, env=bare_env(), capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "previous demo" not in first.stdout
    store = demo / "digits-classifier" / "mlflow.db"
    assert store.read_text() == "demo pipeline ran\n"
    store.write_text("first run's store\n")

    second = subprocess.run(args, env=bare_env(), capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    backups = sorted(tmp_path.joinpath("build").glob("demo-previous-*"))
    assert len(backups) == 1
    line = next(line for line in second.stdout.splitlines() if "previous demo" in line)
    assert str(demo) in line and str(backups[0]) in line and "mlflow.db" in line
    assert (backups[0] / "digits-classifier" / "mlflow.db").read_text() == "first run's store\n"
    assert store.read_text() == "demo pipeline ran\n"


RULE = re.compile(r"^(?:rule|checkpoint) (\w+):\n((?:[ \t]+.*\n|\n)*)", re.MULTILINE)


def test_every_rule_has_a_message_and_a_log(projects):
    project, _ = next(iter(projects.values()))
    listed = set(run(["snakemake", "--list-rules"], project).stdout.split())
    found = {}
    for smk in [project / "workflow/Snakefile", *sorted((project / "workflow/rules").glob("*.smk"))]:
        found.update({name: body for name, body in RULE.findall(smk.read_text() + "\n")})
    steps = listed - {"all"}
    assert steps <= set(found), steps - set(found)
    for name in steps:
        assert re.search(r"^\s+message:\n\s+\S", found[name], re.MULTILINE), f"rule {name} has no message"
        # Under logs/ (a sweep member's steps: logs/sweep/<member>/...), where the failure message points.
        assert re.search(r"^\s+log:\n\s+(\w+=)?f?\"logs/\S+\"", found[name], re.MULTILINE), f"rule {name}: no log"


def test_a_failed_step_points_to_its_log(projects):
    """A plain `snakemake --cores 1` (no profile, no --show-failed-logs): a step that fails says so, names its log
    and shows the log's last lines (here MLflow refusing an unknown tracking URI in start_tracking)."""
    project, _ = next(iter(projects.values()))
    result = run(["snakemake", "--cores", "1", "results/mlflow/run.json"], project, check=False,
                 MLFLOW_TRACKING_URI="nosuchscheme://nowhere")
    assert result.returncode != 0
    assert "Creating the pipeline's MLflow run in experiment" in result.stderr
    assert "error: this step failed (exit status 1); the end of its log logs/start_tracking.log:" in result.stderr
    assert "nosuchscheme" in result.stderr.split("the end of its log", 1)[1]
    assert "error: the whole log of the failed step: logs/start_tracking.log" in result.stderr


def test_pre_commit_hook_refuses_a_planted_aws_key_offline(projects, tmp_path):
    """The project's git hook as its user meets it, offline, with an empty pre-commit cache and in a shell without
    the environment activated (the hooks find .venv/bin themselves): after `pre-commit install`, a commit of a new
    file holding an AWS key is refused by detect-secrets, naming the file, and a harmless commit goes through. (That
    every check passes on a clean project, offline: tests/test_generation.py::test_make_lint.)"""
    project, _ = next(iter(projects.values()))
    copy = tmp_path / "p"
    subprocess.run(["cp", "-a", str(project), str(copy)], check=True)
    offline = {**OFFLINE, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-cache")}
    (copy / ".venv").symlink_to(Path(sys.prefix))  # what `make env` makes
    run(["pre-commit", "install"], copy, **offline)
    shell = bare_env(**offline, GIT_AUTHOR_NAME="A", GIT_AUTHOR_EMAIL="a@example.org", GIT_COMMITTER_NAME="A",
                     GIT_COMMITTER_EMAIL="a@example.org")
    planted = copy / "src" / project.name.replace("-", "_") / "storage.py"
    planted.write_text('AWS_ACCESS_KEY_ID = "AKIAZ7Q4XRM2N5PLW3KD"\n'  # pragma: allowlist secret
                       'AWS_SECRET_ACCESS_KEY = "w8Xq3LrT0vYb5NcK2pHj9sDfGz1MuEa7RoWiQy4B"\n')  # pragma: allowlist secret

    def commit(path, message):
        subprocess.run(["git", "add", str(path)], cwd=copy, env=shell, check=True)
        return subprocess.run(["git", "commit", "-m", message], cwd=copy, env=shell, capture_output=True, text=True,
                              timeout=300)

    refused = commit(planted, "storage settings")  # (git shows a hook's output on stderr)
    assert refused.returncode != 0
    assert "Secret Type: AWS Access Key" in refused.stderr, refused.stdout + refused.stderr
    assert f"Location:    src/{planted.parent.name}/storage.py:1" in refused.stderr, refused.stderr
    assert len(run(["git", "log", "--oneline"], copy).stdout.splitlines()) == 1

    subprocess.run(["git", "rm", "--cached", "--quiet", str(planted)], cwd=copy, env=shell, check=True)
    planted.write_text('BUCKET = "s3://my-bucket/data"\n')
    accepted = commit(planted, "storage settings without credentials")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert re.search(r"^detect-secrets .*Passed$", accepted.stderr, re.MULTILINE), accepted.stderr
