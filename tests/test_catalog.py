"""A generated project as the Snakemake workflow catalog expects one: its "standardized usage" files, and usable
as a Snakemake module the way catalog workflows are: `snakedeploy deploy-workflow` into another folder, then a
dry run there with the deployed config and profiles.

snakedeploy writes `github("owner/repo", path="workflow/Snakefile", tag=...)` for a hosted repository; this machine
reaches no git host, so the deployed Snakefile points at the project's git repository with `gitfile(...)`, the
same kind of source (read from git through Snakemake's source cache, not from a folder).
"""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import BIN_DIR, generate, run

JOBS = ["fetch_data", "start_tracking", "prepare_data", "train_model", "evaluate_model", "log_training",
        "record_provenance", "register_model"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("catalog"), cluster="lumi", training_backend="torch_ddp")


def test_standardized_usage_files(project):
    assert (project / "workflow/Snakefile").is_file()
    readme = (project / "config/README.md").read_text()
    for section in ("data", "prepare", "train", "resources", "container", "tracking", "reproduce"):
        assert f"| `{section}` |" in readme, section
    usage = yaml.safe_load((project / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert usage["mandatory-flags"]["flags"] == "--profile profiles/local"
    assert set(usage["software-stack-deployment"]) == {"conda", "apptainer", "apptainer+conda"}
    assert usage["report"] is True
    # The flags the catalog shows work as written.
    dry = run(["snakemake", "-n", *usage["mandatory-flags"]["flags"].split()], project)
    assert planned(dry.stdout + dry.stderr) == set(JOBS)


def planned(output: str) -> set[str]:
    """The jobs of a dry run's job stats table (name, count 1)."""
    return set(re.findall(r"^(\w+)\s+1$", output, re.M)) - {"all", "total"}


@pytest.fixture(scope="module")
def deployed(project, tmp_path_factory):
    dest = tmp_path_factory.mktemp("deployed") / "my-analysis"
    run([str(BIN_DIR / "snakedeploy"), "deploy-workflow", str(project), str(dest), "--branch", "main"], project.parent)
    snakefile = dest / "workflow/Snakefile"
    text, count = re.subn(r"snakefile:\s*\n\s*\"workflow/Snakefile\"",
                          f'snakefile:\n        gitfile("{project}", path="workflow/Snakefile", tag="main")',
                          snakefile.read_text())
    assert count == 1, snakefile.read_text()
    snakefile.write_text(text)
    return dest


def test_snakedeploy_copies_config_and_profiles(deployed, project):
    assert (deployed / "config/config.yaml").read_text() == (project / "config/config.yaml").read_text()
    assert (deployed / "profiles/lumi/cluster.yaml").is_file()
    assert "use rule * from" in (deployed / "workflow/Snakefile").read_text()


@pytest.mark.parametrize("profile", [[], ["--profile", "profiles/local"], ["--profile", "profiles/lumi"]],
                         ids=["no-profile", "local", "lumi"])
def test_dry_run_of_the_deployed_module(deployed, profile):
    result = run(["snakemake", "-n", "-p", *profile], deployed, SBATCH_ACCOUNT="project_465000001")
    output = result.stdout + result.stderr
    assert planned(output) == set(JOBS)
    # The module's own files, not the deploying folder's: its notebook and helpers, from the git repository.
    # (copied to a folder named after the module's vendored.json, which lists the sha256 of every vendored file)
    copy = re.escape(".snakemake/smkml-module/") + "[0-9a-f]{16}"
    assert re.search(f"papermill --no-progress-bar --kernel python3 --start-timeout \\d+ {copy}/notebooks/prepare.ipynb", output), output
    assert re.search(f"python {copy}/workflow/lib/smkml/dvc_remote.py pull {copy}/data/raw/digits.csv.dvc", output)
    ranks = "1 rank(s)" if profile[-1:] == ["profiles/lumi"] else "2 rank(s)"
    assert f"Training with torch_ddp on {ranks}" in output
