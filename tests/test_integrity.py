"""Faults that must lose nothing and claim nothing false (issue 15): a failed cluster run keeps the last good local
results, and corrupted data (a workspace file, a DVC cache object) is caught before use, naming the file and both
md5s, while the MLflow/provenance data tags hold the md5 of the data actually used.

One default project, run once on this machine with one epoch; the tests run in file order on it, the destructive
ones last.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import command_env, generate, run

pytestmark = pytest.mark.e2e

RAW = "data/raw/digits.csv"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A default project (as generated: LUMI, Horovod, 2 ranks) after `snakemake --profile profiles/local`."""
    path = generate(tmp_path_factory.mktemp("integrity"))
    config = path / "config/config.yaml"
    config.write_text(config.read_text().replace("epochs: 30", "epochs: 1"))
    run(["snakemake", "--profile", "profiles/local"], path)
    return path


def expected_md5(path: Path) -> str:
    return yaml.safe_load((path / f"{RAW}.dvc").read_text())["outs"][0]["md5"]


def snapshot(path: Path) -> dict[str, tuple[str, int]]:
    """md5 and modification time of every file of the local results."""
    return {
        str(file.relative_to(path)): (hashlib.md5(file.read_bytes()).hexdigest(), file.stat().st_mtime_ns)
        for folder in ("data", "results")
        for file in sorted((path / folder).rglob("*"))
        if file.is_file()
    }


def without_slurm(command: list[str], path: Path) -> subprocess.CompletedProcess:
    """A cluster-profile run where no Slurm is reachable (no SLURM_CONF; sbatch fails as on a machine without a
    configured cluster, or is missing). The LUMI account is set, as a LUMI user has it."""
    env = command_env(SBATCH_ACCOUNT="project_465000001")
    env.pop("SLURM_CONF", None)
    return subprocess.run(command, cwd=path, env=env, capture_output=True, text=True, timeout=600)


def mlflow_tags(path: Path) -> dict[str, str]:
    import mlflow

    info = json.loads((path / "results/mlflow/run.json").read_text())
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}/mlflow.db").get_run(info["run_id"]).data.tags


@pytest.mark.reliability(
    tried="A cluster run that fails at its first Slurm job after a good local run",
    sees="the submission error, exit 1",
    left="the local results unchanged (bytes and times); a local dry run has nothing to do",
)
def test_a_failed_cluster_run_keeps_the_local_results(project):
    """Local run, then `snakemake --profile profiles/slurm` without Slurm: where steps run is provenance, not a
    reason to rerun, so there is nothing to submit; a `make cluster` (the project's LUMI profile) that does have
    work (a sweep member to train, in a pack job) fails at its first Slurm job. The local results are untouched and the local
    profile has nothing to do."""
    before = snapshot(project)
    same = without_slurm(["snakemake", "--profile", "profiles/slurm"], project)
    assert same.returncode == 0 and "Nothing to be done" in same.stdout + same.stderr, same.stderr[-3000:]

    config = project / "config/config.yaml"
    original = config.read_text()
    config.write_text(original.replace("sweep: {}", "sweep: {list: [{dropout: 0.1}]}"))
    try:
        failed = without_slurm(["make", "cluster"], project)
    finally:
        config.write_text(original)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0, output[-3000:]
    # The plugin's first call to Slurm fails: checking the account (sacctmgr, sshare), or sbatch itself.
    assert "Error in rule train_pack" in output, output[-3000:]  # the member, packed as the lumi profile packs
    assert "Job submission failed" in output or "SLURM sbatch failed" in output, output[-3000:]
    assert "Executing notebooks/prepare.ipynb" not in output and "Training with" not in output

    after = snapshot(project)
    assert {name: after.get(name) for name in before} == before
    again = run(["snakemake", "-n", "--profile", "profiles/local"], project)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]


@pytest.mark.reliability(
    tried="The raw data changed on disk after a run, modification time kept",
    sees="provenance shows the md5 used, the recorded one and the one on disk now (\"on disk now\")",
    left="the MLflow tag keeps the md5 actually used",
)
def test_provenance_records_the_md5_of_the_data_used(project):
    """The prepare step checks the raw data and tags the run with the md5 it read; provenance reads that back. Bit
    rot after the run (same size and modification time: Snakemake sees nothing) shows as the file on disk now,
    while the tags keep the md5 of the data that was used."""
    md5 = expected_md5(project)
    prov = json.loads((project / "results/provenance.json").read_text())["data"][RAW]
    assert prov == {"md5": md5, "present_md5": md5, "used_md5": md5, "matches": True}
    assert f"{RAW}: md5 {md5}, as its .dvc file records" in (project / "logs/prepare_data.log").read_text()

    raw = project / RAW
    good, times = raw.read_bytes(), raw.stat()
    rotten = good.replace(b"\n0,", b"\n9,", 1)
    raw.write_bytes(rotten)
    os.utime(raw, ns=(times.st_atime_ns, times.st_mtime_ns))
    try:
        run(["snakemake", "--profile", "profiles/local", "--force", "results/provenance.json"], project)
        prov = json.loads((project / "results/provenance.json").read_text())["data"][RAW]
        html = (project / "results/provenance.html").read_text()
    finally:
        raw.write_bytes(good)
        os.utime(raw, ns=(times.st_atime_ns, times.st_mtime_ns))
    actual = hashlib.md5(rotten).hexdigest()
    assert prov == {"md5": md5, "present_md5": actual, "used_md5": md5, "matches": False}
    assert f"<code>{md5} — on disk now: {actual}</code>" in html
    assert mlflow_tags(project)[f"dvc.md5.{RAW}"] == md5


@pytest.mark.reliability(
    tried="A DVC-tracked data file that no longer matches its .dvc md5",
    sees="one ERROR line naming the file and both md5s; training never starts",
    left="nothing new",
)
def test_a_changed_data_file_stops_the_run_before_training(project):
    md5 = expected_md5(project)
    raw = project / RAW
    changed = raw.read_bytes().replace(b"\n0,", b"\n9,", 1)
    raw.write_bytes(changed)
    result = run(["snakemake", "--profile", "profiles/local"], project, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (f"ERROR: {RAW} does not match its DVC record {RAW}.dvc: expected md5 {md5}, actual md5 "
            f"{hashlib.md5(changed).hexdigest()}; restore the recorded data with `dvc checkout --force {RAW}.dvc`"
            in output), output[-3000:]
    assert "Error in rule prepare_data" in output
    assert "Training with" not in output
    assert mlflow_tags(project)[f"dvc.md5.{RAW}"] == md5  # nothing claims the changed data was used


@pytest.mark.reliability(
    tried="A corrupted object in the DVC cache",
    sees="the fetch step fails naming the file, both md5s and the cache object to delete",
    left="nothing used; after deleting the object the rerun pulls a good copy",
)
def test_a_corrupted_dvc_cache_object_is_caught_at_fetch(project):
    """`dvc checkout` copies a corrupted cache object into the workspace silently; the fetch step does not."""
    md5 = expected_md5(project)
    cached = project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    cached.chmod(0o644)
    corrupted = cached.read_bytes().replace(b"\n0,", b"\n9,", 1)
    cached.write_bytes(corrupted)
    (project / RAW).unlink()
    result = run(["snakemake", "--profile", "profiles/local"], project, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    actual = hashlib.md5(corrupted).hexdigest()
    assert (f"ERROR: {RAW} does not match its DVC record {RAW}.dvc: expected md5 {md5}, actual md5 {actual}; "
            f"the DVC cache object .dvc/cache/files/md5/{md5[:2]}/{md5[2:]} it was checked out from is corrupted too"
            in output), output[-3000:]
    assert "Error in rule fetch_data" in output and "Executing notebooks/prepare.ipynb" not in output
    # The advice works: without the corrupted object the fetch step pulls a good copy from the DVC remote.
    cached.unlink()
    run(["snakemake", "--profile", "profiles/local", RAW], project)
    assert hashlib.md5((project / RAW).read_bytes()).hexdigest() == md5
