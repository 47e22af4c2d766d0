"""Shared fixtures: generate projects from this template and run commands in them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cookiecutter.main import cookiecutter

from reliability import pytest_addoption, pytest_collection_modifyitems  # noqa: F401  (hooks: docs/reliability.md)

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
SKELETON = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
PROFILES = TEMPLATE_DIR / "profiles"
# The rule modules' helpers, imported the way a project's rules import them (workflow/lib is rules_lib/lib here).
sys.path.insert(0, str(TEMPLATE_DIR / "rules_lib" / "lib"))


# No network: every proxy variable points at a closed port, so any download (pre-commit, pip) fails.
OFFLINE = {name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}


def choices(name: str) -> list[str]:
    """The choices of a template question, from cookiecutter.json (the one place they are written)."""
    return json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())[name]


def cluster_description(name: str) -> dict:
    """What profiles/<name>/profile.yaml loads as config: {"cluster": ...} (nothing for a profile without one)."""
    path = PROFILES / name / "cluster.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def project_helper(project: Path, name: str):
    """A generated project's own helper module (workflow/lib/smkml/<name>.py), imported within its package (the
    helpers import each other) under a name of its own, beside the template's `smkml`."""
    import importlib
    import importlib.util

    lib = project / "workflow" / "lib" / "smkml"
    package = f"smkml_of_{project.name.replace('-', '_')}_{abs(hash(str(project.resolve())))}"
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(package, lib / "__init__.py", submodule_search_locations=[str(lib)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.{name}")


def project_config(profile: str | None = None, **sections) -> dict:
    """The config a project's workflow sees: the skeleton's config/config.yaml (default answers), the profile's
    cluster description, `sections` replacing top-level sections, validated with the defaults filled in."""
    from smkml import schemas

    text = (SKELETON / "config/config.yaml").read_text()
    text = text.replace("{{ cookiecutter.training_backend | quote }}", json.dumps(choices("training_backend")[0]))
    text = text.replace("{{ cookiecutter.project_slug | quote }}", json.dumps("demo"))
    config = {**yaml.safe_load(text), **(cluster_description(profile) if profile else {}), **sections}
    return schemas.validate(config)


def command_env(**extra: str) -> dict[str, str]:
    """The test interpreter's bin/ first on PATH, so snakemake, dvc and papermill resolve."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def run(command: list[str] | str, cwd: Path, check: bool = True, timeout: int = 600, **extra_env: str):
    """Run a command; on failure the assertion shows its output."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env=command_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        shell=isinstance(command, str),
    )
    if check:
        assert result.returncode == 0, (
            f"{command} failed ({result.returncode}) in {cwd}\n--- stdout\n{result.stdout[-6000:]}"
            f"\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def generate(output_dir: Path, template: str | Path = TEMPLATE_DIR, **answers: str) -> Path:
    """Generate a project without prompts; returns its directory."""
    return Path(
        cookiecutter(str(template), no_input=True, output_dir=str(output_dir), extra_context=answers)
    )


def pytest_configure(config):
    """pytest-cookies bakes this template, wherever pytest is started from."""
    config.option.template = str(TEMPLATE_DIR)
    import scheduling  # how `make test` shares the tests between pytest-xdist workers

    config.pluginmanager.register(scheduling, "smkml-scheduling")


@pytest.fixture(scope="session")
def template_dir() -> Path:
    return TEMPLATE_DIR


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (moto's server mode) on 127.0.0.1 with one empty bucket."""
    import socket
    import time

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    process = subprocess.Popen(
        [str(BIN_DIR / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in credentials.items() if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
    for _ in range(100):
        try:
            client.create_bucket(Bucket="pipeline")
            break
        except Exception:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"moto server did not start on {endpoint}")
    yield {"endpoint": endpoint, "bucket": "pipeline", "env": credentials}
    process.terminate()
    process.wait(timeout=10)


# JupyterLab's environment for the tests, kept between test sessions like the images (its stamp names the lab lock's
# checksum, so a changed lock installs again). The template's own environment has no JupyterLab: requirements-lab.lock
# is kept out of it, so that the suite's pipelines do not pay its import cost (see that file).
LAB_VENV = Path(os.environ.get("SMKML_CACHE", Path.home() / ".cache/cookiecutter-snakemake-ml")) / "lab-venv"


@pytest.fixture(scope="session")
def lab_venv(tmp_path_factory) -> Path:
    """JupyterLab's environment, made by the project's own rule (`make lab-env LAB_VENV=...`: the Makefile and lab
    lock of the skeleton and the installer it runs, workflow/lib/smkml/install_env.py, as a generated project has
    them) once per machine."""
    import fcntl
    import shutil

    work = tmp_path_factory.mktemp("lab-env")
    for name in ("Makefile", "requirements-lab.lock"):
        shutil.copy(SKELETON / name, work / name)
    installer = work / "workflow/lib/smkml/install_env.py"
    installer.parent.mkdir(parents=True)
    shutil.copy(TEMPLATE_DIR / "rules_lib/lib/smkml/install_env.py", installer)
    LAB_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(LAB_VENV.parent / ".lab-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache
        run(["make", "--no-print-directory", "lab-env", f"LAB_VENV={LAB_VENV}"], work, timeout=1200)
    return LAB_VENV


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running two-node LUMI-G-shaped Slurm cluster with accounting (mini-LUMI), for the whole test session."""
    from slurm_cluster import MiniLumi, ensure_installed

    ensure_installed()
    cluster = MiniLumi(tmp_path_factory.mktemp("minilumi"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
