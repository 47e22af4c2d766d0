"""The template's shared files in this project, recorded in vendored.json, and whether one was edited by hand.

    python workflow/lib/smkml/vendored.py check      # `make lint` (and so `make test`) runs it

Like nf-core's modules.json: generation (and `cruft update`) copies the template's shared trees into the project
(rules_lib/ -> workflow/, profiles/, containers/) and records the template, its version and commit and the sha256
of every file it copied. `check` names each recorded file that is missing or whose content differs, and says what
to do: move the change into the project's own files, or into the template and bring it in with `cruft update`.
The profiles are the exception: they hold site settings (account, partitions, pod image) meant to be edited, so an
edited profile is listed as a note, not an error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

MANIFEST = "vendored.json"
# Vendored, and yours to edit: site settings.
EDITABLE = ("profiles/",)


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write(project: Path, files: list[str], template: str | None, version: str, commit: str | None) -> Path:
    """Record the vendored `files` (paths relative to `project`) with the template they came from."""
    manifest = {
        "template": template,
        "version": version,
        "commit": commit,
        "files": {name: sha256(project / name) for name in sorted(files)},
    }
    path = project / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read(project: Path) -> dict:
    path = project / MANIFEST
    if not path.is_file():
        raise SystemExit(f"error: no {MANIFEST} in {project}: this project does not record its vendored files")
    return json.loads(path.read_text())


def changes(project: Path) -> list[tuple[str, str]]:
    """(file, what happened) for every recorded file that is missing or was changed since it was vendored."""
    found = []
    for name, digest in read(project)["files"].items():
        path = project / name
        if not path.is_file():
            found.append((name, "missing"))
        elif sha256(path) != digest:
            found.append((name, "edited by hand"))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["check"])
    parser.add_argument("--project", type=Path, default=Path("."), help="default: the current directory")
    args = parser.parse_args(argv)
    manifest = read(args.project)
    origin = f"cookiecutter-snakemake-ml {manifest['version']}" + (
        f" at {manifest['commit'][:12]}" if manifest["commit"] else ""
    )
    found = changes(args.project)
    notes = [(name, what) for name, what in found if name.startswith(EDITABLE)]
    errors = [(name, what) for name, what in found if not name.startswith(EDITABLE)]
    for name, what in notes:
        print(f"NOTE: {name}: {what} (site settings: yours to edit)")
    if not errors:
        kept = len(manifest["files"]) - len(notes)
        print(f"vendored files: {kept} as received from {origin}; {len(notes)} profile file(s) edited")
        return 0
    for name, what in errors:
        print(f"ERROR: {name}: {what} (vendored from {origin}, listed in {MANIFEST})", file=sys.stderr)
    print(
        "These files come from the template and are replaced by `cruft update`. Move your change into the "
        "project's own files (config/config.yaml, workflow/Snakefile, a rule module of your own), or make it in "
        "the template and bring it in with `cruft update`; `cruft diff` shows the differences.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
