"""Training inside a real container image, through the real mini-LUMI Slurm cluster.

The image is built here without any image registry by the project's own containers/cpu/build-charliecloud.sh
(Debian root filesystem from apt, the project's requirements.lock and Horovod wheel installed offline, the project
package, build inputs in /etc/smkml-image.json) and cached under ~/.cache/cookiecutter-snakemake-ml/images, so a
second run reuses it. Then the pipeline runs with the LUMI profile and `container: runtime: charliecloud` on both
nodes of the strict mini-LUMI (a network namespace per node), two ranks per node, once with each backend: srun starts
each rank in its own `ch-run` container (Horovod's Open MPI gets `--mpi=pmix`, detected inside the image), and the
rendezvous address is worked out outside the container, which has no Slurm tools. Checked as a user would: the training log reports the image's Python and metadata from inside the image, the command line Snakemake
printed, sacct's record of the job, and the trained model's accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import generate, run
from test_container_image import build_image, ensure_charliecloud
from test_slurm_pipeline import ACCOUNT, cluster_env, configure, sacct

pytestmark = [pytest.mark.slurm, pytest.mark.container]

@pytest.fixture(scope="module")
def container_run(slurm_cluster, tmp_path_factory):
    """One project trained in its image on both nodes with each backend in turn (the user edits train.backend
    between the runs: the second run trains and evaluates again, nothing else)."""
    slurm_cluster.require_isolation()
    ensure_charliecloud()
    project = generate(tmp_path_factory.mktemp("container"), cluster="lumi", slurm_account=ACCOUNT,
                       training_backend="horovod")
    image, build_log = build_image(project)
    runs = {}
    for backend in ("horovod", "torch_ddp"):
        configure(project)
        config_path = project / "config/config.yaml"
        config = yaml.safe_load(config_path.read_text())
        config["train"]["backend"] = backend
        config["container"].update(runtime="charliecloud", image="containers/images/cpu")
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        result = run(["snakemake", "--profile", "profiles/lumi"], project, timeout=1200,
                     USER=os.environ.get("USER", "root"), **cluster_env(slurm_cluster))
        runs[backend] = {
            "output": result.stdout + result.stderr,
            "log": (project / "logs/train_model.log").read_text(),
            "job": max(slurm_job_ids_all(project, "train_model"), key=int),
            "history": json.loads((project / "results/model/history.json").read_text()),
            "metrics": json.loads((project / "results/metrics.json").read_text()),
        }
    return project, image, build_log, runs, slurm_cluster


def slurm_job_ids_all(project: Path, rule: str) -> list[str]:
    return [log.stem for log in (project / f"logs/slurm/rule_{rule}").rglob("*.log")]


@pytest.mark.parametrize("backend", ["horovod", "torch_ddp"])
def test_training_ran_inside_the_image_on_both_nodes(container_run, backend):
    project, image, _, runs, cluster = container_run
    outcome = runs[backend]
    # The command Snakemake ran: the host-side launch, then srun starting one ch-run container per rank.
    runtime = f"ch-run --set-env -b {project} -c {project} containers/images/cpu --"
    assert (f"srun --nodes=2 --ntasks-per-node=2 --cpus-per-task=7 {runtime} python -m digits_classifier.train "
            f"--backend {backend}") in outcome["output"]
    log = outcome["log"]
    # Reported from inside the container: its Python and the image's own metadata (not on the host).
    assert not Path("/etc/smkml-image.json").exists()
    assert "container: charliecloud containers/images/cpu" in log
    assert "container python: /opt/venv/bin/python" in log
    reported = json.loads(log.split("container image: ", 1)[1].split("\n}", 1)[0] + "\n}")
    assert reported == json.loads((image / "etc/smkml-image.json").read_text())
    assert "on 4 rank(s)" in log
    assert "node nid001: 2 of 4 rank(s)" in log and "node nid002: 2 of 4 rank(s)" in log, log[-3000:]
    assert f"rendezvous: MASTER_ADDR={cluster.node_address('nid001')} (first node nid001)" in log, log[:2000]
    if backend == "horovod":  # Open MPI in the image: PMIx, found from inside the image
        assert "mpi: Horovod's MPI needs srun --mpi=pmix (detected; cluster.mpi: auto)" in log, log[:2000]
    rows = sacct(cluster, outcome["job"], "JobID,Partition,State,AllocTRES,NTasks,NodeList")
    assert rows[0]["State"] == "COMPLETED" and rows[0]["Partition"] == "standard-g" and rows[0]["Account"] == ACCOUNT
    assert "gres/gpu=4" in rows[0]["AllocTRES"]
    assert any(row["NTasks"] == "4" and row["NodeList"] == "nid[001-002]" for row in rows[1:]), rows
    assert (outcome["history"]["backend"], outcome["history"]["world_size"]) == (backend, 4)
    assert outcome["metrics"]["accuracy"] >= 0.9


def test_provenance_records_the_image_that_ran(container_run):
    """The run's provenance names the container runtime, the image and its digest (of the image's build metadata)."""
    import hashlib

    import mlflow

    project, image, _, _, _ = container_run
    digest = "sha256:" + hashlib.sha256((image / "etc/smkml-image.json").read_bytes()).hexdigest()
    prov = json.loads((project / "results/provenance.json").read_text())
    assert prov["container"]["runtime"] == "charliecloud"
    assert prov["container"]["image"] == "containers/images/cpu"
    assert prov["container"]["digest"].startswith(digest)
    assert prov["container"]["metadata"] == json.loads((image / "etc/smkml-image.json").read_text())
    info = json.loads((project / "results/mlflow/run.json").read_text())
    tags = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}").get_run(info["run_id"]).data.tags
    assert tags["container.runtime"] == "charliecloud"
    assert tags["container.digest"] == prov["container"]["digest"]
