"""A Jupyter kernel that runs inside the project's container image: `make kernel`.

    PYTHONPATH=workflow/lib python -m smkml.kernel install [--cluster profiles/lumi/cluster.yaml]  # `make kernel`
    PYTHONPATH=workflow/lib python -m smkml.kernel show [--cluster ...]                            # kernel.json

The kernelspec is written for the user (`<Jupyter data dir>/kernels/<project>/kernel.json`; the data dir is
$JUPYTER_DATA_DIR when set, else ~/.local/share/jupyter), so every Jupyter server running as this user lists it:
`make lab`, any other JupyterLab, papermill (`-k <project>`) and the Jupyter app of LUMI's web interface.

Its argv starts `python -m ipykernel_launcher` through the configured container runtime: config/config.yaml
`container:` (runtime, image, gpu, binds) with the cluster description's defaults, resolved and turned into words by
smkml.launch (resolve_container, runtime_prefix), exactly as the training step's command is, so a notebook runs in
the image the batch jobs use. GPUs follow `resources.notebook` (`container.gpu: auto` gives the cluster's flavour
to a notebook that requests GPUs). With runtime none the kernel is the project's own environment (the Python that
ran `make kernel`).

Every value reaches the kernelspec as one argv item (JSON), never pasted into a shell script. The one script in it
is this module's constant LAUNCH: it starts the kernel in the project directory (as the pipeline runs its notebooks,
so their relative paths work the same) and binds the folder of Jupyter's connection file into the container at
CONNECTION_MOUNT, because Jupyter chooses that file's path only when it starts the kernel. /mnt (FHS: for mounting a
filesystem temporarily) exists in every image built from containers/; a runtime cannot bind onto a path that an
image lacks (Charliecloud's directory images are read-only).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import yaml

from . import launch, resources, schemas

NOTEBOOK_RULE = "notebook"  # resources.notebook: what an interactive notebook needs (also the notebook pod's)
CONNECTION_MOUNT = "/mnt"
# Placeholders LAUNCH replaces in the words that follow it: the folder and the name of Jupyter's connection file.
CONNECTION_DIR = "@connection_dir@"
CONNECTION_NAME = "@connection_name@"
# argv: sh -c LAUNCH <name> {connection_file} <project dir> <words...>. POSIX sh; each word stays one argument.
LAUNCH = (
    'connection=$1; cd "$2" || exit 1; shift 2; '
    "for word do shift; "
    f'case $word in {CONNECTION_DIR}*) word=$(dirname "$connection")${{word#{CONNECTION_DIR}}};; esac; '
    f'case $word in *{CONNECTION_NAME}) word=${{word%{CONNECTION_NAME}}}$(basename "$connection");; esac; '
    'set -- "$@" "$word"; done; exec "$@"'
)


class KernelError(ValueError):
    """A setting the kernel cannot work with, named with what is allowed."""


def kernel_name(project: str) -> str:
    """The kernelspec's name: Jupyter allows letters, digits, '-', '.' and '_'."""
    name = re.sub(r"[^a-z0-9._-]+", "-", project.lower()).strip("-.")
    if not name:
        raise KernelError(f"no kernel name can be made of {project!r}")
    return name


def bind_target(bind: str) -> str:
    """Where a bind (SRC or SRC:DST, with Apptainer's optional :OPTIONS) lands in the container."""
    parts = bind.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def resolve(config: dict, project_dir: str | Path) -> dict:
    """The container the kernel runs in (launch.resolve_container), with the image as an absolute path: Jupyter
    starts kernels from the notebook's folder, not the project's."""
    gpus = int(resources.step_needs(config, NOTEBOOK_RULE).get("gpus", 0))
    container = launch.resolve_container(config["container"], config["cluster"], gpus=gpus, project_dir=project_dir)
    if container["runtime"] == "none":
        return container
    for bind in container["binds"]:
        target = bind_target(bind).rstrip("/") or "/"
        if target == CONNECTION_MOUNT or target.startswith(CONNECTION_MOUNT + "/"):
            raise KernelError(
                f"container bind '{bind}' lands on {target}: the Jupyter kernel binds its connection folder at "
                f"{CONNECTION_MOUNT} (allowed: any other destination, e.g. {bind.split(':')[0]}:/data)"
            )
    image = container["image"]
    if "://" not in image:
        image = str(Path(container["workdir"]) / image)
        mount = Path(image) / CONNECTION_MOUNT.lstrip("/")
        if container["runtime"] == "charliecloud" and Path(image).is_dir() and not mount.is_dir():
            raise KernelError(
                f"container.image '{container['image']}' has no {CONNECTION_MOUNT} folder, where the kernel binds "
                "Jupyter's connection file (Charliecloud cannot create it in a read-only image): rebuild it with "
                "containers/build.sh cpu"
            )
    return {**container, "image": image}


def kernel_argv(container: dict, python: str = sys.executable) -> list[str]:
    """The kernelspec's argv: LAUNCH, then the runtime's words (launch.runtime_prefix, plus the bind of the connection
    folder) and ipykernel. `python`: the interpreter of runtime none (inside an image, the image's `python`)."""
    if container["runtime"] == "none":
        words = [python, "-m", "ipykernel_launcher", "-f", f"{CONNECTION_DIR}/{CONNECTION_NAME}"]
    else:
        bind = f"{CONNECTION_DIR}:{CONNECTION_MOUNT}"
        with_bind = {**container, "binds": [*container["binds"], bind]}
        words = [*launch.runtime_prefix(with_bind), "python", "-m", "ipykernel_launcher",
                 "-f", f"{CONNECTION_MOUNT}/{CONNECTION_NAME}"]
    return ["/bin/sh", "-c", LAUNCH, "smkml-kernel", "{connection_file}", container["workdir"], *words]


def kernel_spec(config: dict, project_dir: str | Path, project: str, python: str = sys.executable) -> dict:
    """kernel.json of the project's kernel (Jupyter's kernelspec format, https://jupyter-client.readthedocs.io)."""
    container = resolve(config, project_dir)
    runtime = container["runtime"]
    where = "this environment" if runtime == "none" else f"{runtime}: {config['container']['image']}"
    return {
        "argv": kernel_argv(container, python),
        "display_name": f"{project} ({where})",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "smkml": {
                "project_dir": container["workdir"],
                "runtime": container["runtime"],
                "image": container["image"],
                "gpu": container["gpu"],
                "binds": container["binds"],
                "cluster": config["cluster"]["name"],
            }
        },
    }


def load_config(config_path: str | Path, cluster_path: str | Path | None) -> dict:
    """config/config.yaml with the profile's cluster description (if any) under `cluster`, validated."""
    config = yaml.safe_load(Path(config_path).read_text())
    if cluster_path:
        config.update(yaml.safe_load(Path(cluster_path).read_text()))
    return schemas.validate(config)


def data_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir())


def install(spec: dict, name: str, directory: Path | None = None) -> Path:
    """Write `spec` as <Jupyter data dir>/kernels/<name>/kernel.json (replacing an earlier one of that name)."""
    folder = (directory or data_dir()) / "kernels" / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kernel.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smkml.kernel", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["install", "show"])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--cluster", help="the profile's cluster description, e.g. profiles/lumi/cluster.yaml "
                                          "(default: none, this machine)")
    parser.add_argument("--project-dir", default=".")
    parser.add_argument("--name", help="kernel name (default: the project's, tracking.experiment)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.cluster)
        project = config["tracking"]["experiment"]
        name = kernel_name(args.name or project)
        spec = kernel_spec(config, Path(args.project_dir).absolute(), project)
    except (KernelError, launch.ContainerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.command == "show":
        print(json.dumps(spec, indent=2))
        return 0
    path = install(spec, name)
    print(f"installed kernel '{name}' ({spec['display_name']}): {path}")
    program = spec["argv"][6]  # the runtime (or the Python of runtime none), after LAUNCH's own arguments
    if not shutil.which(program):
        print(f"warning: '{program}' is not on PATH here: the kernel needs it wherever Jupyter starts it",
              file=sys.stderr)
    print(f"use it: pick '{spec['display_name']}' in JupyterLab (make lab), or papermill -k {name} ...; "
          f"remove it: jupyter kernelspec remove {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
