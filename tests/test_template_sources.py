"""Generating from a git URL, the launch command composer, the Horovod build script, the docs site."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from smkml.launch import SLURM_LAUNCH, training_command

from conftest import TEMPLATE_DIR, generate, run


def test_template_given_as_git_url(tmp_path):
    """cookiecutter clones the template; the post-generation hook vendors from that clone."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "site", "__pycache__", ".pytest_cache")
    shutil.copytree(TEMPLATE_DIR, source, ignore=ignore)
    run(["git", "init", "--quiet", "--initial-branch=main"], source)
    run(["git", "add", "--all"], source)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "--quiet", "-m", "template"], source)
    bare = tmp_path / "template.git"
    run(["git", "clone", "--quiet", "--bare", str(source), str(bare)], tmp_path)

    project = generate(tmp_path / "out", template=f"file://{bare}", project_name="Remote Study")
    assert (project / "workflow/rules/train.smk").read_text() == (TEMPLATE_DIR / "rules_lib/rules/train.smk").read_text()
    assert (project / "profiles/lumi/profile.yaml").is_file()
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    run(["snakemake", "-n", "--profile", "profiles/local"], project)


def test_template_given_as_relative_path(tmp_path):
    """`cookiecutter .` from the template checkout, as `make demo` and users do."""
    result = run(["cookiecutter", "--no-input", "--output-dir", str(tmp_path), "."], TEMPLATE_DIR)
    assert "vendored" in result.stdout
    assert (tmp_path / "digits-classifier/workflow/rules/common.smk").is_file()


PACKAGE_ARGS = dict(package="demo", args=["--train", "data/processed/train.npz", "--params", '{"epochs": 3}'])


@pytest.mark.parametrize(
    "launcher, backend, processes, expected",
    [
        ("local", "horovod", 2,
         "python -m demo.local_ranks --backend horovod --processes 2 -- python -m demo.train --backend horovod "
         "--train data/processed/train.npz --params '{\"epochs\": 3}'"),
        ("local", "torch_ddp", 2,
         "python -m demo.local_ranks --backend torch_ddp --processes 2 -- python -m demo.train --backend torch_ddp "
         "--train data/processed/train.npz --params '{\"epochs\": 3}'"),
        ("local", "horovod", 1,
         "env HOROVOD_CONTROLLER=gloo HOROVOD_CPU_OPERATIONS=gloo python -m demo.train --backend horovod --train data/processed/train.npz --params '{\"epochs\": 3}'"),
        ("mpirun", "horovod", 2,
         f"{sys.executable} {SLURM_LAUNCH} --nodes 1 --backend horovod --mpi auto --runtime '[]' -- mpirun -np 2 --bind-to none python -m demo.train --backend horovod "
         "--train data/processed/train.npz --params '{\"epochs\": 3}'"),
        ("srun", "horovod", 1,
         f"{sys.executable} {SLURM_LAUNCH} --alone -- "
         "python -m demo.train --backend horovod --train data/processed/train.npz --params '{\"epochs\": 3}'"),
        ("srun", "torch_ddp", 16,
         f"{sys.executable} {SLURM_LAUNCH} --nodes 1 --backend torch_ddp --mpi auto --runtime '[]' -- "
         "srun --ntasks=16 python -m demo.train --backend torch_ddp "
         "--train data/processed/train.npz --params '{\"epochs\": 3}'"),
    ],
)
def test_training_command_golden(launcher, backend, processes, expected):
    assert training_command(launcher=launcher, backend=backend, processes=processes, **PACKAGE_ARGS) == expected


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"launcher": "mpiexec"}, "launcher 'mpiexec' is not supported (allowed: local, srun, torchrun, mpirun)"),
        ({"launcher": "torchrun"}, "launcher 'torchrun' starts torch DDP ranks only (backend 'horovod': use srun or mpirun)"),
        ({"backend": "deepspeed"}, "backend 'deepspeed' is not supported (allowed: horovod, torch_ddp)"),
        ({"processes": 0}, "processes must be at least 1, got 0"),
    ],
)
def test_training_command_rejects_bad_values(changes, message):
    arguments = {"launcher": "local", "backend": "horovod", "processes": 2, **PACKAGE_ARGS, **changes}
    with pytest.raises(ValueError) as error:
        training_command(**arguments)
    assert str(error.value) == message


def test_horovod_build_script_rejects_unknown_gpu_variant():
    result = subprocess.run(
        ["bash", str(TEMPLATE_DIR / "containers/horovod/build-horovod.sh"), "--gpu", "metal"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "--gpu 'metal' is not one of: cpu, rocm, cuda" in result.stderr


def test_horovod_is_built_and_importable():
    """make env builds Horovod with the script; both controllers are there."""
    import horovod.torch as hvd

    assert __import__("horovod").__version__ == "0.28.1"
    assert hvd.gloo_built() and hvd.mpi_built()


def test_docs_build_strict(tmp_path):
    run(["mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], TEMPLATE_DIR)
    assert (tmp_path / "site/index.html").is_file()
