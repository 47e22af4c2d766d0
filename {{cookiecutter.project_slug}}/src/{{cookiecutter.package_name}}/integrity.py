"""Data integrity: DVC-tracked data is checked against the md5 its `.dvc` file records before the pipeline uses it.

    # the fetch step, after dvc pull / dvc checkout:
    python -m {{ cookiecutter.package_name }}.integrity data/raw/digits.csv.dvc
    # the prepare step, before it reads the file (the copy Snakemake hands it):
    python -m {{ cookiecutter.package_name }}.integrity data/raw/digits.csv.dvc --file data/raw/digits.csv \\
        --record results/mlflow/records/prepare_data.json

DVC does not check by itself: `dvc checkout` copies a corrupted cache object into the workspace without a word, and a
file changed in place (or by bit rot) is not noticed by Snakemake either when its modification time stays. A
mismatch stops the step with one `ERROR:` line naming the file, the md5 the `.dvc` file records (expected) and the
md5 of the bytes found (actual), and the corrupted DVC cache object when that is where the bytes came from; exit 1.
With `--record` the md5 of the data the step goes on to use is recorded as the tag `dvc.md5.<path>` for the
pipeline's MLflow run (`pipeline_run.record`; a new record, which the notebook then adds to), and the provenance step
reads it back: the tags record the data used, never only the expected hash.

DVC 3 `.dvc` files (`hash: md5`) record the md5 of a file's bytes; older ones (no `hash:`) that of a text file
with CRLF line ends turned into LF, which this follows; a directory's `<md5>.dir` lists its files, each checked.
Standard library and PyYAML only.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import sys
from pathlib import Path

from . import pipeline_run

CHUNK = 1 << 20
DATA_TAG = "dvc.md5."  # + the file's path: the md5 of the data a step used, on the pipeline's MLflow run


class DataMismatch(Exception):
    """A DVC-tracked file whose bytes are not the ones its .dvc file records; the message says which and how."""


def md5_bytes(path: str | Path, legacy: bool = False) -> str:
    """md5 of a file as DVC computes it: of its bytes (DVC 3), or for a text file in a pre-3.0 .dvc file
    (`legacy`) with CRLF turned into LF (DVC 2's md5-dos2unix; binary files are hashed as they are)."""
    with open(path, "rb") as handle:
        if not legacy or b"\0" in handle.read(8192):
            handle.seek(0)
            return hashlib.file_digest(handle, "md5").hexdigest()
        handle.seek(0)
        digest, carry = hashlib.md5(), b""
        while chunk := handle.read(CHUNK):
            chunk = carry + chunk
            carry = b"\r" if chunk.endswith(b"\r") else b""
            digest.update(chunk[: len(chunk) - len(carry)].replace(b"\r\n", b"\n"))
        digest.update(carry)
        return digest.hexdigest()


def tracked(dvcfile: str | Path, root: str | Path = ".") -> list[dict]:
    """The outputs a .dvc file records: name (relative to root), path, expected md5, legacy (no `hash: md5`)."""
    import yaml

    dvcfile, root = Path(dvcfile), Path(root)
    outs = (yaml.safe_load(dvcfile.read_text()) or {}).get("outs") or []
    entries = []
    for out in outs:
        path = dvcfile.parent / out["path"]
        try:
            name = str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            name = str(path)
        entries.append({"name": name, "path": path, "md5": out.get("md5"), "legacy": out.get("hash") != "md5"})
    return entries


def cache_dir(root: Path) -> Path:
    """The project's DVC cache (`cache.dir` of .dvc/config or .dvc/config.local, default .dvc/cache)."""
    parser = configparser.ConfigParser()
    parser.read([root / ".dvc" / "config", root / ".dvc" / "config.local"])
    folder = Path(parser.get("cache", "dir", fallback="cache"))
    return folder if folder.is_absolute() else root / ".dvc" / folder


def cache_object(root: Path, md5: str) -> Path | None:
    """The DVC cache file of an md5 (DVC 3 layout files/md5/xx/..., or the older xx/...), if there is one."""
    cache = cache_dir(root)
    for path in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]):
        if path.is_file():
            return path.relative_to(root) if path.is_relative_to(root) else path
    return None


def mismatch(name: str, dvcfile: Path, expected: str, actual: str | None, root: Path, found: Path) -> DataMismatch:
    if actual is None:
        return DataMismatch(f"{name} (recorded in {dvcfile}, md5 {expected}) is missing at {found}: fetch it with "
                            f"`dvc pull {dvcfile}` (or `snakemake --profile profiles/local {name}`)")
    where = "" if (root / found).resolve() == (root / name).resolve() else f" (read at {found})"
    cached = cache_object(root, expected)
    cached_md5 = md5_bytes(root / cached) if cached else None
    if cached is not None and cached_md5 != expected:
        fix = (f"the DVC cache object {cached} it was checked out from is corrupted too (md5 {cached_md5}): delete "
               f"it (`rm -f {cached}`) and fetch again (`dvc pull --force {dvcfile}`, or rerun the pipeline); if the "
               "copy on the DVC remote is corrupted as well, push a good copy from a clone that has one")
    else:
        fix = (f"restore the recorded data with `dvc checkout --force {dvcfile}` (or `dvc pull --force {dvcfile}`), "
               f"or, if the new content is meant, record it with `dvc add {name}` and commit {dvcfile}")
    return DataMismatch(f"{name}{where} does not match its DVC record {dvcfile}: expected md5 {expected}, actual md5 "
                        f"{actual}; {fix}")


def directory_files(root: Path, entry: dict) -> list[tuple[str, Path, str]]:
    """(name, path, expected md5) of each file of a tracked directory, from its `.dir` listing in the cache."""
    listing = cache_object(root, entry["md5"])
    if listing is None:
        raise DataMismatch(f"{entry['name']}: the listing {entry['md5']} of this DVC-tracked directory is not in the "
                           f"DVC cache ({cache_dir(root)}): fetch it with `dvc pull`")
    try:
        files = json.loads((root / listing).read_text())
    except ValueError:
        raise DataMismatch(f"{entry['name']}: the DVC cache object {listing} (the directory's listing) is corrupted: "
                           f"delete it and fetch again (`dvc pull --force`)") from None
    return [(f"{entry['name']}/{item['relpath']}", entry["path"] / item["relpath"], item["md5"]) for item in files]


def check(dvcfile: str | Path, root: str | Path = ".", file: str | Path | None = None) -> dict[str, str]:
    """{name: md5} of the data the .dvc file tracks, each equal to the md5 it records (else DataMismatch).
    `file`: check only that copy of the output with the same file name (e.g. a path Snakemake staged)."""
    dvcfile, root = Path(dvcfile), Path(root)
    entries = tracked(dvcfile, root)
    if file is not None:
        entries = [dict(entry, path=Path(file)) for entry in entries if Path(entry["name"]).name == Path(file).name]
        if len(entries) != 1:
            raise DataMismatch(f"{dvcfile} records no single output named {Path(file).name}")
    return {entry["name"]: verify(entry, dvcfile, root) for entry in entries}


def verify(entry: dict, dvcfile: Path, root: Path) -> str:
    """The md5 of one output of a .dvc file (an entry of `tracked`), when its data matches the record."""
    if not entry["md5"]:
        raise DataMismatch(f"{dvcfile} records no md5 for {entry['name']}: record the data with `dvc add`")
    if entry["md5"].endswith(".dir"):
        parts = directory_files(root, entry)
    else:
        parts = [(entry["name"], entry["path"], entry["md5"])]
    for name, path, expected in parts:
        actual = md5_bytes(path, entry["legacy"]) if Path(path).is_file() else None
        if actual != expected:
            raise mismatch(name, Path(dvcfile), expected, actual, Path(root), Path(path))
    return entry["md5"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.integrity", description=__doc__.split("\n\n")[0])
    parser.add_argument("dvcfiles", nargs="+", type=Path, help=".dvc files whose data to check")
    parser.add_argument("--file", type=Path, help="check this copy of the (one) output of that name instead")
    parser.add_argument("--record", help="start this record file with the md5 of the data used, as tags for the "
                        "pipeline's MLflow run")
    parser.add_argument("--step", default="prepare", help="the step that uses the data (its Slurm job tag)")
    args = parser.parse_args(argv)
    used = {}
    try:
        for dvcfile in args.dvcfiles:
            used.update(check(dvcfile, Path.cwd(), args.file))
    except DataMismatch as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    for name, md5 in used.items():
        print(f"{name}: md5 {md5}, as its .dvc file records")
    if args.record:
        pipeline_run.record(
            args.record, args.step, new=True, tags={f"{DATA_TAG}{name}": md5 for name, md5 in used.items()}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
