"""Finish the generated project so that it runs from a clean clone, without the template:

1. vendor the shared parts of the template into the project, one plain tree copy per shared folder
   (rules_lib/ -> workflow/, profiles/ -> profiles/, containers/ -> containers/), and record them in
   vendored.json (template, version, commit, sha256 per file), as nf-core's modules.json does;
2. record the template's location, commit and the answers in .cruft.json (for `cruft check` / `cruft update`);
3. write the demo dataset (scikit-learn's bundled digits) to data/raw/;
4. initialise git and DVC, configure the DVC remote, track the data with DVC and push it;
5. commit everything, then drop the local data copy and DVC cache so the pipeline's first step
   really pulls the data from the remote, as it will in a fresh clone.

When cruft renders the template (`cruft update`, `cruft diff`, which re-render the old and the new template
version into temporary directories and diff them), only step 1 runs: the rest is the project's own state
(git history, DVC cache and remote, data), which an update must not touch, and pushing data from a
temporary render would be wasted work against the real remote. Cruft is recognised by the `_commit` it
puts into the context; plain cookiecutter never sets it.
"""

import json
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

PROJECT_DIR = Path.cwd()
# The template checkout this hook was rendered from (local_extensions.py): a local path or cookiecutter's clone.
TEMPLATE_DIR = Path({{ template_path() | quote }})
# All answers and cookiecutter's own entries (_template, _repo_dir, _checkout; cruft adds _commit).
CONTEXT = json.loads({{ cookiecutter | tojson | tojson }})
RENDERED_BY_CRUFT = "_commit" in CONTEXT
PACKAGE = {{ cookiecutter.package_name | quote }}
SLUG = {{ cookiecutter.project_slug | quote }}
CLUSTER = {{ cookiecutter.cluster | quote }}
ACCOUNT = {{ cookiecutter.slurm_account | quote }}
REMOTE_KIND = {{ cookiecutter.dvc_remote | quote }}
REMOTE_URL = {{ cookiecutter.dvc_remote_url | quote }}
AUTHOR = {{ cookiecutter.author_name | quote }}
EMAIL = {{ cookiecutter.author_email | quote }}
TEMPLATE_VERSION = {{ cookiecutter._template_version | quote }}
RAW_DATA = Path("data/raw/digits.csv")
# What `cruft update` leaves alone: the project's own state, not template output.
CRUFT_SKIP = [".git", ".dvc", ".dvcignore", "data", "results", "logs", "mlflow.db", "mlruns", ".snakemake", ".venv"]
# Context entries that only describe this machine's generation run; not recorded in .cruft.json.
UNRECORDED = {"_repo_dir", "_output_dir"}
IGNORED_PATTERNS = ("__pycache__", "*.pyc", ".pytest_cache")
IGNORED = shutil.ignore_patterns(*IGNORED_PATTERNS)
# The template's shared folders and where each lands in the project: rules_lib/ is laid out as workflow/ is.
SHARED = {"rules_lib": "workflow", "profiles": "profiles", "containers": "containers"}


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
    """Copy each shared folder as a whole tree, then record every copied file in vendored.json."""
    files = []
    for source, target in SHARED.items():
        src = TEMPLATE_DIR / source
        if not src.is_dir():
            sys.exit(f"ERROR: template folder {src} is missing: is '{TEMPLATE_DIR}' a complete template checkout?")
        shutil.copytree(src, PROJECT_DIR / target, ignore=IGNORED, dirs_exist_ok=True)
        files += [str(Path(target) / path.relative_to(src)) for path in copied_files(src)]
    if ACCOUNT:
        set_account(ACCOUNT)
    sys.path.insert(0, str(PROJECT_DIR / "workflow" / "lib"))
    from smkml import vendored

    template, commit = template_origin()
    manifest = vendored.write(PROJECT_DIR, files, template, TEMPLATE_VERSION, commit)
    step(f"vendored {len(files)} files of the template's {', '.join(f'{s}/' for s in SHARED)} (listed in {manifest.name})")


def copied_files(source):
    """The files copytree copies from `source` (IGNORED_PATTERNS left out), in a stable order."""
    return [
        path
        for path in sorted(source.rglob("*"))
        if path.is_file()
        and not any(fnmatch(part, pattern) for part in path.relative_to(source).parts for pattern in IGNORED_PATTERNS)
    ]


def set_account(account):
    """Write the Slurm account into the cluster description the profile loads (its empty `value: ""`)."""
    description = PROJECT_DIR / "profiles" / CLUSTER / "cluster.yaml"
    text, count = re.subn(r'^(\s+value: )""', lambda m: m.group(1) + json.dumps(account), description.read_text(),
                          count=1, flags=re.M)
    if not count:
        sys.exit(f"ERROR: {description} has no empty 'account: value:' to put the account in")
    description.write_text(text)


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
    # Only the URL goes into .dvc/config: the S3 endpoint and credentials come from the environment
    # (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) wherever DVC runs.
    dvc("remote", "add", "--default", "storage", url)
    if REMOTE_KIND != "s3":
        make_remote_dir(Path(url))
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


# The outermost directory this run created for a local DVC remote: removed again if generation fails, as
# cookiecutter removes the project directory.
CREATED = []


def make_remote_dir(path):
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    if missing:
        CREATED.append(missing[-1])


def push_data(url):
    """Push the data; for S3 without credentials, leave it in the working tree for a later `dvc push`.

    The remote is checked first by the project's own checker (workflow/lib/smkml/dvc_remote.py, the one the
    fetch step uses): a missing bucket or a refused key stops generation with a message naming the fix.
    """
    sys.path.insert(0, str(PROJECT_DIR / "workflow" / "lib"))
    from smkml import dvc_remote

    try:
        dvc_remote.check(PROJECT_DIR, "push", [])
    except dvc_remote.NoCredentials as error:
        step(f"NOTE: data not pushed: {error}; then run `dvc push`")
        return False
    except dvc_remote.RemoteError as error:
        sys.exit(f"ERROR: cannot push the data to the DVC remote: {error}")
    dvc("push", "--quiet")
    step(f"pushed the data to {url}")
    return True


def git_state():
    """(commit, top-level directory, directory inside the repository, dirty?) of the template; None outside git."""

    def git(*args):
        result = subprocess.run(["git", "-C", str(TEMPLATE_DIR), *args], capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else None

    commit, toplevel = git("rev-parse", "HEAD"), git("rev-parse", "--show-toplevel")
    if not commit or not toplevel:
        return None
    directory = git("rev-parse", "--show-prefix").rstrip("/") or None
    return commit, toplevel, directory, bool(git("status", "--porcelain", "--untracked-files=no"))


def template_location(toplevel):
    """Where the template can be fetched again: the URL it was given as, else its checkout's directory."""
    given = str(CONTEXT.get("_template") or "")
    abbreviation = re.match(r"^(gh|gl|bb):(.+)$", given)
    if abbreviation:  # cookiecutter's built-in abbreviations, which git cannot clone
        prefix = {"gh": "https://github.com/", "gl": "https://gitlab.com/", "bb": "https://bitbucket.org/"}
        given = prefix[abbreviation.group(1)] + abbreviation.group(2)
    given = re.sub(r"^(git|hg)\+", "", given)
    remote = "://" in given or re.match(r"^[\w.-]+@[\w.-]+:", given)
    return given if remote else toplevel


def template_origin():
    """(template, commit) the vendored files came from: cruft names them in its context; else the checkout's git."""
    if RENDERED_BY_CRUFT:
        return CONTEXT.get("_template"), CONTEXT["_commit"]
    state = git_state()
    if state is None:
        return str(TEMPLATE_DIR), None
    return template_location(state[1]), state[0]


def record_template():
    """Write .cruft.json as `cruft create` would, so that `cruft check` and `cruft update` work on this project."""
    state = git_state()
    if state is None:
        step(f"NOTE: {TEMPLATE_DIR} is not a git checkout: no .cruft.json, so `cruft update` cannot follow the template")
        return
    commit, toplevel, directory, dirty = state
    template = template_location(toplevel)
    answers = {key: value for key, value in CONTEXT.items() if key not in UNRECORDED}
    answers.update({"_template": template, "_commit": commit})
    cruft_state = {
        "template": template,
        "commit": commit,
        "checkout": CONTEXT.get("_checkout"),
        "context": {"cookiecutter": answers},
        "directory": directory,
        "skip": CRUFT_SKIP,
    }
    (PROJECT_DIR / ".cruft.json").write_text(json.dumps(cruft_state, ensure_ascii=False, indent=2) + "\n")
    step(f"recorded the template ({template} at {commit[:12]}) in .cruft.json")
    if dirty:
        step("NOTE: the template has uncommitted changes; .cruft.json records its last commit")


def main():
    if not (TEMPLATE_DIR / "cookiecutter.json").is_file():
        sys.exit(f"ERROR: '{TEMPLATE_DIR}' (where the hooks were rendered) is not the template: no cookiecutter.json")
    vendor()
    if RENDERED_BY_CRUFT:
        step(
            "rendered by cruft: vendored files only; git, DVC and data are left to the project "
            "(a new project: `cookiecutter <template>` also sets those up)"
        )
        return
    record_template()
    write_demo_data()
    init_repositories()
    step(f"done. Next: cd {PROJECT_DIR} && make env && make run  (make env creates .venv from requirements.lock; once)")


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        for directory in CREATED:
            shutil.rmtree(directory, ignore_errors=True)
        raise
