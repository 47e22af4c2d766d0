"""The container recipes in containers/: every Apptainer definition parsed (spython for the docker-based ones; the
LUMI one, which starts from a local LUMI image spython cannot parse, section by section), the cotainr environment,
and the build commands' refusals. Building them needs apptainer/singularity/cotainr and (LUMI, CUDA) GPUs, none of
which this machine has: these tests stop at that boundary; tests/test_container_slurm.py builds and runs the
Charliecloud CPU image for real.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from spython.main.parse.parsers import SingularityParser

from conftest import TEMPLATE_DIR, generate, run

CONTAINERS = TEMPLATE_DIR / "containers"
# LUMI AI Factory's PyTorch image on LUMI (ROCm, torch, libfabric with CXI, MPICH, aws-ofi-rccl), as the LUMI AI
# Guide names it; the LUMI definition starts from it and uses its torch and MPICH.
LUMI_RELEASE = "u24r64f21m43t29-20260225_144743"
LUMI_BASE = f"/appl/local/laifs/containers/lumi-multitorch-{LUMI_RELEASE}/lumi-multitorch-full-{LUMI_RELEASE}.sif"
# variant -> (definition, Horovod GPU flavour, base image, torch index, MPI package) of the docker-based definitions
DEFINITIONS = {
    "cuda": ("containers/cuda/horovod-cuda.def", "cuda", "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04",
             "https://download.pytorch.org/whl/cu128", "libopenmpi-dev"),
    "cpu": ("containers/cpu/horovod-cpu.def", "cpu", "debian:bookworm-slim",
            "https://download.pytorch.org/whl/cpu", "libopenmpi-dev"),
}
FILES = [
    "requirements.lock /opt/smkml/requirements.lock",
    "requirements-lab.lock /opt/smkml/requirements-lab.lock",
    "pyproject.toml /opt/smkml/project/pyproject.toml",
    "src /opt/smkml/project/src",
    "vendored.json /opt/smkml/vendored.json",
    "containers/extra-requirements.txt /opt/smkml/extra-requirements.txt",
    "containers/horovod/build-horovod.sh /opt/smkml/build-horovod.sh",
    "containers/install-project.sh /opt/smkml/install-project.sh",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("recipes"), cluster="lumi", training_backend="horovod")


def sections(path) -> dict[str, str]:
    """The raw %sections of a definition file."""
    text = path.read_text()
    parts = re.split(r"^%(\w+)\s*$", text, flags=re.M)
    return {name: body for name, body in zip(parts[1::2], parts[2::2])}


@pytest.mark.parametrize("variant", sorted(DEFINITIONS))
def test_definition_parses_and_carries_everything(project, variant):
    definition, gpu, base, torch_index, mpi = DEFINITIONS[variant]
    path = project / definition  # vendored into the project, built from its root
    recipe = SingularityParser(str(path)).recipe["spython-base"]
    assert re.search(r"^Bootstrap: docker$", path.read_text(), re.M)
    assert recipe.fromHeader == base
    assert recipe.labels == [
        f"org.smkml.variant {variant}",
        f"org.smkml.recipe {definition}",
        "org.smkml.horovod 0.28.1",
        f"org.opencontainers.image.base.name docker.io/{'library/' if '/' not in base else ''}{base}",
    ]
    assert recipe.files == FILES
    for entry in FILES:  # every file the build copies exists in a generated project
        assert (project / entry.split()[0]).exists(), entry
    assert recipe.environ[0] == "PATH=/opt/venv/bin:$PATH"
    post = " ".join(line.rstrip("\\").strip() for line in sections(path)["post"].splitlines()).strip()
    assert post.startswith("set -eu apt-get update")
    for package in ("python3-venv", "python3-dev", "g++", "cmake", mpi, "ca-certificates"):
        assert f" {package} " in f" {post} ", package
    assert (f"bash /opt/smkml/install-project.sh --gpu {gpu} --base docker://{base} --torch-index {torch_index}"
            in post)
    assert "import torch, horovod.torch as hvd" in sections(path)["test"]
    assert recipe.cmd == 'exec /opt/venv/bin/python "$@"'


LUMI_DEF = "containers/lumi/horovod-rocm.def"


def section_lines(path, name) -> list[str]:
    """The non-comment lines of a %section (spython parses only docker-bootstrapped definitions)."""
    lines = [line.strip() for line in sections(path)[name].splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def lumi_environment(path) -> list[str]:
    return [line.removeprefix("export ") for line in section_lines(path, "environment")]


def test_lumi_definition_starts_from_lumi_multitorch_and_keeps_its_torch_and_mpi(project):
    """The LUMI image is LUMI AI Factory's lumi-multitorch (the RCCL network plugin for Slingshot comes with it) plus
    the project: its torch is kept (no torch index, no pip torch), no distribution MPI shadows its MPICH."""
    path = project / LUMI_DEF
    text = path.read_text()
    assert re.search(r"^Bootstrap: localimage$", text, re.M)
    assert re.search(rf"^From: {re.escape(LUMI_BASE)}$", text, re.M)
    assert section_lines(path, "labels") == [
        "org.smkml.variant lumi-rocm",
        f"org.smkml.recipe {LUMI_DEF}",
        "org.smkml.horovod 0.28.1",
        f"org.opencontainers.image.base.name {LUMI_BASE}",
    ]
    assert section_lines(path, "files") == FILES
    assert lumi_environment(path)[0] == "PATH=/opt/venv/bin:$PATH"
    post = " ".join(line.rstrip("\\").strip() for line in sections(path)["post"].splitlines()).strip()
    assert f"bash /opt/smkml/install-project.sh --gpu rocm --system-torch --python python3 --base {LUMI_BASE}" in post
    assert "--torch-index" not in post and "download.pytorch.org" not in post
    for package in ("g++", "cmake", "python3-venv"):
        assert f" {package} " in f" {post} ", package
    for package in ("mpich", "libmpich-dev", "openmpi", "libopenmpi-dev"):
        assert f" {package} " not in f" {post} ", f"{package} would shadow the base image's MPICH"
    assert "/.singularity.d/env/" in post  # the base image's PATH (its Python with torch) during the build
    test = sections(path)["test"]
    assert "import torch, horovod.torch as hvd" in test and "librccl-net" in test
    assert section_lines(path, "runscript") == ['exec /opt/venv/bin/python "$@"']
    # The documented checks on LUMI: the bindings module, the CXI provider in RCCL's log.
    header = text.split("Bootstrap:")[0]
    for needed in ("module use /appl/local/laifs/modules", "module load lumi-aif-singularity-bindings",
                   "aws-ofi-rccl", "NCCL_DEBUG=INFO", "module load systools"):
        assert needed in header, needed


def test_lumi_definition_sets_lumi_runtime_defaults_that_the_launch_can_override(project):
    environ = lumi_environment(project / LUMI_DEF)
    assert "NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-hsn0,hsn1,hsn2,hsn3}" in environ
    assert "NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}" in environ
    # per-job caches are set by the launch; the image only gives a /tmp default
    assert "MIOPEN_USER_DB_PATH=${MIOPEN_USER_DB_PATH:-/tmp/${USER:-user}-miopen-cache}" in environ


def test_install_step_system_torch_mode_keeps_the_base_torch():
    script = (CONTAINERS / "install-project.sh").read_text()
    assert '"$python" -m venv --system-site-packages /opt/venv' in script
    assert "grep -v -i -E '^(torch|torchvision|torchaudio|triton|pytorch-triton-rocm)=='" in script
    assert '"torch_from": "the base image" if system_torch == "1" else "requirements.lock"' in script


def test_install_step_builds_horovod_with_the_shared_script_and_records_inputs():
    script = (CONTAINERS / "install-project.sh").read_text()
    run(["bash", "-n", str(CONTAINERS / "install-project.sh")], TEMPLATE_DIR)
    assert 'bash "$src/build-horovod.sh" --gpu "$gpu" --python /opt/venv/bin/python' in script
    assert 'lock="$src/requirements.lock"' in script and '"${pip[@]}" -r "$lock"' in script
    assert '"${pip[@]}" -r "$src/requirements-lab.lock"' in script  # JupyterLab on top, for the notebook pod
    assert '"${pip[@]}" --no-deps "$src/project"' in script
    assert 'open("/etc/smkml-image.json", "w")' in script
    # Kubernetes pods install the storage plugin from the image's wheels (the lock's versions), never from an index.
    assert '-c "$lock" -d /opt/smkml/pod-wheels' in script and "snakemake-storage-plugin-s3" in script
    assert '"[install]" "no-index = true" "find-links = /opt/smkml/pod-wheels" > /opt/venv/pip.conf' in script
    for label in ("requirements-lock-sha256", "requirements-lab-lock-sha256", "base-image", "template-version", "gpu"):
        assert f"org.smkml.{label} " in script


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpu", "metal", "--base", "x"], "--gpu 'metal' is not one of: cpu, rocm, cuda"),
        (["--gpu", "cpu"], "--base IMAGE is required"),
        (["--gpu", "cpu", "--base", "x"], "requirements.lock is missing: the definition's %files must copy it"),
        (["--wheelhouse"], "unknown argument '--wheelhouse'"),
    ],
)
def test_install_step_refuses_bad_input(tmp_path, args, message):
    result = run(["bash", str(CONTAINERS / "install-project.sh"), *args], tmp_path, check=False, SMKML_SRC=str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr


def staged_sources(src):
    """What the definitions' %files copy, as empty stand-ins (the install stops before using them)."""
    for name in ("requirements.lock", "requirements-lab.lock", "extra-requirements.txt", "project/pyproject.toml",
                 "build-horovod.sh"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("")
    (src / "project/src").mkdir()


def test_install_step_system_torch_refuses_a_python_without_torch(tmp_path):
    staged_sources(tmp_path)
    no_torch = tmp_path / "python3"  # an interpreter that cannot import torch
    no_torch.write_text("#!/bin/sh\nexit 1\n")
    no_torch.chmod(0o755)
    args = ["--gpu", "rocm", "--base", LUMI_BASE, "--system-torch", "--python", str(no_torch)]
    result = run(["bash", str(CONTAINERS / "install-project.sh"), *args], tmp_path, check=False, SMKML_SRC=str(tmp_path))
    assert result.returncode == 2
    assert f"--system-torch: '{no_torch}' has no torch; the base image's Python with its torch must be on PATH" in result.stderr
    result = run(["bash", str(CONTAINERS / "install-project.sh"), *args, "--torch-index", "https://x"], tmp_path,
                 check=False, SMKML_SRC=str(tmp_path))
    assert result.returncode == 2 and "--torch-index makes no sense with it" in result.stderr


def test_cotainr_environment_is_the_lock(project, tmp_path):
    output = tmp_path / "env.yml"
    run(["python", "containers/lumi/cotainr_env.py", "--output", str(output)], project)
    env = yaml.safe_load(output.read_text())
    assert set(env) == {"name", "channels", "dependencies"}
    assert env["channels"] == ["conda-forge"]
    python, pip, pip_section = env["dependencies"]
    assert (python, pip) == ("python=3.11", "pip")
    lock = [line for line in (project / "requirements.lock").read_text().splitlines() if line and line[0] != "#"]
    lab = [line for line in (project / "requirements-lab.lock").read_text().splitlines() if line and line[0] != "#"]
    assert any(line.startswith("jupyterlab==") for line in lab)
    extra = [line for line in (project / "containers/extra-requirements.txt").read_text().splitlines()
             if line and line[0] != "#"]
    assert extra == ["setuptools==80.10.2"]  # torch needs setuptools>=77; the lock leaves it out
    # The lock, then JupyterLab's packages that the lock lacks (the shared ones once, at the lock's versions).
    assert pip_section["pip"] == ["--extra-index-url https://download.pytorch.org/whl/rocm6.4", *lock,
                                  *[line for line in lab if line not in lock], *extra, str(project)]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^=\s]+", line) for line in lock)
    meta = json.loads((tmp_path / "lumi-cotainr.json").read_text())
    assert meta["requirements_lock_sha256"] == hashlib.sha256((project / "requirements.lock").read_bytes()).hexdigest()
    assert meta["requirements_lab_lock_sha256"] == hashlib.sha256(
        (project / "requirements-lab.lock").read_bytes()).hexdigest()
    assert meta["template_version"] == json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())["_template_version"]


def test_lumi_build_off_lumi_names_the_missing_base_image(project):
    """Off LUMI (no /appl/local/laifs) the build says which image is missing and where to build, before any builder."""
    if Path(LUMI_BASE).exists():
        pytest.skip("the LUMI base image is on this machine")
    result = run(["bash", "containers/build.sh", "lumi"], project, check=False)
    assert result.returncode == 2
    assert (f"variant 'lumi' starts from the local image {LUMI_BASE} (From: in {LUMI_DEF}), which is not on this "
            "machine: build on LUMI") in result.stderr


@pytest.mark.skipif(bool(shutil.which("apptainer") or shutil.which("singularity")), reason="a builder is installed")
@pytest.mark.parametrize("variant", ["cuda", "cpu-apptainer"])
def test_build_names_the_missing_builder(project, variant):
    result = run(["bash", "containers/build.sh", variant], project, check=False)
    assert result.returncode == 2
    assert f"variant '{variant}' needs apptainer or singularity, and neither is on PATH" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["docker"], "unknown variant 'docker' (allowed: cpu, cpu-apptainer, cuda, lumi, lumi-cotainr, oci)"),
        ([], "which variant? (allowed: cpu, cpu-apptainer, cuda, lumi, lumi-cotainr, oci)"),
        (["cpu", "--backend", "jax"], "--backend 'jax' is not one of: horovod, torch_ddp"),
    ],
)
def test_build_refuses_bad_variants(project, args, message):
    result = run(["bash", "containers/build.sh", *args], project, check=False)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.skipif(bool(shutil.which("cotainr")), reason="cotainr is installed")
def test_cotainr_build_names_the_missing_builder(project):
    result = run(["bash", "containers/build.sh", "lumi-cotainr"], project, check=False)
    assert result.returncode == 2
    assert "variant 'lumi-cotainr' needs cotainr" in result.stderr
