"""The project's Charliecloud CPU image, built for real without any image registry by the project's own
containers/cpu/build-charliecloud.sh: a Debian root filesystem from apt, the project's requirements.lock and
Horovod wheel installed offline, the project package, the build inputs in /etc/smkml-image.json. Cached under
~/.cache/cookiecutter-snakemake-ml/images: a second build reuses it.

The tests that run the image (test_container_slurm.py on mini-LUMI, test_interactive.py's kernel, test_serving.py's
podman pod) build it through `build_image` below and find it in the cache. Under `make test` this module starts
first on the worker beside the mini-LUMI group (marker `image_build`, tests/scheduling.py), so the cold build
(about 10 min in CI: downloads and installs) overlaps the Slurm tests instead of running between them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import generate, run
from system_packages import apt_install
from test_slurm_pipeline import ACCOUNT

pytestmark = [pytest.mark.container, pytest.mark.image_build]

CONTAINER_PACKAGES = ("charliecloud-runtime", "charliecloud-builders", "mmdebstrap")


def ensure_charliecloud() -> None:
    """ch-run and mmdebstrap from apt when missing (root only), as the Slurm cluster's packages are."""
    if shutil.which("ch-run") and shutil.which("mmdebstrap"):
        return
    if os.geteuid() != 0:
        pytest.fail(f"container tests need ch-run and mmdebstrap: apt-get install {' '.join(CONTAINER_PACKAGES)}")
    apt_install(CONTAINER_PACKAGES)


def build_image(project: Path) -> tuple[Path, str]:
    """The project's Charliecloud image (built or reused from the cache) and the build script's messages."""
    # With Horovod (the image serves both backends); otherwise the script follows config train.backend.
    result = run(["bash", "containers/cpu/build-charliecloud.sh", "--backend", "horovod", "--python", sys.executable],
                 project, timeout=1800,
                 USER=os.environ.get("USER", "root"))
    image = Path(result.stdout.strip().splitlines()[-1])
    return image, result.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A LUMI project (Horovod backend) and its image, built or found in the cache, with the build's messages."""
    ensure_charliecloud()
    project = generate(tmp_path_factory.mktemp("image"), cluster="lumi", slurm_account=ACCOUNT,
                       training_backend="horovod")
    image, build_log = build_image(project)
    return project, image, build_log


def test_image_records_its_build_inputs(built):
    project, image, _ = built
    assert (project / "containers/images/cpu").resolve() == image
    # localhost resolves inside (rendezvous at localhost: torchrun --standalone, Gloo); ch-run brings no /etc/hosts.
    assert "127.0.0.1 localhost" in (image / "etc/hosts").read_text()
    assert str(image).startswith(str(Path.home() / ".cache/cookiecutter-snakemake-ml/images/digits-classifier-"))
    meta = json.loads((image / "etc/smkml-image.json").read_text())
    lock = (project / "requirements.lock").read_bytes()
    assert meta["requirements_lock_sha256"] == hashlib.sha256(lock).hexdigest()
    lab_lock = (project / "requirements-lab.lock").read_bytes()
    assert meta["requirements_lab_lock_sha256"] == hashlib.sha256(lab_lock).hexdigest()
    assert meta["base"].startswith("debian:bookworm")
    assert meta["horovod_wheel"].startswith("horovod-0.28.1-cp311")
    assert meta["project"] == "digits-classifier" and meta["project_dir"] == str(project)
    assert meta["template_version"] == json.loads(Path(__file__).parents[1].joinpath("cookiecutter.json").read_text())[
        "_template_version"]
    assert (image / "opt/smkml/requirements.lock").read_bytes() == lock
    assert (image / "opt/smkml/requirements-lab.lock").read_bytes() == lab_lock
    assert list((image / "opt/venv/lib/python3.11/site-packages").glob("digits_classifier-0.1.0.dist-info"))


def test_the_image_has_no_slurm_tools(built):
    """As on LUMI: nothing inside the container may need scontrol, srun or squeue."""
    _, image, _ = built
    result = subprocess.run(["ch-run", str(image), "--", "sh", "-c", "command -v scontrol srun squeue sbatch; true"],
                            capture_output=True, text=True, env={**os.environ, "USER": os.environ.get("USER", "root")},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_second_build_reuses_the_cached_image(built):
    project, image, _ = built
    again, messages = build_image(project)
    assert again == image
    assert f"using cached image {image}" in messages
    assert "using cached base image" in messages
