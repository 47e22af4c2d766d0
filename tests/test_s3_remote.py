"""The `s3` DVC remote against a real S3 server (moto's server mode), as a user of CSC Allas, LUMI-O or any S3
store has it.

Generation pushes the data; a clone in a new directory, with no access to the original working tree or its DVC
cache, fetches it through the pipeline's fetch step and gets the same bytes. Endpoint and credentials stay in the
environment: neither appears in .dvc/config nor anywhere in the git history. Without credentials, or with a bucket
that does not exist, the fetch step and the generation stop with a message naming what to set or create.

Two ways of giving DVC the endpoint and keys are run: the AWS_* variables (what CSC's allas-conf and LUMI's
lumio-conf lead to: keys in ~/.s3cfg, exported), and a named profile in AWS's own files, with the endpoint in the
profile (what LUMI-O's credentials service at auth.lumidata.eu offers as "aws" configuration). The test server
stands in for https://a3s.fi and https://lumidata.eu alike; the messages that name a service are checked with the
real endpoints, before any connection is made.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid

import boto3
import pytest
import yaml

from conftest import BIN_DIR, TEMPLATE_DIR, generate, run

SECRET = "s3cr3t-" + uuid.uuid4().hex  # moto accepts any key pair; a unique secret makes a leak findable by grep
ACCESS_KEY = "AKIA" + uuid.uuid4().hex[:16].upper()


def s3_env(s3_server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server["endpoint"],
    }


def bare_env(**extra: str) -> dict[str, str]:
    """The environment of a user who has not set up S3: no AWS_* variables, no ~/.aws files."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(AWS_SHARED_CREDENTIALS_FILE="/nonexistent/credentials", AWS_CONFIG_FILE="/nonexistent/config")
    env.update(extra)
    return env


def sh(command, cwd, env, check=True, timeout=300):
    import subprocess

    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{command} failed in {cwd}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def recorded_md5(project) -> str:
    (out,) = yaml.safe_load((project / "data/raw/digits.csv.dvc").read_text())["outs"]
    return out["md5"]


def fetch(project, env):
    """The pipeline's fetch step, as a user runs it."""
    return sh(["snakemake", "--cores", "1", "data/raw/digits.csv"], project, env, check=False)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, s3_server):
    """A project generated with an s3 remote and credentials; then cloned with git into a new directory, alone."""
    prefix = f"s3://{s3_server['bucket']}/{uuid.uuid4().hex[:8]}/dvc"
    work = tmp_path_factory.mktemp("s3gen")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_env(s3_server).items():
            patch.setenv(key, value)
        project = generate(work, project_name="Allas Study", dvc_remote="s3", dvc_remote_url=prefix)
    md5_at_generation = recorded_md5(project)
    clone = tmp_path_factory.mktemp("s3clone") / "allas-study"
    sh(["git", "clone", "--quiet", str(project), str(clone)], clone.parent, bare_env())
    # The reviewer's machine: no original working tree, no DVC cache, only the git history and the remote.
    shutil.rmtree(work)
    return {"clone": clone, "prefix": prefix, "md5": md5_at_generation}


def test_generation_pushes_to_the_bucket(pushed, s3_server):
    client = boto3.client("s3", endpoint_url=s3_server["endpoint"], region_name="us-east-1",
                          aws_access_key_id="any", aws_secret_access_key="any")
    key_prefix = pushed["prefix"].removeprefix(f"s3://{s3_server['bucket']}/")
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=s3_server["bucket"], Prefix=key_prefix)["Contents"]]
    md5 = pushed["md5"]
    assert f"{key_prefix}/files/md5/{md5[:2]}/{md5[2:]}" in keys


def test_endpoint_and_credentials_are_not_in_the_repository(pushed, s3_server):
    clone = pushed["clone"]
    dvc_config = (clone / ".dvc/config").read_text()
    assert pushed["prefix"] in dvc_config
    history = sh(["git", "log", "--all", "-p", "--format=%H %an %s"], clone, bare_env()).stdout
    tracked = sh(["git", "grep", "-I", "-l", "-e", SECRET, "-e", ACCESS_KEY, "-e", s3_server["endpoint"]],
                 clone, bare_env(), check=False)
    assert tracked.returncode == 1, f"credentials or endpoint in tracked files: {tracked.stdout}"
    for secret in (SECRET, ACCESS_KEY, s3_server["endpoint"], s3_server["endpoint"].split("//")[1]):
        assert secret not in dvc_config
        assert secret not in history
    assert len(history) > 1000, "the history should contain the initial commit's patch"


def test_clean_clone_fetches_identical_data(pushed, s3_server):
    clone = pushed["clone"]
    assert not (clone / "data/raw/digits.csv").exists() and not (clone / ".dvc/cache").exists()
    result = fetch(clone, bare_env(**s3_env(s3_server)))
    assert result.returncode == 0, result.stdout + result.stderr
    data = clone / "data/raw/digits.csv"
    assert md5(data) == recorded_md5(clone) == pushed["md5"]
    assert len(data.read_text().splitlines()) == 1798  # header + the 1797 digits
    assert "ready to pull" in (clone / "logs/fetch_data.log").read_text()

    # Later, offline and without keys (a compute node): the data is in the local DVC cache, no remote is needed.
    data.unlink()
    offline = fetch(clone, bare_env(AWS_ENDPOINT_URL="http://127.0.0.1:9"))
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert md5(data) == pushed["md5"]
    assert "already in the local DVC cache" in (clone / "logs/fetch_data.log").read_text()


def test_fetch_without_credentials_names_the_variables(pushed, s3_server):
    clone = pushed["clone"]
    shutil.rmtree(clone / ".dvc/cache", ignore_errors=True)
    (clone / "data/raw/digits.csv").unlink(missing_ok=True)
    result = fetch(clone, bare_env(AWS_ENDPOINT_URL=s3_server["endpoint"]))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ERROR: no S3 credentials for DVC remote 'storage'" in output
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "allas-conf", "https://a3s.fi"):
        assert variable in output
    assert "Traceback" not in output and "botocore" not in output
    assert not (clone / "data/raw/digits.csv").exists(), "a failed fetch left a file behind"


def test_fetch_from_a_missing_bucket_names_the_bucket(pushed, s3_server):
    clone = pushed["clone"]
    shutil.rmtree(clone / ".dvc/cache", ignore_errors=True)
    (clone / "data/raw/digits.csv").unlink(missing_ok=True)
    env = bare_env(**s3_env(s3_server))
    sh(["dvc", "remote", "modify", "--local", "storage", "url", "s3://no-such-bucket-here/dvc"], clone, env)
    try:
        result = fetch(clone, env)
    finally:
        (clone / ".dvc/config.local").unlink()
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"bucket 'no-such-bucket-here' of DVC remote 'storage' (s3://no-such-bucket-here/dvc) does not exist at {s3_server['endpoint']}" in output
    assert "s3cmd mb s3://no-such-bucket-here" in output and "Traceback" not in output
    assert not (clone / "data/raw/digits.csv").exists()


def test_generation_without_credentials_keeps_the_data_and_says_what_to_set(tmp_path, s3_server):
    result = sh(
        [str(BIN_DIR / "cookiecutter"), "--no-input", "-o", str(tmp_path), str(TEMPLATE_DIR), "dvc_remote=s3",
         f"dvc_remote_url=s3://{s3_server['bucket']}/nocreds/dvc", "project_name=No Keys"],
        tmp_path, bare_env(AWS_ENDPOINT_URL=s3_server["endpoint"]),
    )
    assert "NOTE: data not pushed" in result.stdout
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in result.stdout and "dvc push" in result.stdout
    project = tmp_path / "no-keys"
    assert md5(project / "data/raw/digits.csv") == recorded_md5(project)
    assert sh(["git", "status", "--porcelain"], project, bare_env()).stdout == ""


def test_generation_with_a_missing_bucket_stops_and_leaves_nothing(tmp_path, s3_server):
    result = sh(
        [str(BIN_DIR / "cookiecutter"), "--no-input", "-o", str(tmp_path), str(TEMPLATE_DIR), "dvc_remote=s3",
         "dvc_remote_url=s3://missing-bucket-x/dvc", "project_name=No Bucket"],
        tmp_path, bare_env(**s3_env(s3_server)), check=False,
    )
    assert result.returncode != 0
    assert "ERROR: cannot push the data to the DVC remote: bucket 'missing-bucket-x'" in result.stderr
    assert "s3cmd mb s3://missing-bucket-x" in result.stderr
    assert not (tmp_path / "no-bucket").exists(), "a failed generation left a half-made project"


def test_fetch_from_a_missing_remote_directory_names_it(pushed, tmp_path):
    clone = pushed["clone"]
    shutil.rmtree(clone / ".dvc/cache", ignore_errors=True)
    (clone / "data/raw/digits.csv").unlink(missing_ok=True)
    missing = tmp_path / "not-mounted" / "dvc"
    env = bare_env()
    sh(["dvc", "remote", "modify", "--local", "storage", "url", str(missing)], clone, env)
    try:
        result = fetch(clone, env)
    finally:
        (clone / ".dvc/config.local").unlink()
    assert result.returncode != 0
    assert f"ERROR: the DVC remote directory {missing} (remote 'storage') does not exist on this machine" in result.stderr
    assert not (clone / "data/raw/digits.csv").exists()


# LUMI-O (https://lumidata.eu): the same S3 remote, with the endpoint and keys in a named AWS profile.

LUMI_O_PROFILE = "lumi-465000001"


def profile_env(s3_server, files) -> dict[str, str]:
    """A user whose endpoint and keys are in a named profile of AWS's own files (no AWS_* key or endpoint variable),
    as LUMI-O's credentials service writes them for the aws client; the files live outside the project."""
    files.mkdir(parents=True, exist_ok=True)
    (files / "credentials").write_text(
        f"[{LUMI_O_PROFILE}]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET}\n"
    )
    (files / "config").write_text(
        f"[profile {LUMI_O_PROFILE}]\nendpoint_url = {s3_server['endpoint']}\nregion = us-east-1\n"
    )
    return bare_env(AWS_SHARED_CREDENTIALS_FILE=str(files / "credentials"), AWS_CONFIG_FILE=str(files / "config"),
                    AWS_PROFILE=LUMI_O_PROFILE)


def test_lumi_o_profile_generation_push_clone_and_fetch(tmp_path, s3_server):
    """A LUMI-O user: keys and endpoint from a named AWS profile; push at generation, fetch in a clean clone."""
    prefix = f"s3://{s3_server['bucket']}/lumi-o-{uuid.uuid4().hex[:8]}/dvc"
    env = profile_env(s3_server, tmp_path / "aws")
    result = sh(
        [str(BIN_DIR / "cookiecutter"), "--no-input", "-o", str(tmp_path / "gen"), str(TEMPLATE_DIR), "dvc_remote=s3",
         f"dvc_remote_url={prefix}", "project_name=LUMI-O Study", "cluster=lumi"],
        tmp_path, env,
    )
    assert f"pushed the data to {prefix}" in result.stdout
    project = tmp_path / "gen" / "lumi-o-study"
    recorded = recorded_md5(project)
    clone = tmp_path / "clone" / "lumi-o-study"
    sh(["git", "clone", "--quiet", str(project), str(clone)], tmp_path, bare_env())
    shutil.rmtree(tmp_path / "gen")  # no working tree or DVC cache left but the bucket's

    fetched = fetch(clone, env)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert md5(clone / "data/raw/digits.csv") == recorded
    assert f"at {s3_server['endpoint']}: bucket reachable, ready to pull" in (clone / "logs/fetch_data.log").read_text()
    # Neither the keys nor the endpoint nor the profile's files reached the repository.
    history = sh(["git", "log", "--all", "-p"], clone, bare_env()).stdout
    for secret in (SECRET, ACCESS_KEY, s3_server["endpoint"], str(tmp_path / "aws")):
        assert secret not in history and secret not in (clone / ".dvc/config").read_text()
    assert LUMI_O_PROFILE not in history


@pytest.mark.parametrize(
    "endpoint, named, not_named",
    [
        ("https://lumidata.eu", ["https://auth.lumidata.eu", "lumio-conf", "AWS_ENDPOINT_URL=https://lumidata.eu"],
         ["allas-conf"]),
        ("https://a3s.fi", ["allas-conf", "AWS_ENDPOINT_URL=https://a3s.fi"], ["lumio-conf"]),
    ],
)
def test_missing_keys_name_the_service_of_the_endpoint(tmp_path, endpoint, named, not_named):
    """Without keys, the check names how to get them for the service the endpoint belongs to (no connection yet)."""
    project = tmp_path / "p"
    project.mkdir()
    env = bare_env(AWS_ENDPOINT_URL=endpoint)
    sh(["git", "init", "--quiet"], project, env)
    sh(["dvc", "init", "--quiet"], project, env)
    sh(["dvc", "remote", "add", "--default", "storage", "s3://465000001-data/dvc"], project, env)
    result = sh([str(BIN_DIR / "python"), str(TEMPLATE_DIR / "rules_lib/lib/smkml/dvc_remote.py"), "check", "pull"],
                project, env, check=False)
    assert result.returncode == 1
    assert "ERROR: no S3 credentials for DVC remote 'storage' (s3://465000001-data/dvc)" in result.stderr
    for text in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", *named]:
        assert text in result.stderr, text
    for text in not_named:
        assert text not in result.stderr, text
