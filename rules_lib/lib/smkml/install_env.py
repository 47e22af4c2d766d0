"""Create a virtual environment from pinned requirements: with uv when it can be had, with pip otherwise.

    python3 workflow/lib/smkml/install_env.py --venv .venv -r requirements.lock [-r FILE ...] [--editable .]
                                              [--installer auto|uv|pip]

`make env` (the project's and the template's) calls this. Standard library only: it runs with the Python that
creates the environment, before anything is installed.

- The environment is always a `python -m venv` one, with pip in it, so pip keeps working in it afterwards.
- **uv** (pinned: UV_VERSION) is installed into it with pip, then installs the requirements. It resolves and
  installs in parallel and copies from its own cache: about 1 min for the whole lock against 4.5 min with pip on a
  2-core machine (docs/benchmarks.md, set-up time).
- uv is given **pip's own settings** (`pip config list`: the pip.conf files and PIP_* variables): index-url,
  extra-index-url, find-links, no-index, constraint, trusted-host, cert. Both installers take packages from the
  same places: a site's mirror or wheelhouse, an offline machine's wheel folder. Indexes are searched as pip does
  (the best match over all of them, `--index-strategy unsafe-best-match`).
- `--compile-bytecode`: pip writes each module's .pyc at install time, uv only when asked. Without them every
  pipeline step compiles its imports again, on every run where PYTHONDONTWRITEBYTECODE is set.
- `--installer auto` (the default) falls back to pip, saying why, when uv cannot be installed (no uv wheel in an
  offline wheelhouse, an unsupported platform) or fails; `--installer uv` stops instead, `--installer pip` never
  uses uv (also: INSTALLER=pip in `make env`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

UV_VERSION = "0.13.8"
INSTALLERS = ("auto", "uv", "pip")
# pip settings uv is given, by pip's option name: (uv option, takes several values).
PIP_OPTIONS = {
    "index-url": ("--index-url", False),
    "extra-index-url": ("--extra-index-url", True),
    "find-links": ("--find-links", True),
    "constraint": ("--constraint", True),
    "trusted-host": ("--allow-insecure-host", True),
}


def say(message: str) -> None:
    print(f"install_env: {message}", flush=True)


class InstallError(Exception):
    """An installer step failed; the message says which and how."""


def run(command: list[str], env: dict[str, str] | None = None) -> None:
    if subprocess.run(command, env=env).returncode != 0:
        raise InstallError(f"failed: {shlex.join(command)}")


def pip_config(python: str) -> dict[str, str]:
    """pip's effective settings, as `pip config list` prints them: {'section.key' or ':env:.key': value}."""
    result = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    settings = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            settings[key.strip()] = value.strip().strip("'\"")
    return settings


def pip_setting(settings: dict[str, str], name: str) -> str | None:
    """One setting as pip applies it: a PIP_* variable over the `install` section over the `global` one."""
    for scope in (":env:", "install", "global"):
        if f"{scope}.{name}" in settings:
            return settings[f"{scope}.{name}"]
    return None


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def local_path(location: str) -> Path | None:
    """The folder a find-links or index location names on this machine (file:// or a plain path), else None."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(location) if parsed.scheme == "" else None


def uv_arguments(settings: dict[str, str]) -> tuple[list[str], dict[str, str], list[str]]:
    """uv options and environment for pip's settings, and notes on what was left out (as pip leaves it out)."""
    args, env, notes = ["--index-strategy", "unsafe-best-match"], {}, []
    for name, (option, several) in PIP_OPTIONS.items():
        value = pip_setting(settings, name)
        if not value:
            continue
        for item in value.split() if several else [value]:
            path = local_path(item)
            if path is not None and name != "constraint" and not path.exists():
                notes.append(f"{name} {item} does not exist here (pip ignores it too)")
                continue
            args += [option, item]
    if is_true(pip_setting(settings, "no-index")):
        args.append("--no-index")
    cert = pip_setting(settings, "cert")
    if cert and not os.environ.get("SSL_CERT_FILE"):
        env["SSL_CERT_FILE"] = cert
    return args, env, notes


def install_with_uv(python: str, requirements: list[str], editable: list[str]) -> None:
    started = time.monotonic()
    say(f"installing uv {UV_VERSION} into the environment (pip)")
    run([python, "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"])
    uv = str(Path(python).parent / "uv")
    args, env, notes = uv_arguments(pip_config(python))
    for note in notes:
        say(f"note: {note}")
    settings = " ".join(shlex.quote(a) for a in args[2:]) or "PyPI"
    say(f"installing {', '.join(requirements + editable)} with uv (pip's settings: {settings})")
    base = [uv, "pip", "install", "--python", python, "--compile-bytecode", *args]
    uv_env = {**os.environ, **env}
    if requirements:
        run(base + [a for r in requirements for a in ("-r", r)], env=uv_env)
    for path in editable:
        run(base + ["--no-deps", "-e", path], env=uv_env)
    say(f"installed with uv in {time.monotonic() - started:.0f} s")


def install_with_pip(python: str, requirements: list[str], editable: list[str]) -> None:
    started = time.monotonic()
    say(f"installing {', '.join(requirements + editable)} with pip")
    if requirements:
        run([python, "-m", "pip", "install", *[a for r in requirements for a in ("-r", r)]])
    for path in editable:
        run([python, "-m", "pip", "install", "--no-deps", "-e", path])
    say(f"installed with pip in {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", required=True, help="the environment's folder (created when missing)")
    parser.add_argument("-r", "--requirement", action="append", default=[], dest="requirements",
                        help="a requirements or lock file (repeatable)")
    parser.add_argument("--editable", action="append", default=[], help="a local project to install with -e, "
                        "without its dependencies (they are pinned in the requirements)")
    parser.add_argument("--installer", default=os.environ.get("INSTALLER") or "auto",
                        help="auto (uv, else pip), uv or pip (default: $INSTALLER, else auto)")
    args = parser.parse_args(argv)
    if args.installer not in INSTALLERS:
        parser.error(f"--installer {args.installer!r} is not one of: {', '.join(INSTALLERS)}")
    missing = [r for r in args.requirements if not Path(r).is_file()]
    if missing:
        parser.error(f"no requirements file {', '.join(missing)}")

    started = time.monotonic()
    venv = Path(args.venv)
    python = str(venv / "bin" / "python")
    if not Path(python).exists():
        say(f"creating {venv} with {sys.executable} (Python {sys.version.split()[0]})")
        run([sys.executable, "-m", "venv", str(venv)])
    try:
        if args.installer == "pip":
            install_with_pip(python, args.requirements, args.editable)
        else:
            try:
                install_with_uv(python, args.requirements, args.editable)
            except InstallError as error:
                if args.installer == "uv":
                    raise
                say(f"uv did not work ({error}): installing with pip instead (INSTALLER=pip skips uv)")
                install_with_pip(python, args.requirements, args.editable)
    except InstallError as error:
        print(f"install_env: error: {error}", file=sys.stderr)
        return 1
    say(f"{venv} is ready ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
