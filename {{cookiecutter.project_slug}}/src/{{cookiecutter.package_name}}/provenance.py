"""Provenance: everything a number depends on, recorded next to it.

`collect()` gathers the git commit and dirty flag, the DVC data hashes (as recorded in the `.dvc` files, as found on
disk and, read back from the prepare step's record, as that step checked and used them: `integrity`), the
lockfile hash, the container image digest (when training ran in a container), the Slurm job ids of the steps (when
on Slurm), the Snakemake version, where the pipeline ran (`where()`) and the config. The pipeline's provenance step completes it
from the steps' records (`complete`: job ids, the data used, the MLflow run id) and writes `results/provenance.json`
and an HTML table for the Snakemake report (`python -m {{ cookiecutter.package_name }}.provenance`); the register
step puts it on the MLflow run as tags (`to_tags`) and the artifact provenance.json. The data tags `dvc.md5.<path>`
hold the md5 of the data used (else of the file on disk), never only the md5 a `.dvc` file expects.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

from . import integrity, pipeline_run
from .redaction import redact

LOCKFILE = "requirements.lock"
IMAGE_METADATA = "etc/smkml-image.json"  # what a directory image records about its build (containers/)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (DVC data is hashed as DVC does it: `integrity.md5_bytes`)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def git_state(root: Path) -> dict:
    """Commit and dirty flag (tracked or untracked, not ignored, files differ from the commit)."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown (not a git checkout)", "dirty": None}
    status = _git(root, "status", "--porcelain")
    return {"commit": commit, "dirty": bool(status), "changed": status.splitlines() if status else []}


def dvc_data(root: Path) -> dict:
    """Every DVC-tracked file: the md5 its .dvc file records (`md5`), the md5 of the file on disk now
    (`present_md5`, hashed as DVC does; a directory: its recorded md5 when every file in it matches) and whether
    they match. `used_md5`, the md5 of the data the pipeline's steps used, is filled in from the steps' records
    (`complete`)."""
    tracked = {}
    listed = _git(root, "ls-files", "*.dvc")
    dvc_files = [root / name for name in listed.splitlines()] if listed else sorted(root.rglob("*.dvc"))
    for dvc_file in dvc_files:
        if not dvc_file.is_file():
            continue
        for out in integrity.tracked(dvc_file, root):
            present = None
            if out["md5"] and out["md5"].endswith(".dir"):
                try:
                    present = integrity.verify(out, dvc_file, root)
                except integrity.DataMismatch:
                    pass  # a directory that differs has no one md5 of its own here
            elif Path(out["path"]).is_file():
                present = integrity.md5_bytes(out["path"], out["legacy"])
            tracked[out["name"]] = {"md5": out["md5"], "present_md5": present, "matches": present == out["md5"],
                                    "used_md5": None}
    return tracked


def data_md5(entry: dict) -> str | None:
    """The md5 of the data a provenance entry stands for: the data the steps used, else the file on disk; never
    only the md5 a .dvc file expects."""
    return entry.get("used_md5") or entry.get("present_md5")


def image_digest(image: str | None) -> str | None:
    """sha256 of an image file (.sif); for a directory image (Charliecloud), of its recorded build metadata."""
    if not image:
        return None
    path = Path(image)
    if path.is_file():
        return "sha256:" + sha256_file(path)
    if path.is_dir():
        if (path / IMAGE_METADATA).is_file():
            return "sha256:" + sha256_file(path / IMAGE_METADATA) + f" ({IMAGE_METADATA} of directory image)"
        return f"directory image {path} (no build metadata found)"
    return f"missing image {path}"


def image_metadata(image: str | None) -> dict | None:
    """The build inputs a directory image recorded about itself (lock hash, base image, template version)."""
    path = Path(image) / IMAGE_METADATA if image else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def where() -> str:
    """Where the pipeline runs: the cluster profile's name (local, lumi, slurm, kubernetes), which the workflow
    exports to every job as SMKML_CLUSTER; "none" outside the workflow."""
    return os.environ.get("SMKML_CLUSTER") or "none"


def collect(root: str | Path = ".", *, config: dict | None = None) -> dict:
    root = Path(root).resolve()
    config = redact(config or {})  # no credentials (e.g. in tracking.uri) in any record
    container = config.get("container") or {}
    runtime = container.get("runtime", "none")
    lock = root / LOCKFILE
    return {
        "git": git_state(root),
        "data": dvc_data(root),
        "lockfile": {"path": LOCKFILE, "sha256": sha256_file(lock) if lock.is_file() else None},
        "container": {
            "runtime": runtime,
            "image": container.get("image") if runtime != "none" else None,
            "digest": image_digest(container.get("image")) if runtime != "none" else None,
            "metadata": image_metadata(container.get("image")) if runtime != "none" else None,
        },
        "slurm": {"job_ids": {}, "cluster": os.environ.get("SLURM_CLUSTER_NAME")},
        "snakemake_version": _version("snakemake"),
        "profile": where(),
        "config_sha256": config_hash(config),
        "config": config,
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def to_tags(prov: dict, data: bool = True) -> dict[str, str]:
    """Flat MLflow tags (strings; MLflow caps tag values, so the config goes in as a hash plus an artifact).
    `data=False`: without the data hashes (the run's start: the step that uses the data tags them)."""
    tags = {
        "git.commit": prov["git"]["commit"],
        "git.dirty": str(prov["git"]["dirty"]).lower(),
        "lockfile.sha256": str(prov["lockfile"]["sha256"]),
        "snakemake.version": str(prov["snakemake_version"]),
        "snakemake.profile": prov["profile"],
        "config.sha256": prov["config_sha256"],
        "container.runtime": prov["container"]["runtime"],
    }
    if prov["container"]["digest"]:
        tags["container.image"] = str(prov["container"]["image"])
        tags["container.digest"] = prov["container"]["digest"]
    for name, entry in prov["data"].items() if data else ():
        if data_md5(entry):
            tags[f"{integrity.DATA_TAG}{name}"] = data_md5(entry)
    if prov["slurm"]["cluster"]:
        tags["slurm.cluster"] = prov["slurm"]["cluster"]
    for step, job in prov["slurm"]["job_ids"].items():
        tags[f"{pipeline_run.SLURM_TAG}{step}"] = job
    return tags


def _rows(prov: dict) -> list[tuple[str, str]]:
    rows = [
        ("git commit", prov["git"]["commit"]),
        ("uncommitted changes", {True: "yes", False: "no", None: "unknown"}[prov["git"]["dirty"]]),
    ]
    for name, entry in prov["data"].items():
        used = data_md5(entry)
        notes = [f".dvc file records {entry['md5']}"] if used != entry["md5"] else []
        if entry["present_md5"] != used:
            notes.append(f"on disk now: {entry['present_md5']}")
        rows.append((f"data {name} (md5 used)", f"{used}" + (f" — {'; '.join(notes)}" if notes else "")))
    rows += [
        ("lockfile sha256", str(prov["lockfile"]["sha256"])),
        ("container", prov["container"]["runtime"]
         + (f": {prov['container']['image']} {prov['container']['digest']}" if prov["container"]["digest"] else "")),
        ("Snakemake", str(prov["snakemake_version"])),
        ("profile", prov["profile"]),
        ("config sha256", prov["config_sha256"]),
    ]
    rows += [(f"Slurm job ({step})", job) for step, job in sorted(prov["slurm"]["job_ids"].items())]
    if prov.get("mlflow_run_id"):
        rows.insert(0, ("MLflow run id", prov["mlflow_run_id"]))
    return rows


def to_html(prov: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(v)}</code></td></tr>" for k, v in _rows(prov))
    config = html.escape(json.dumps(prov["config"], indent=2, sort_keys=True))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Provenance</title></head><body>"
        f"<h2>Provenance</h2><table>{rows}</table><h3>Config</h3><pre>{config}</pre></body></html>\n"
    )


def complete(prov: dict, run_file: str | Path | None, records=()) -> dict:
    """Complete `prov` from the pipeline's run file (the MLflow run id) and the steps' records
    (`pipeline_run.record`): the Slurm job ids the steps recorded and the md5 of the data the prepare step checked
    and used. Reads files only: no MLflow."""
    tag = pipeline_run.SLURM_TAG
    recorded: dict[str, str] = {}
    for path in records:
        recorded.update(pipeline_run.read_record(path)["tags"])
    prov["slurm"]["job_ids"].update({key[len(tag):]: value for key, value in recorded.items() if key.startswith(tag)})
    prov["slurm"]["cluster"] = prov["slurm"]["cluster"] or recorded.get("slurm.cluster")
    for name, entry in prov["data"].items():
        entry["used_md5"] = recorded.get(f"{integrity.DATA_TAG}{name}") or entry["used_md5"]
    if run_file:
        prov["mlflow_run_id"] = pipeline_run.read_run_file(run_file)["run_id"]
    return prov


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.provenance", description=__doc__)
    parser.add_argument("--config", required=True, help="the workflow config as JSON")
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-html", required=True)
    parser.add_argument("--run-file", help="the pipeline's MLflow run id file: its run id goes in the provenance")
    parser.add_argument("--records", nargs="*", default=[],
                        help="the steps' records: the Slurm job ids and the md5 of the data used")
    args = parser.parse_args(argv)

    prov = complete(collect(".", config=json.loads(args.config)), args.run_file, args.records)
    for path in (args.out_json, args.out_html):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
    Path(args.out_html).write_text(to_html(prov))
    print(f"provenance: commit {prov['git']['commit'][:12]} dirty={prov['git']['dirty']} "
          f"profile={prov['profile']} -> {args.out_json}")


if __name__ == "__main__":
    main()
