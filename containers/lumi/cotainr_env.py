"""Write the conda environment file for a cotainr build on LUMI from the project's requirements.lock.

cotainr (LUMI's container builder, https://cotainr.readthedocs.io) builds a Singularity image from a conda
environment file on a LUMI login node, without root:

    containers/build.sh lumi-cotainr
    # = python3 containers/lumi/cotainr_env.py --output containers/images/cotainr-env.yml
    #   cotainr build containers/images/lumi-cotainr.sif --system=lumi-g --conda-env=containers/images/cotainr-env.yml

The environment pins exactly what requirements.lock pins (one lock for every image) and, on top, JupyterLab from
requirements-lab.lock (the notebook pod runs it from the image), takes torch from PyPI's ROCm
sibling index (PyTorch's ROCm wheels), and installs the project package from its directory. cotainr runs no build
steps of its own, so Horovod (which must be compiled) is not in this image: use it with train.backend torch_ddp, or
build containers/lumi/horovod-rocm.def for Horovod. The build inputs go next to the image, as
containers/images/lumi-cotainr.json (cotainr images carry no labels of ours).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
from pathlib import Path

PYTHON = "3.11"
TORCH_INDEX = "https://download.pytorch.org/whl/rocm6.4"


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a pip file, comments and blank lines left out."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


# What every image installs besides the lock (setuptools for torch): containers/extra-requirements.txt.
EXTRA_REQUIREMENTS = requirement_lines(Path(__file__).resolve().parents[1] / "extra-requirements.txt")


def environment(project: Path) -> dict:
    """The conda environment: python, pip, and every pinned package of the lock under pip."""
    # The lab lock pins its shared packages at the main lock's versions: each line once.
    locked = dict.fromkeys([*requirement_lines(project / "requirements.lock"),
                            *requirement_lines(project / "requirements-lab.lock")])
    pip = ["--extra-index-url " + TORCH_INDEX, *locked, *EXTRA_REQUIREMENTS, str(project.resolve())]
    return {"name": "smkml", "channels": ["conda-forge"],
            "dependencies": [f"python={PYTHON}", "pip", {"pip": pip}]}


def metadata(project: Path) -> dict:
    vendored = project / "vendored.json"
    version = json.loads(vendored.read_text())["version"] if vendored.is_file() else "unknown"
    return {
        "base": f"cotainr --system=lumi-g (conda-forge python={PYTHON})",
        "gpu": "rocm",
        "requirements_lock_sha256": hashlib.sha256((project / "requirements.lock").read_bytes()).hexdigest(),
        "requirements_lab_lock_sha256": hashlib.sha256((project / "requirements-lab.lock").read_bytes()).hexdigest(),
        "extra_requirements": EXTRA_REQUIREMENTS,
        "torch_index": TORCH_INDEX,
        "template_version": version,
        "horovod": None,
        "recipe": "containers/lumi/cotainr_env.py",
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--output", type=Path, required=True, help="the conda environment file to write")
    args = parser.parse_args(argv)
    if not (args.project / "requirements.lock").is_file():
        parser.error(f"{args.project} has no requirements.lock: pass --project <generated project>")
    import yaml

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(yaml.safe_dump(environment(args.project), sort_keys=False))
    args.output.with_name("lumi-cotainr.json").write_text(json.dumps(metadata(args.project), indent=2) + "\n")
    print(args.output)


if __name__ == "__main__":
    main()
