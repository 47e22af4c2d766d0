"""Check that the project's DVC remote can be used before `dvc pull` / `dvc push` talks to it.

    python workflow/lib/smkml/dvc_remote.py pull data/raw/digits.csv.dvc    # check, then fetch (the fetch step)
    python workflow/lib/smkml/dvc_remote.py check push                       # only check

DVC itself reports a missing credential or bucket as "failed to connect to s3 ... Unable to locate
credentials" (or a botocore traceback). This check names what to do instead: the environment
variables to set, the endpoint it tried, the bucket to create. It exits 0 when the remote is usable
(or not needed: the data is already in the local DVC cache), else prints one `ERROR:` line and exits 1.
`pull` then runs `dvc pull --force`, or `dvc checkout --force` when the cache already has the data
(`dvc pull` would contact the remote even then: offline compute nodes, no keys).

S3 remotes (AWS, CSC Allas, LUMI-O, any S3-compatible store) take the endpoint and the credentials from the
environment, never from the repository: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL
(or a profile in ~/.aws/credentials, AWS_PROFILE). An `endpointurl`/`profile`/`region` set on the remote
(`dvc remote modify --local storage endpointurl ...`) is honoured, as DVC honours it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ALLAS = "https://a3s.fi"
LUMI_O = "https://lumidata.eu"
# Where the keys of the two object stores CSC's and LUMI's users have come from, named in every message that asks
# for keys; a message for a known endpoint names only that service, otherwise both.
SERVICE_HINTS = {
    "a3s.fi": (
        "for CSC Allas: `module load allas && allas-conf --mode s3cmd`, then export the keys it wrote to "
        f"~/.s3cfg as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and set AWS_ENDPOINT_URL={ALLAS}"
    ),
    "lumidata.eu": (
        "for LUMI-O: create keys at https://auth.lumidata.eu (or `module load lumio && lumio-conf` on LUMI, "
        "which writes them to ~/.s3cfg), export them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and set "
        f"AWS_ENDPOINT_URL={LUMI_O}; LUMI-O keys expire after the lifetime chosen when they were created"
    ),
}


def service_hint(endpoint: str | None) -> str:
    """How to get keys for the object store at `endpoint` (CSC Allas, LUMI-O), or for both when it is neither."""
    host = urlsplit(endpoint or "").hostname or ""
    for domain, hint in SERVICE_HINTS.items():
        if host == domain or host.endswith("." + domain):
            return hint
    return "; ".join(SERVICE_HINTS.values())


def credentials_hint(endpoint: str | None) -> str:
    return (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for storage other than AWS, "
        f"e.g. {ALLAS} or {LUMI_O}); {service_hint(endpoint)}"
    )


def configured_endpoint(session, remote: dict) -> str | None:
    """The endpoint DVC will use as configured (remote, environment, AWS config profile), before any connection."""
    endpoint = remote.get("endpointurl") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        return endpoint
    try:
        scoped = session.get_scoped_config()
    except Exception:  # e.g. AWS_PROFILE names a profile that does not exist: reported with the credentials
        return None
    nested = scoped.get("s3") if isinstance(scoped.get("s3"), dict) else {}
    return nested.get("endpoint_url") or scoped.get("endpoint_url")


class RemoteError(Exception):
    """The remote cannot be used; the message says why and what to do."""


class NoCredentials(RemoteError):
    """No S3 credentials anywhere botocore looks (environment, ~/.aws, AWS_PROFILE)."""


def dvc_config(project: Path):
    from dvc.config import Config

    return Config(dvc_dir=str(project / ".dvc"), validate=False)


def default_remote(config) -> tuple[str, dict]:
    name = config.get("core", {}).get("remote")
    if not name:
        raise RemoteError("the project has no default DVC remote: add one with `dvc remote add --default storage <url>`")
    remote = config.get("remote", {}).get(name)
    if not remote or not remote.get("url"):
        raise RemoteError(f"the default DVC remote '{name}' is not configured (.dvc/config has no url for it)")
    return name, dict(remote)


def cached(project: Path, config, dvcfile: Path) -> bool:
    """True when every output of the .dvc file is already in the local DVC cache (pull needs no remote)."""
    try:
        outs = yaml.safe_load(dvcfile.read_text()).get("outs") or []
    except (OSError, AttributeError, yaml.YAMLError):
        return False
    cache_dir = Path(config.get("cache", {}).get("dir") or project / ".dvc" / "cache")
    if not cache_dir.is_absolute():
        cache_dir = project / ".dvc" / cache_dir
    hashes = [out.get("md5", "") for out in outs]
    return bool(hashes) and all(
        len(md5) == 32 and (cache_dir / "files" / "md5" / md5[:2] / md5[2:]).is_file() for md5 in hashes
    )


def check_s3(name: str, remote: dict, action: str) -> str:
    import botocore.session
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    url = remote["url"]
    bucket = url[len("s3://") :].split("/", 1)[0]
    session = botocore.session.Session(profile=remote.get("profile") or None)
    hint = credentials_hint(configured_endpoint(session, remote))
    try:
        credentials = session.get_credentials()
    except BotoCoreError as error:  # e.g. AWS_PROFILE names a profile that does not exist
        raise RemoteError(f"cannot read S3 credentials for DVC remote '{name}' ({url}): {error}; {hint}")
    if credentials is None:
        raise NoCredentials(f"no S3 credentials for DVC remote '{name}' ({url}): {hint}")

    endpoint = remote.get("endpointurl") or None
    client = session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=remote.get("region") or None,
        config=BotoConfig(connect_timeout=10, read_timeout=20, retries={"max_attempts": 2}),
    )
    where = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
    except EndpointConnectionError:
        raise RemoteError(
            f"cannot reach the S3 endpoint {where} for DVC remote '{name}' ({url}): check AWS_ENDPOINT_URL "
            f"(CSC Allas: {ALLAS}, LUMI-O: {LUMI_O}) and the network (compute nodes often have no internet: "
            "fetch on a login node first, e.g. `snakemake fetch_data` or `dvc pull`)"
        )
    except NoCredentialsError:
        raise NoCredentials(f"no S3 credentials for DVC remote '{name}' ({url}): {hint}")
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise RemoteError(
                f"bucket '{bucket}' of DVC remote '{name}' ({url}) does not exist at {where}: create it "
                f"(`s3cmd mb s3://{bucket}` or `aws s3 mb s3://{bucket}`), or point the remote elsewhere with "
                "`dvc remote modify storage url s3://<bucket>/<path>`"
            )
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            raise RemoteError(
                f"the S3 endpoint {where} refused the credentials for bucket '{bucket}' ({code}): check "
                f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and that AWS_ENDPOINT_URL is the right service; "
                f"{service_hint(where)}"
            )
        raise RemoteError(f"S3 endpoint {where} answered {code} for bucket '{bucket}' of DVC remote '{name}': {error}")
    except BotoCoreError as error:
        raise RemoteError(f"cannot use the S3 endpoint {where} for DVC remote '{name}' ({url}): {error}")
    return f"DVC remote '{name}' ({url}) at {where}: bucket reachable, ready to {action}"


def check_directory(name: str, remote: dict, project: Path, action: str) -> str:
    url = remote["url"]
    if "://" in url and not url.startswith("file://"):
        return f"DVC remote '{name}' ({url}): not checked (only S3 and directory remotes are)"
    path = Path(url.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        path = project / ".dvc" / path  # DVC resolves relative remote paths against .dvc/
    if action == "pull" and not path.is_dir():
        raise RemoteError(
            f"the DVC remote directory {path} (remote '{name}') does not exist on this machine: make it available "
            "here, or point the remote elsewhere with `dvc remote modify storage url <directory>`"
        )
    if action == "push" and not path.is_dir() and not path.parent.is_dir():
        raise RemoteError(f"cannot create the DVC remote directory {path}: its parent {path.parent} does not exist")
    return f"DVC remote '{name}' ({path}): ready to {action}"


def check(project: Path, action: str, dvcfiles: list[Path]) -> str:
    config = dvc_config(project)
    if action == "pull" and dvcfiles and all(cached(project, config, project / f) for f in dvcfiles):
        return "the data is already in the local DVC cache: no remote needed"
    name, remote = default_remote(config)
    if remote["url"].startswith("s3://"):
        return check_s3(name, remote, action)
    return check_directory(name, remote, project, action)


def pull(project: Path, dvcfiles: list[Path]) -> int:
    """The fetch step: check, then `dvc pull` (or `dvc checkout` from the local cache); DVC's output passes through."""
    config = dvc_config(project)
    local = bool(dvcfiles) and all(cached(project, config, project / f) for f in dvcfiles)
    print(check(project, "pull", dvcfiles), flush=True)
    command = [sys.executable, "-m", "dvc", "checkout" if local else "pull", "--force", *map(str, dvcfiles)]
    return subprocess.run(command, cwd=project).returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("pull", help="check the remote, then fetch the data of the .dvc files")
    fetch.add_argument("dvcfiles", nargs="+", type=Path, help=".dvc files to fetch")
    only = commands.add_parser("check", help="only check that the remote can be used")
    only.add_argument("action", choices=["pull", "push"], help="what DVC is about to do")
    only.add_argument("dvcfiles", nargs="*", type=Path, help=".dvc files to be pulled (no remote needed when cached)")
    for sub in (fetch, only):
        sub.add_argument("--project", type=Path, default=Path.cwd(), help="the project directory (default: .)")
    args = parser.parse_args(argv)
    project = args.project.resolve()
    try:
        if args.command == "pull":
            return pull(project, args.dvcfiles)
        print(check(project, args.action, args.dvcfiles))
    except RemoteError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("AWS_EC2_METADATA_TIMEOUT", "2")
    sys.exit(main())
