"""Validate every answer before anything is written.

On a bad answer this prints one line naming the value and what is allowed, and exits 1; cookiecutter
then removes the half-made project directory. Choice answers (backend, cluster, remote, licence) are checked by
cookiecutter itself against cookiecutter.json; the account format is the chosen cluster's, read from its
description in the template (profiles/<cluster>/cluster.yaml), the one place it is written.
"""

import importlib.util
import keyword
import re
import shutil
import sys
from pathlib import Path

import yaml

# The template checkout this hook was rendered from (local_extensions.py).
TEMPLATE_DIR = Path({{ template_path() | tojson }})
ANSWERS = {
    "project_name": {{ cookiecutter.project_name | tojson }},
    "project_slug": {{ cookiecutter.project_slug | tojson }},
    "package_name": {{ cookiecutter.package_name | tojson }},
    "author_name": {{ cookiecutter.author_name | tojson }},
    "author_email": {{ cookiecutter.author_email | tojson }},
    "description": {{ cookiecutter.description | tojson }},
    "training_backend": {{ cookiecutter.training_backend | tojson }},
    "cluster": {{ cookiecutter.cluster | tojson }},
    "slurm_account": {{ cookiecutter.slurm_account | tojson }},
    "dvc_remote": {{ cookiecutter.dvc_remote | tojson }},
    "dvc_remote_url": {{ cookiecutter.dvc_remote_url | tojson }},
    "license": {{ cookiecutter.license | tojson }},
}

# cruft (`cruft update`, `cruft diff`) adds _commit when it re-renders the template; the post-generation hook then
# only vendors files, so git, DVC and scikit-learn are not needed.
RENDERED_BY_CRUFT = {{ cookiecutter._commit | default("") | tojson }} != ""

# Package names that would shadow a dependency or the standard library inside the project.
RESERVED_PACKAGES = {
    "dvc", "horovod", "matplotlib", "mlflow", "numpy", "pandas", "papermill", "sklearn",
    "snakemake", "test", "tests", "torch", "workflow", *sys.stdlib_module_names,
}

SLUG = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PACKAGE = re.compile(r"^[a-z][a-z0-9_]*$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$")
UNSAFE_TEXT = re.compile(r'["\\\n\r\t{}]')


def cluster_account(cluster):
    """The account settings of the cluster's description (None: the cluster takes no Slurm account)."""
    path = TEMPLATE_DIR / "profiles" / cluster / "cluster.yaml"
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())["cluster"].get("account")


def problems(answers):
    """Yield one message per bad answer."""
    for key in ("project_name", "author_name", "description"):
        value = answers[key]
        if not value.strip():
            yield f"{key} is empty: give a value"
        elif UNSAFE_TEXT.search(value):
            yield f"{key} '{value}' contains quotes, backslashes, braces or control characters: use plain text"

    slug = answers["project_slug"]
    if not SLUG.match(slug) or len(slug) > 64:
        yield (
            f"project_slug '{slug}' is not valid: use 1-64 lowercase letters, digits and single hyphens, "
            "starting with a letter (e.g. 'digits-classifier')"
        )

    package = answers["package_name"]
    if not PACKAGE.match(package) or keyword.iskeyword(package):
        yield (
            f"package_name '{package}' is not a valid Python package name: use lowercase letters, digits and "
            "underscores, starting with a letter (e.g. 'digits_classifier')"
        )
    elif package in RESERVED_PACKAGES:
        yield f"package_name '{package}' would shadow the Python module of the same name: choose another name"

    if not EMAIL.match(answers["author_email"]):
        yield f"author_email '{answers['author_email']}' is not an e-mail address (e.g. 'you@example.org')"

    account, cluster = answers["slurm_account"], answers["cluster"]
    if account:
        spec = cluster_account(cluster)
        if spec is None:
            takes = sorted(p.parent.name for p in (TEMPLATE_DIR / "profiles").glob("*/cluster.yaml")
                           if cluster_account(p.parent.name) is not None)
            yield (
                f"slurm_account '{account}' is only used with cluster {' or '.join(takes)}, not '{cluster}': "
                "leave it empty"
            )
        elif not re.fullmatch(spec["pattern"], account):
            yield (
                f"slurm_account '{account}' is not a {cluster} account: it must match {spec['pattern']} "
                f"(e.g. '{spec['example']}'), or leave it empty to give it at run time"
            )

    remote, url = answers["dvc_remote"], answers["dvc_remote_url"]
    if remote == "s3" and url and not S3_URL.match(url):
        yield f"dvc_remote_url '{url}' is not an S3 URL: use s3://<bucket>/<path> (lowercase bucket name)"
    if remote == "local" and url and ("://" in url or not url.startswith(("/", "~"))):
        yield f"dvc_remote_url '{url}' is not an absolute directory path (e.g. '/scratch/project_465000001/dvc')"


def missing_tools():
    """Generation runs git and DVC (with S3 support for an s3 remote) and writes the demo data from scikit-learn."""
    if shutil.which("git") is None:
        yield "git is not installed: install git (Debian: apt-get install git)"
    needed = [("dvc", "dvc"), ("sklearn", "scikit-learn")]
    if ANSWERS["dvc_remote"] == "s3":  # DVC's S3 support, used by the push at generation
        needed.append(("dvc_s3", "dvc-s3"))
    for module, package in needed:
        if importlib.util.find_spec(module) is None:
            yield (
                f"Python package '{package}' is missing from the environment running cookiecutter "
                f"({sys.executable}): pip install {package}"
            )


def main():
    found = list(problems(ANSWERS)) or ([] if RENDERED_BY_CRUFT else list(missing_tools()))
    if found:
        for message in found:
            print(f"ERROR: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
