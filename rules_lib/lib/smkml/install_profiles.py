"""Install this project's cluster profiles where `snakemake --profile NAME` looks for them.

Snakemake resolves `--profile lumi` in the current directory, then in $XDG_CONFIG_HOME/snakemake/lumi
(default ~/.config/snakemake/lumi), then /etc/xdg/snakemake/lumi; it never looks in ./profiles/. This copies
profiles/<name>/profile.yaml there, so `snakemake --profile lumi` works as users type it. The cluster
descriptions (profiles/<name>/cluster.yaml) stay in the project: each profile loads its own by a path relative
to the project directory (`configfile: profiles/<name>/cluster.yaml`), where snakemake runs.

    python workflow/lib/smkml/install_profiles.py [--dest DIR] [--force] [NAME ...]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
from pathlib import Path

PROFILE_FILE = "profile.yaml"


def default_destination() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "snakemake"


def install(profiles_dir: Path, destination: Path, names: list[str], force: bool = False) -> list[Path]:
    available = sorted(p.parent.name for p in profiles_dir.glob(f"*/{PROFILE_FILE}"))
    unknown = [name for name in names if name not in available]
    if unknown:
        raise SystemExit(f"error: no profile {unknown} in {profiles_dir} (available: {', '.join(available)})")
    chosen = names or available
    # Check everything before writing anything: a differing installed profile is never overwritten silently.
    clashes = [
        destination / name / PROFILE_FILE
        for name in chosen
        if (destination / name / PROFILE_FILE).exists()
        and not filecmp.cmp(destination / name / PROFILE_FILE, profiles_dir / name / PROFILE_FILE, shallow=False)
    ]
    if clashes and not force:
        raise SystemExit(
            "error: a different profile is already installed at "
            + ", ".join(map(str, clashes))
            + ": compare them, then rerun with --force to replace"
        )
    installed = []
    for name in chosen:
        target = destination / name / PROFILE_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(profiles_dir / name / PROFILE_FILE, target)
        installed.append(target)
    return installed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="profiles to install (default: all)")
    parser.add_argument("--dest", type=Path, default=default_destination(), help="default: %(default)s")
    parser.add_argument("--profiles", type=Path, default=Path("profiles"), help="default: %(default)s")
    parser.add_argument("--force", action="store_true", help="replace differing installed profiles")
    args = parser.parse_args(argv)
    for path in install(args.profiles, args.dest, args.names, args.force):
        print(f"installed {path}  (snakemake --profile {path.parent.name})")


if __name__ == "__main__":
    sys.exit(main())
