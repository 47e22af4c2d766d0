"""What a run under the Kubernetes profile needs from this machine, checked while the workflow is parsed, before
Snakemake reads the bucket or creates anything on the cluster; and what the pods need from it.

Pods share no filesystem with this machine or with each other: every input and output goes through the S3 bucket
under SNAKEMAKE_S3_PREFIX, and the MLflow store must be one that this machine and every pod reach over the network.
A missing setting stops the run here with one line naming it, instead of Snakemake's generic "must start with s3",
botocore's traceback or the Kubernetes client's ConfigException:

- the storage prefix (SNAKEMAKE_S3_PREFIX, the profile's `default-storage-prefix`);
- S3 credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an AWS profile, or --storage-s3-access-key/-secret-key),
  and the bucket, asked once at the endpoint;
- the MLflow store (an `sqlite:///` file or a folder would be a different, empty store in every pod);
- a kubeconfig (KUBECONFIG or ~/.kube/config) naming a cluster, or running inside one (not needed for a dry run).

The settings the pods need (the credentials, the endpoint, the MLflow store) are returned by name: the workflow
registers them with Snakemake (`workflow.register_envvars`), and the Kubernetes executor puts registered variables
into the run's Secret, from which every pod reads them. Nothing here is written to a command line or a log.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

PREFIX_VARIABLE = "SNAKEMAKE_S3_PREFIX"
# MLflow's own variables for a tracking server behind authentication (passed to the pods when set).
MLFLOW_AUTH = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS")
# Stores pods cannot share: a file or a folder of the pod's own (empty) working directory.
FILE_STORES = ("sqlite:", "file:")


class SettingError(ValueError):
    """A setting a Kubernetes run needs is missing or unusable; the message names it and what to set."""


def check_prefix(prefix: str | None) -> str:
    """The bucket of the storage prefix (s3://BUCKET/PATH); a missing or unexpanded SNAKEMAKE_S3_PREFIX is named."""
    if not prefix or prefix.startswith("$") or PREFIX_VARIABLE in prefix:
        raise SettingError(
            f"{PREFIX_VARIABLE} is not set: pods share no filesystem, so every input and output goes through S3; "
            f"export {PREFIX_VARIABLE}=s3://BUCKET/PATH (a bucket you can write to, e.g. s3://my-bucket/digits)"
        )
    if not prefix.startswith("s3://") or not prefix[len("s3://"):].split("/", 1)[0]:
        raise SettingError(f"{PREFIX_VARIABLE} '{prefix}' is not an S3 location: use s3://BUCKET/PATH")
    return prefix[len("s3://"):].split("/", 1)[0]


def check_tracking_store(uri: str) -> None:
    """The MLflow store must be reachable from every pod: a tracking server (http(s)://), or a database server."""
    scheme = urlsplit(uri).scheme
    if uri == "databricks" or scheme == "databricks":  # Databricks' hosted store (MLflow's name for it)
        return
    if uri.startswith(FILE_STORES) or not scheme or len(scheme) == 1:  # a path (len 1: a Windows drive)
        raise SettingError(
            f"MLflow store '{uri}' (tracking.uri) is a file, and pods share no filesystem (each pod would write "
            "to its own empty store): set MLFLOW_TRACKING_URI (or tracking.uri in config/config.yaml) to an MLflow "
            "tracking server that this machine and the pods reach, e.g. http://mlflow.example.org:5000"
        )


def s3_environment(bucket: str, settings=None, environ=os.environ) -> dict[str, str]:
    """The S3 credentials and endpoint the pods need, as environment variables, after asking the bucket once.

    `settings` are the S3 storage plugin's settings (--storage-s3-*): keys given there reach the pods through
    Snakemake itself; otherwise botocore's own search (environment, AWS_PROFILE, ~/.aws) finds them, as it does
    for Snakemake on this machine."""
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    from .dvc_remote import configured_endpoint, credentials_hint, service_hint

    session = botocore.session.Session()
    endpoint = getattr(settings, "endpoint_url", None) or configured_endpoint(session, {})
    given = getattr(settings, "access_key", None) and getattr(settings, "secret_key", None)
    where = f"s3://{bucket}"
    needed: dict[str, str] = {}
    if given:
        client_keys = {"aws_access_key_id": settings.access_key, "aws_secret_access_key": settings.secret_key}
    else:
        try:
            credentials = session.get_credentials()
        except BotoCoreError as error:  # e.g. AWS_PROFILE names a profile that does not exist
            raise SettingError(f"cannot read S3 credentials for the pipeline's bucket ({where}): {error}")
        if credentials is None:
            raise SettingError(
                f"no S3 credentials for the pipeline's bucket ({where}; pods read and write every step's files "
                f"there): {credentials_hint(endpoint)}"
            )
        frozen = credentials.get_frozen_credentials()
        client_keys = {"aws_access_key_id": frozen.access_key, "aws_secret_access_key": frozen.secret_key}
        needed = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
        if frozen.token:
            needed["AWS_SESSION_TOKEN"] = frozen.token
    if endpoint and not getattr(settings, "endpoint_url", None):
        needed["AWS_ENDPOINT_URL"] = endpoint
    client = session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=getattr(settings, "region", None) or environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(connect_timeout=10, read_timeout=20, retries={"max_attempts": 2}),
        **client_keys,
    )
    url = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
    except EndpointConnectionError:
        raise SettingError(
            f"cannot reach the S3 endpoint {url} of the pipeline's bucket ({where}): check AWS_ENDPOINT_URL "
            "(or --storage-s3-endpoint-url) and the network"
        )
    except NoCredentialsError:
        raise SettingError(f"no S3 credentials for the pipeline's bucket ({where}): {credentials_hint(endpoint)}")
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise SettingError(
                f"bucket '{bucket}' of {PREFIX_VARIABLE} does not exist at {url}: create it "
                f"(`s3cmd mb s3://{bucket}` or `aws s3 mb s3://{bucket}`) or name another in {PREFIX_VARIABLE}"
            )
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            raise SettingError(
                f"the S3 endpoint {url} refused the credentials for bucket '{bucket}' ({code}): check "
                f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; {service_hint(url)}"
            )
        raise SettingError(f"the S3 endpoint {url} answered {code} for bucket '{bucket}': {error}")
    except BotoCoreError as error:
        raise SettingError(f"cannot use the S3 endpoint {url} for bucket '{bucket}': {error}")
    return needed


def check_kubeconfig(environ=os.environ) -> None:
    """A kubeconfig whose current context names a cluster (what the Kubernetes executor loads), or a pod's own
    service account (in-cluster)."""
    import kubernetes.config
    import yaml
    from kubernetes.config.config_exception import ConfigException

    if environ.get("KUBERNETES_SERVICE_HOST"):  # Snakemake itself runs in a pod: the executor uses that account
        return
    named = environ.get("KUBECONFIG")
    files = [Path(p).expanduser() for p in named.split(os.pathsep) if p] if named else [Path("~/.kube/config").expanduser()]
    if not any(f.is_file() for f in files):
        which = f"KUBECONFIG={named} names no file" if named else "no kubeconfig (~/.kube/config, KUBECONFIG unset)"
        raise SettingError(
            f"{which}: the Kubernetes executor needs one to reach the cluster; get it from your cluster "
            "(e.g. `oc login` on CSC Rahti, `kind get kubeconfig`) and export KUBECONFIG=<file>"
        )
    try:  # KUBECONFIG as the executor reads it (a list of files is merged); else the default file
        kubernetes.config.load_kube_config(config_file=None if named else str(files[0]))
    except (ConfigException, OSError, ValueError, TypeError, yaml.YAMLError) as error:
        source = f"KUBECONFIG={named}" if named else "~/.kube/config"
        reason = " ".join(str(error).split())
        raise SettingError(f"the kubeconfig ({source}) cannot be used: {reason}")


def prepare(
    prefix: str | None,
    tracking_uri: str,
    redact,
    s3_settings=None,
    dryrun: bool = False,
    environ=os.environ,
) -> list[str]:
    """Every check above in order (prefix, credentials and bucket, MLflow store, kubeconfig); the names of the
    environment variables the pods need, each set in `environ` (credentials found in an AWS profile file included).
    `redact` hides credentials in the MLflow URI of a message."""
    bucket = check_prefix(prefix)
    needed = s3_environment(bucket, s3_settings, environ)
    try:
        check_tracking_store(tracking_uri)
    except SettingError as error:
        raise SettingError(str(error).replace(tracking_uri, redact(tracking_uri)))
    if not dryrun:
        check_kubeconfig(environ)
    for name, value in needed.items():
        environ.setdefault(name, value)
    mlflow = ["MLFLOW_TRACKING_URI", *(name for name in MLFLOW_AUTH if environ.get(name))]
    return [*needed, *mlflow]
