"""`make env`'s installer (rules_lib/lib/smkml/install_env.py, issue 18): uv with pip's own settings, pip as the
fallback. pip's settings come from a real `pip config list`; the installs are real, from an offline wheelhouse (as on
a compute node), with PIP_CONFIG_FILE=/dev/null so this machine's own pip.conf plays no part. The whole lock through
a generated project's `make env` is tested in test_first_hour.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEMPLATE_DIR

from smkml import install_env

SCRIPT = TEMPLATE_DIR / "rules_lib/lib/smkml/install_env.py"
LOCK = TEMPLATE_DIR / "{{cookiecutter.project_slug}}/requirements.lock"


def pin(name: str) -> str:
    """The lock's line for a package (the wheelhouse serves exactly what the lock pins)."""
    return next(line for line in LOCK.read_text().splitlines() if line.lower().startswith(name.lower() + "=="))


def test_pip_settings_become_uv_options(tmp_path):
    """A PIP_* variable wins over the install section, which wins over global; a local index or wheel folder that
    does not exist is left out with a note (pip only warns about it); pip's certificate bundle is uv's too."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    settings = {
        "global.index-url": "https://mirror.example.org/simple",
        "install.index-url": "https://site.example.org/simple",
        "global.extra-index-url": f"file://{tmp_path}/absent https://extra.example.org/simple",
        "global.find-links": "/nowhere",
        ":env:.find-links": f"{wheels} file://{wheels}",
        "global.no-index": "false",
        ":env:.no-index": "1",
        "global.cert": "/etc/ssl/certs/site.pem",
        "global.constraint": "/etc/pip/constraints.txt",
        "global.timeout": "60",
    }
    args, env, notes = install_env.uv_arguments(settings)
    assert args == ["--index-strategy", "unsafe-best-match",
                    "--index-url", "https://site.example.org/simple",
                    "--extra-index-url", "https://extra.example.org/simple",
                    "--find-links", str(wheels), "--find-links", f"file://{wheels}",
                    "--constraint", "/etc/pip/constraints.txt",
                    "--no-index"]
    assert notes == [f"extra-index-url file://{tmp_path}/absent does not exist here (pip ignores it too)"]
    if not os.environ.get("SSL_CERT_FILE"):
        assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/site.pem"}


def test_pip_config_is_read_from_pip_itself():
    """What `pip config list` prints for variables is what uv_arguments reads."""
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "/srv/wheels", "PIP_NO_INDEX": "1"}
    result = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                             "import json; from smkml import install_env; print(json.dumps(install_env.pip_config(sys.executable)))",
                             str(TEMPLATE_DIR / "rules_lib/lib")], env=env, capture_output=True, text=True, check=True)
    settings = json.loads(result.stdout)
    assert install_env.pip_setting(settings, "find-links") == "/srv/wheels"
    assert install_env.is_true(install_env.pip_setting(settings, "no-index"))


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """An offline wheel folder with uv and PyYAML (downloaded once, as a site would prepare one)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "-d", str(folder), f"uv=={install_env.UV_VERSION}", pin("pyyaml")], check=True)
    return folder


def offline_install(tmp_path: Path, wheels: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(pin("pyyaml") + "\n")
    venv = tmp_path / "venv"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "UV_", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels),
               UV_CACHE_DIR=str(tmp_path / "uv-cache"), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, str(SCRIPT), "--venv", str(venv), "-r", str(requirements), *args],
                            env=env, capture_output=True, text=True, timeout=300)
    return result, venv


def test_uv_installs_from_pips_offline_wheelhouse(tmp_path, wheelhouse):
    """pip's no-index and find-links reach uv: it installs offline, with the modules compiled."""
    result, venv = offline_install(tmp_path, wheelhouse)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "with uv (pip's settings: --find-links" in output and "--no-index" in output, output
    assert "installing" in output and "with pip" not in output
    version = subprocess.run([str(venv / "bin/uv"), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.split()[1] == install_env.UV_VERSION
    imported = subprocess.run([str(venv / "bin/python"), "-c", "import yaml; print(yaml.__version__)"],
                              capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == pin("pyyaml").split("==")[1]
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert list((site / "yaml/__pycache__").glob("__init__.*.pyc")), "uv did not compile the modules"
    assert (venv / "bin/pip").exists()  # pip stays usable in the environment


def test_without_uv_in_reach_pip_installs_and_says_why(tmp_path, wheelhouse):
    """A wheelhouse without uv (an offline site that never heard of it): pip installs the same pins."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("uv-"):
            (wheels / wheel.name).symlink_to(wheel)
    result, venv = offline_install(tmp_path, wheels)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "uv did not work" in output and "installing with pip instead" in output, output
    assert not (venv / "bin/uv").exists()
    subprocess.run([str(venv / "bin/python"), "-c", "import yaml"], check=True)

    strict, _ = offline_install(tmp_path / "strict", wheels, "--installer", "uv")
    assert strict.returncode == 1
    assert "install_env: error: failed:" in strict.stderr and f"uv=={install_env.UV_VERSION}" in strict.stderr


def test_installer_choice_is_checked(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--venv", str(tmp_path / "v"), "--installer", "conda"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "--installer 'conda' is not one of: auto, uv, pip" in result.stderr
    assert not (tmp_path / "v").exists()
