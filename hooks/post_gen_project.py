"""Finish the generated project so that it runs from a clean clone, without the template:

1. vendor the shared parts of the template (rules_lib/, profiles/, containers/) into the project;
2. write the demo dataset (scikit-learn's bundled digits) to data/raw/;
3. initialise git and DVC, configure the DVC remote, track the data with DVC and push it;
4. commit everything, then drop the local data copy and DVC cache so the pipeline's first step
   really pulls the data from the remote, as it will in a fresh clone.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path.cwd()
REPO_DIR = {{ cookiecutter._repo_dir | tojson }}
PACKAGE = {{ cookiecutter.package_name | tojson }}
SLUG = {{ cookiecutter.project_slug | tojson }}
CLUSTER = {{ cookiecutter.cluster | tojson }}
ACCOUNT = {{ cookiecutter.slurm_account | tojson }}
REMOTE_KIND = {{ cookiecutter.dvc_remote | tojson }}
REMOTE_URL = {{ cookiecutter.dvc_remote_url | tojson }}
AUTHOR = {{ cookiecutter.author_name | tojson }}
EMAIL = {{ cookiecutter.author_email | tojson }}
TEMPLATE_VERSION = {{ cookiecutter._template_version | tojson }}
RAW_DATA = Path("data/raw/digits.csv")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")

# What is vendored where, besides every rule module rules_lib/*.smk -> workflow/rules/: (template path, project path).
VENDORED = [
    ("rules_lib/report", "workflow/report"),
    ("rules_lib/envs", "workflow/envs"),
    ("rules_lib/smkml", "workflow/lib/smkml"),
    ("profiles", "profiles"),
    ("containers", "containers"),
]


def template_dir():
    """The template checkout (a git URL is cloned by cookiecutter first).

    A relative path, as in `cookiecutter .`, is relative to where cookiecutter was started. Cookiecutter runs
    this hook from inside the template directory, so on Linux its working directory tells where that is.
    """
    path = Path(REPO_DIR).expanduser()
    if path.is_absolute():
        return path
    candidates = [Path(f"/proc/{os.getppid()}/cwd"), Path(os.environ.get("PWD", ".")) / path]
    for candidate in candidates:
        if (candidate / "cookiecutter.json").is_file() and (candidate / "rules_lib").is_dir():
            return candidate.resolve()
    sys.exit(f"ERROR: cannot find the template directory '{REPO_DIR}': give the template as an absolute path")


TEMPLATE_DIR = template_dir()


def step(message):
    print(f"[{SLUG}] {message}", flush=True)


def run(*command, **kwargs):
    """Run a command in the project; on failure show its output and stop generation."""
    result = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        print(result.stdout + result.stderr, file=sys.stderr)
        sys.exit(f"ERROR: '{' '.join(map(str, command))}' failed with exit code {result.returncode}")
    return result.stdout


def dvc(*args, **kwargs):
    return run(sys.executable, "-m", "dvc", *args, **kwargs)


def vendor():
    parts = [
        (f"rules_lib/{module.name}", f"workflow/rules/{module.name}")
        for module in sorted((TEMPLATE_DIR / "rules_lib").glob("*.smk"))
    ] + VENDORED
    for source, target in parts:
        src, dst = TEMPLATE_DIR / source, PROJECT_DIR / target
        if not src.exists():
            sys.exit(f"ERROR: template file {src} is missing: is '{TEMPLATE_DIR}' a complete template checkout?")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=IGNORED, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    lines = [
        "# Vendored from cookiecutter-snakemake-ml",
        "",
        f"Template version {TEMPLATE_VERSION}. These files are copies of the template's shared parts, so the",
        "project runs without the template and without internet. Update them with the template, not by hand:",
        "",
        *[f"- `{target}` from `{source}`" for source, target in parts],
        "",
    ]
    (PROJECT_DIR / "workflow/rules/VENDORED.md").write_text("\n".join(lines))
    if ACCOUNT:
        set_account(ACCOUNT)
    step(f"vendored {len(parts)} shared parts from {TEMPLATE_DIR}")


def set_account(account):
    """Write the Slurm account into the cluster description the profile uses."""
    description = PROJECT_DIR / "profiles" / CLUSTER / "cluster.yaml"
    text = description.read_text()
    marker = '  value: ""'
    if marker not in text:
        sys.exit(f"ERROR: {description} has no empty 'account: value:' to put the account in")
    description.write_text(text.replace(marker, f"  value: {account}", 1))


def remote_url():
    if REMOTE_KIND == "s3":
        return REMOTE_URL or f"s3://{SLUG}-data/dvc"
    if REMOTE_URL:
        return str(Path(REMOTE_URL).expanduser())
    return str(PROJECT_DIR.parent / f"{SLUG}-dvc-remote")


def write_demo_data():
    sys.path.insert(0, str(PROJECT_DIR / "src"))
    data = __import__(f"{PACKAGE}.data", fromlist=["write_demo_dataset"])
    data.write_demo_dataset(PROJECT_DIR / RAW_DATA)
    step(f"wrote the demo dataset (scikit-learn digits) to {RAW_DATA}")


def init_repositories():
    identity = ["-c", f"user.name={AUTHOR}", "-c", f"user.email={EMAIL}"]
    run("git", "init", "--quiet", "--initial-branch=main")
    dvc("init", "--quiet")
    dvc("config", "core.analytics", "false")
    url = remote_url()
    dvc("remote", "add", "--default", "storage", url)
    if REMOTE_KIND == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            dvc("remote", "modify", "storage", "endpointurl", endpoint)
    else:
        Path(url).mkdir(parents=True, exist_ok=True)
    dvc("add", "--quiet", str(RAW_DATA))
    step(f"tracked {RAW_DATA} with DVC; remote 'storage' is {url}")

    pushed = push_data(url)
    run("git", "add", "--all")
    run("git", *identity, "commit", "--quiet", "-m", f"Initial project from cookiecutter-snakemake-ml {TEMPLATE_VERSION}")
    step("created the git repository with one commit on branch main")
    if pushed:
        # Leave the working tree as a clean clone has it: the pipeline's fetch step pulls the data.
        (PROJECT_DIR / RAW_DATA).unlink()
        shutil.rmtree(PROJECT_DIR / ".dvc" / "cache", ignore_errors=True)
        step("the data now lives on the DVC remote; `snakemake` fetches it with `dvc pull`")


def push_data(url):
    if REMOTE_KIND == "s3" and not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
        step(
            f"NOTE: data not pushed to {url}: set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
            "(and AWS_ENDPOINT_URL, e.g. https://a3s.fi for CSC Allas), then run `dvc push`"
        )
        return False
    dvc("push", "--quiet")
    step(f"pushed the data to {url}")
    return True


def main():
    vendor()
    write_demo_data()
    init_repositories()
    step(f"done. Next: cd {PROJECT_DIR} && make run")


if __name__ == "__main__":
    main()
