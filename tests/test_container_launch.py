"""The container runtime layer of a training launch: golden command lines per runtime x launcher, clear errors.

Each line is what a generated project's `train_model` rule runs (launcher -> runtime -> python), composed by
`training_command` in rules_lib/lib/smkml/launch.py from the config's `container:` section and the cluster
description's `container:` defaults. A project generated from the template is checked too: a bad runtime or a
missing image stops `snakemake` while it parses the workflow, naming the value and what is allowed.
"""

from __future__ import annotations

import json
import shlex
import sys

import pytest
import yaml
from smkml import resources
from smkml.launch import SLURM_LAUNCH, ContainerError, container_probe, resolve_container, training_command

from conftest import generate, project_config, run

WORKDIR = "/scratch/project_465000001/demo"
LUMI_MASK = (
    "mask_cpu:0x00fe000000000000,0xfe00000000000000,0x0000000000fe0000,0x00000000fe000000,"
    "0x00000000000000fe,0x000000000000fe00,0x000000fe00000000,0x0000fe0000000000"
)
LUMI_BINDS = ("-B /var/spool/slurmd -B /opt/cray -B /usr/lib64/libcxi.so.1 -B /pfs -B /scratch -B /projappl "
              "-B /flash")
IMAGES = {"apptainer": "containers/images/demo.sif", "singularity": "containers/images/demo.sif",
          "charliecloud": "containers/images/cpu"}

# Launch situations: (launcher, cluster, backend, resources of train_model). The rank count follows from them.
SITUATIONS = {
    "local-horovod": ("local", None, "horovod", {}),
    "local-ddp": ("local", None, "torch_ddp", {}),
    "srun-lumi": ("srun", "lumi", "horovod", {"gpus": 8, "nodes": 2}),  # two full LUMI-G nodes, 16 ranks
    "srun-slurm": ("srun", "slurm", "torch_ddp", {"gpus": 8, "nodes": 2}),
    "torchrun-lumi": ("torchrun", "lumi", "torch_ddp", {"gpus": 8, "nodes": 2}),  # one torchrun per node
    "mpirun-lumi": ("mpirun", "lumi", "horovod", {"gpus": 2, "nodes": 1}),
    "srun-lumi-cpu": ("srun", "lumi", "torch_ddp", {"gpus": 0}),  # CPU training: 2 ranks, no GPU flag
}

SIF = "containers/images/demo.sif"
CH = f"ch-run --set-env -b {WORKDIR} -c {WORKDIR} containers/images/cpu --"
# How each runtime starts a command (LUMI: --rocm and LUMI's binds; the slurm cluster: --nv, no binds).
RUN_IN = {
    ("none", "lumi"): "", ("none", "slurm"): "", ("charliecloud", "lumi"): CH, ("charliecloud", "slurm"): CH,
    **{(rt, "lumi"): f"{rt} exec --rocm {LUMI_BINDS} {SIF}" for rt in ("apptainer", "singularity")},
    **{(rt, "lumi-cpu"): f"{rt} exec {LUMI_BINDS} {SIF}" for rt in ("apptainer", "singularity")},
    **{(rt, "slurm"): f"{rt} exec --nv {SIF}" for rt in ("apptainer", "singularity")},
    ("none", "lumi-cpu"): "", ("charliecloud", "lumi-cpu"): CH,
}
# The inner srun's layout, explicit (the jobstep executor strips SLURM_* variables).
LUMI_FULL = f"--nodes=2 --ntasks-per-node=8 --cpus-per-task=7 --cpu-bind={LUMI_MASK}"


def host(backend: str, nodes: int, runtime: str, cluster: str = "lumi") -> str:
    """The host side of a multi-rank Slurm launch: slurm_launch.py with the rendezvous, MPI and cache settings."""
    cache = ["--cache-dir", "/tmp"] if cluster.startswith("lumi") else []
    return shlex.join([sys.executable, str(SLURM_LAUNCH), "--nodes", str(nodes), "--backend", backend, "--mpi", "auto",
                       "--runtime", json.dumps(shlex.split(runtime)), *cache, "--"])


def slurm_lines(runtime: str) -> dict:
    lumi, slurm, cpu = (" ".join(filter(None, [RUN_IN[runtime, c]])) for c in ("lumi", "slurm", "lumi-cpu"))

    def join(*words):
        return " ".join(word for word in words if word)

    return {
        (runtime, "srun-lumi"): join(host("horovod", 2, lumi), "srun", LUMI_FULL, lumi, "python -m demo.train --backend horovod"),
        (runtime, "srun-slurm"): join(host("torch_ddp", 2, slurm, "slurm"), "srun --nodes=2 --ntasks-per-node=8 "
                                      "--cpus-per-task=10", slurm, "python -m demo.train --backend torch_ddp"),
        (runtime, "torchrun-lumi"): join(host("torch_ddp", 2, lumi), "srun --nodes=2 --ntasks-per-node=1 "
                                         "--cpus-per-task=56", lumi, "torchrun --nnodes=2 --nproc-per-node=8 "
                                         "--rdzv-backend=c10d -m demo.train --backend torch_ddp"),
        (runtime, "mpirun-lumi"): join(host("horovod", 1, lumi), "mpirun -np 2 --bind-to none", lumi,
                                       "python -m demo.train --backend horovod"),
        (runtime, "srun-lumi-cpu"): join(host("torch_ddp", 1, cpu), "srun --nodes=1 --ntasks-per-node=2 "
                                         "--cpus-per-task=1", cpu, "python -m demo.train --backend torch_ddp"),
    }


GOLDEN = {
    ("none", "local-horovod"): "python -m demo.local_ranks --backend horovod --processes 2 -- python -m demo.train --backend horovod",
    ("none", "local-ddp"): "python -m demo.local_ranks --backend torch_ddp --processes 2 -- python -m demo.train --backend torch_ddp",
    # Apptainer / Singularity / Charliecloud: the local launcher runs inside the image.
    ("apptainer", "local-horovod"): "apptainer exec containers/images/demo.sif python -m demo.local_ranks --backend horovod --processes 2 -- python -m demo.train --backend horovod",
    ("apptainer", "local-ddp"): "apptainer exec containers/images/demo.sif python -m demo.local_ranks --backend torch_ddp --processes 2 -- python -m demo.train --backend torch_ddp",
    ("singularity", "local-horovod"): "singularity exec containers/images/demo.sif python -m demo.local_ranks --backend horovod --processes 2 -- python -m demo.train --backend horovod",
    ("singularity", "local-ddp"): "singularity exec containers/images/demo.sif python -m demo.local_ranks --backend torch_ddp --processes 2 -- python -m demo.train --backend torch_ddp",
    ("charliecloud", "local-horovod"): f"{CH} python -m demo.local_ranks --backend horovod --processes 2 -- python -m demo.train --backend horovod",
    ("charliecloud", "local-ddp"): f"{CH} python -m demo.local_ranks --backend torch_ddp --processes 2 -- python -m demo.train --backend torch_ddp",
    # On Slurm, one container per rank (torchrun: per node), started by the launcher from the host, as LUMI
    # documents: srun --cpu-bind=mask_cpu:... singularity exec --rocm -B <binds> image python ...
    **{key: line for runtime in ("none", "apptainer", "singularity", "charliecloud")
       for key, line in slurm_lines(runtime).items()},
}


def container_section(runtime: str, **changes) -> dict:
    """A complete `container:` section (the schema requires every key) for `runtime`."""
    return {"runtime": runtime, "image": IMAGES.get(runtime, ""), "gpu": "auto", "binds": [], **changes}


def launch_line(runtime: str, situation: str, **container) -> str:
    """The training command as train.smk composes it (resources -> ranks, srun options, container)."""
    launcher, cluster_name, backend, needs = SITUATIONS[situation]
    config = project_config(cluster_name, resources={"default": {"cpus": 1, "mem_mb": 1000, "runtime": 30},
                                                      "train_model": needs})
    ranks = resources.ranks(resources.step_needs(config, "train_model"), config["cluster"], 2)
    step = resources.Step.plan(config, "train_model", ranks)
    resolved = resolve_container(container_section(runtime, **container), config["cluster"], gpus=step.needs["gpus"],
                                 project_dir=WORKDIR, check_image=False)
    return training_command(
        launcher=launcher, backend=backend, processes=step.ranks, package="demo", args=[],
        layout=step.layout, mpi=config["cluster"]["mpi"], cache_dir=config["cluster"]["cache_dir"], container=resolved,
    )


@pytest.mark.parametrize("key", sorted(GOLDEN), ids=lambda key: "-".join(key))
def test_golden_command_lines(key):
    runtime, situation = key
    assert launch_line(runtime, situation) == GOLDEN[key]


def test_every_runtime_and_launcher_is_pinned():
    from smkml.launch import LAUNCHERS, RUNTIMES

    assert {runtime for runtime, _ in GOLDEN} == set(RUNTIMES)
    assert {SITUATIONS[situation][0] for _, situation in GOLDEN} == set(LAUNCHERS)


@pytest.mark.parametrize(
    "container, expected",
    [
        # An explicit flavour wins over the cluster's; extra binds follow the cluster's.
        ({"gpu": "cuda", "binds": ["/scratch/project_465000001:/data"]},
         f"--nv {LUMI_BINDS} -B /scratch/project_465000001:/data containers/images/demo.sif"),
        ({"gpu": "none"}, f"{LUMI_BINDS} containers/images/demo.sif"),
    ],
    ids=["cuda-and-extra-bind", "no-gpu-flag"],
)
def test_config_overrides_cluster_defaults(container, expected):
    runtime = f"singularity exec {expected}"
    assert launch_line("singularity", "srun-lumi", **container) == (
        f"{host('horovod', 2, runtime)} srun {LUMI_FULL} {runtime} python -m demo.train --backend horovod")


def test_charliecloud_extra_binds():
    line = launch_line("charliecloud", "srun-slurm", binds=["/data/shared"])
    runtime = f"ch-run --set-env -b {WORKDIR} -b /data/shared -c {WORKDIR} containers/images/cpu --"
    assert line == (f"{host('torch_ddp', 2, runtime, 'slurm')} srun --nodes=2 --ntasks-per-node=8 --cpus-per-task=10 "
                    f"{runtime} python -m demo.train --backend torch_ddp")


def test_probe_reports_from_inside_the_container():
    local = project_config()["cluster"]
    resolved = resolve_container(container_section("singularity", image="x.sif"), local, project_dir=WORKDIR,
                                 check_image=False)
    probe = container_probe(resolved)
    assert probe.startswith("echo 'container: singularity x.sif'; singularity exec x.sif python -c ")
    assert "/etc/smkml-image.json" in probe
    assert container_probe(resolve_container(container_section("none"), local)) == "true"


@pytest.mark.parametrize(
    "container, gpus, message",
    [
        ({"runtime": "docker"}, 0,
         "container.runtime 'docker' is not supported (allowed: none, apptainer, singularity, charliecloud)"),
        ({"runtime": "apptainer", "image": "x.sif", "gpu": "metal"}, 0,
         "container.gpu 'metal' is not supported (allowed: auto, none, rocm, cuda)"),
        ({"runtime": "singularity"}, 0, "container.image is empty: runtime 'singularity' needs an image"),
        ({"runtime": "singularity", "image": "containers/images/missing.sif"}, 0,
         "container.image 'containers/images/missing.sif' does not exist (runtime 'singularity')"),
        ({"runtime": "charliecloud", "image": "containers/images/missing"}, 0,
         "container.image 'containers/images/missing' does not exist (runtime 'charliecloud'); build one with "
         "containers/build.sh cpu"),
        ({"runtime": "charliecloud", "image": "img", "gpu": "rocm"}, 8,
         "container.gpu 'rocm' is not supported by charliecloud (allowed: auto, none)"),
    ],
    ids=["unknown-runtime", "unknown-gpu", "no-image", "missing-sif", "missing-charliecloud-dir", "charliecloud-gpu"],
)
@pytest.mark.reliability(
    tried="A bad container setting",
    sees="an error naming the setting and what is allowed",
    left="nothing",
)
def test_bad_container_settings_are_named(tmp_path, container, gpus, message):
    (tmp_path / "img").mkdir()
    with pytest.raises(ContainerError) as error:
        resolve_container({**container_section("none", image=""), **container}, project_config("lumi")["cluster"],
                          gpus=gpus, project_dir=tmp_path)
    assert message in str(error.value)


def test_existing_image_is_accepted_relative_to_the_project(tmp_path):
    (tmp_path / "containers/images").mkdir(parents=True)
    (tmp_path / "containers/images/demo.sif").write_bytes(b"")
    resolved = resolve_container(container_section("apptainer"), project_config()["cluster"], project_dir=tmp_path)
    assert resolved == {"runtime": "apptainer", "image": "containers/images/demo.sif", "gpu": "none", "binds": [],
                        "workdir": str(tmp_path)}


# ---------------------------------------------------------------- a generated project, parsed by snakemake


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("container-config"), training_backend="torch_ddp", cluster="local")


def dry_run(project, *config):
    return run(["snakemake", "-n", "--profile", "profiles/local", "--config", *config], project,
               check=False, timeout=300)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("container={runtime: docker}",
         "'docker' is not one of ['none', 'apptainer', 'singularity', 'charliecloud']"),
        ("container={runtime: apptainer, gpu: metal, image: x.sif}",
         "'metal' is not one of ['auto', 'none', 'rocm', 'cuda']"),
        ("container={runtime: singularity, image: containers/images/nope.sif}",
         "container.image 'containers/images/nope.sif' does not exist (runtime 'singularity')"),
    ],
    ids=["schema-runtime", "schema-gpu", "missing-image"],
)
@pytest.mark.reliability(
    tried="A bad container setting on the command line",
    sees="the error while Snakemake parses, exit 1",
    left="nothing: no logs",
)
def test_project_rejects_bad_container_config_while_parsing(project, setting, message):
    result = dry_run(project, setting)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (project / "logs").exists()


def test_project_dry_run_shows_the_containerised_command(project):
    (project / "containers/images").mkdir(parents=True, exist_ok=True)
    (project / "containers/images/demo.sif").write_bytes(b"")
    config = yaml.safe_load((project / "config/config.yaml").read_text())
    assert config["container"] == {"runtime": "none", "image": "", "gpu": "auto", "binds": []}
    result = dry_run(project, "container={runtime: apptainer, image: containers/images/demo.sif}", "-p")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("apptainer exec containers/images/demo.sif python -m digits_classifier.local_ranks --backend torch_ddp "
            "--processes 2 -- python -m digits_classifier.train --backend torch_ddp") in result.stdout
    assert run(["git", "status", "--porcelain", "containers"], project).stdout == ""  # images are git-ignored
