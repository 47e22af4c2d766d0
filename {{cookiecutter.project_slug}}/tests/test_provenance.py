"""Provenance of this checkout: git, DVC hashes, lockfile, tags."""

import ast
import hashlib
import inspect

import pytest

from {{ cookiecutter.package_name }} import integrity, model, pipeline_run, provenance, reproduce, tracking, train


def test_collect_records_git_data_and_lockfile(project_dir, monkeypatch):
    monkeypatch.setenv("SMKML_CLUSTER", "local")  # the workflow exports the profile's name to every job
    prov = provenance.collect(project_dir, config={"train": {"processes": 2}})
    lock = project_dir / "requirements.lock"
    assert prov["lockfile"]["sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert "data/raw/digits.csv" in prov["data"]
    assert len(prov["data"]["data/raw/digits.csv"]["md5"]) == 32
    assert prov["profile"] == "local"
    assert prov["container"] == {"runtime": "none", "image": None, "digest": None, "metadata": None}
    tags = provenance.to_tags(prov)
    data = prov["data"]["data/raw/digits.csv"]  # present_md5 None until the data is fetched
    assert tags.get("dvc.md5.data/raw/digits.csv") == data["present_md5"]
    assert tags["lockfile.sha256"] == prov["lockfile"]["sha256"]
    assert tags["git.dirty"] in ("true", "false")


def test_data_tags_hold_the_md5_of_the_data_used_never_only_the_expected_one(project_dir):
    prov = provenance.collect(project_dir)
    entry = prov["data"]["data/raw/digits.csv"]
    entry.update(md5="e" * 32, present_md5=None, used_md5=None, matches=False)
    assert "dvc.md5.data/raw/digits.csv" not in provenance.to_tags(prov)  # nothing read: nothing claimed
    entry["present_md5"] = "d" * 32
    assert provenance.to_tags(prov)["dvc.md5.data/raw/digits.csv"] == "d" * 32
    entry["used_md5"] = "u" * 32  # what the prepare step checked and read (read back from the MLflow run)
    assert provenance.to_tags(prov)["dvc.md5.data/raw/digits.csv"] == "u" * 32
    assert "dvc.md5.data/raw/digits.csv" not in provenance.to_tags(prov, data=False)
    page = provenance.to_html(prov)
    assert f"<code>{'u' * 32} — .dvc file records {'e' * 32}; on disk now: {'d' * 32}</code>" in page


def test_image_digest_of_a_file_and_a_directory_image(tmp_path):
    sif = tmp_path / "train.sif"
    sif.write_bytes(b"image")
    assert provenance.image_digest(str(sif)) == "sha256:" + hashlib.sha256(b"image").hexdigest()
    (tmp_path / "img/etc").mkdir(parents=True)
    (tmp_path / "img/etc/smkml-image.json").write_text("{}")
    assert provenance.image_digest(str(tmp_path / "img")).startswith("sha256:" + hashlib.sha256(b"{}").hexdigest())
    assert provenance.image_digest(str(tmp_path / "nope")).startswith("missing image")


def test_where_the_pipeline_ran_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SMKML_CLUSTER", raising=False)
    assert provenance.where() == "none"
    assert provenance.collect(tmp_path, config={"profile": "lumi"})["profile"] == "none"  # not from the config
    monkeypatch.setenv("SMKML_CLUSTER", "lumi")
    assert provenance.where() == "lumi"


def test_slurm_job_tag_only_inside_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert pipeline_run.slurm_job_tag("train") == {}
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_CLUSTER_NAME", raising=False)
    assert pipeline_run.slurm_job_tag("train") == {"slurm.job_id.train": "4242"}
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "lumi")
    assert pipeline_run.slurm_job_tag("train") == {"slurm.job_id.train": "4242", "slurm.cluster": "lumi"}


@pytest.mark.parametrize("module", [provenance, tracking, reproduce, train, integrity])
def test_usage_names_the_module_as_it_is_run(module, capsys):
    with pytest.raises(SystemExit):
        module.main(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: python -m {module.__name__} ")


def package_imports(module) -> tuple[set[str], set[str]]:
    """(modules of this package that `module` imports at its top, those it imports anywhere else)."""
    tree = ast.parse(inspect.getsource(module))
    top = {id(node) for node in tree.body}
    found: tuple[set[str], set[str]] = (set(), set())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = {node.module} if node.module else {alias.name for alias in node.names}
            found[0 if id(node) in top else 1].update(names)
    return found


def test_run_provenance_and_tracking_depend_one_way():
    """redaction <- pipeline_run <- integrity <- provenance <- tracking: no import circle, none hidden inside a
    function but `model` (torch, a second and more to import), which only sending a trained model needs: starting a
    run, marking it failed and registering do without it. `model` imports nothing of the package."""
    from {{ cookiecutter.package_name }} import redaction

    assert package_imports(redaction) == (set(), set())
    assert package_imports(pipeline_run) == ({"redaction"}, set())
    assert package_imports(integrity) == ({"pipeline_run"}, set())
    assert package_imports(provenance) == ({"integrity", "pipeline_run", "redaction"}, set())
    assert package_imports(tracking) == ({"provenance", "pipeline_run", "redaction"}, {"model"})
    assert package_imports(model) == (set(), set())
