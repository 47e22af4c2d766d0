"""The template's answers are data: checked before anything is rendered or written, and written as literals.

Cookiecutter's Jinja extension `Answers` (named in cookiecutter.json `_extensions`) is loaded whenever cookiecutter
(or cruft) builds its template environment, which happens before any answer is rendered:

1. before the prompts are rendered (cookiecutter renders every answer given on the command line, in a config file
   or in `extra_context` as a Jinja template): an answer containing template syntax (`{{`, `{%`, `{#`) that is not
   the template's own default is refused, so that no expression in an answer is ever evaluated;
2. before the project directory is created (the answers are final; cookiecutter has put `_template` into the
   context): every answer is checked against the rules below, and so are the tools generation needs. A refused
   answer stops generation with one `ERROR:` line per problem and nothing written.

It also gives the template its filters: `quote` (a double-quoted string literal, valid in YAML, TOML, JSON and
Python) for every free-text answer written into a file, `rst` (text with reStructuredText markup escaped), `slug`
(the project_slug derived from a project name) and `account_settings` (a cluster's Slurm account settings from its
description in profiles/, None for a cluster without accounts). hooks/pre_gen_project.py runs the same checks again.

This is its own module rather than part of local_extensions.py: Python imports a module once per process, and cruft
renders an older checkout of the template before the newer one in one process (`cruft update`): a name the older
checkout never had is imported from the newer checkout.
"""

from __future__ import annotations

import importlib.util
import json
import keyword
import re
import shutil
import sys
import unicodedata
from pathlib import Path

from jinja2.ext import Extension

HERE = Path(__file__).resolve().parent
# The top-level import names of every package in the generated project's locks (requirements.lock, and
# requirements-lab.lock, which the images install on top), written by `python template_answers.py --lock-imports`
# from the installed packages' metadata; tests check it is current.
LOCK_IMPORTS = HERE / "requirements" / "lock-imports.txt"
LOCK = HERE / "{{cookiecutter.project_slug}}" / "requirements.lock"
LAB_LOCK = HERE / "{{cookiecutter.project_slug}}" / "requirements-lab.lock"

MARKUP = re.compile(r"\{\{|\{%|\{#")
# Answers written as text into files: the project's title, author and one-line description.
FREE_TEXT = ("project_name", "author_name", "description")
SLUG = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", re.ASCII)
SLUG_MAX = 64
PACKAGE = re.compile(r"[a-z][a-z0-9_]*", re.ASCII)
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", re.ASCII)
S3_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._~/-]*)?", re.ASCII)
LOCAL_DIR = re.compile(r"[/~][^\x00-\x1f\x7f]*", re.ASCII)
# Names a package inside the project must not take, besides the lock's import names and the standard library:
# the workflow's own helper package (workflow/lib/smkml), folders on the project's sys.path, and Horovod (built from
# source by containers/horovod/build-horovod.sh, so not in the lock).
PROJECT_MODULES = {"smkml", "workflow", "test", "tests", "src", "notebooks", "config", "horovod"}


class AnswersRefused(Exception):
    """Answers that must not be rendered: the message is one `ERROR: ...` line per problem."""


def _refused_type():
    """A cookiecutter exception its command line prints as a plain message (no traceback), exit status 1."""
    try:
        from cookiecutter.exceptions import FailedHookException
    except ImportError:  # pragma: no cover - only without cookiecutter
        return AnswersRefused

    class Refused(AnswersRefused, FailedHookException):
        pass

    return Refused


Refused = _refused_type()


# ---------------------------------------------------------------------------------------------------- filters


def quote(value) -> str:
    """`value` as a double-quoted string literal that YAML, TOML, JSON and Python all read back as the same text
    (free text is refused when it holds control or other non-printable characters, which these disagree on)."""
    return json.dumps(str(value), ensure_ascii=False)


def rst(value) -> str:
    """Text for a reStructuredText document: every character that could be markup escaped with a backslash."""
    return "".join(c if c.isalnum() or c == " " else "\\" + c for c in str(value))


def slug(name) -> str:
    """A valid project_slug from a project name: accents transliterated, punctuation dropped, words joined with
    `-`, at most 64 characters; `project-` in front when it would not start with a letter."""
    from slugify import slugify  # python-slugify, a dependency of cookiecutter

    text = slugify(str(name), separator="-", lowercase=True, regex_pattern=r"[^a-z0-9]+")
    if not text or not text[0].isalpha():
        text = f"project-{text}".rstrip("-")
    if len(text) > SLUG_MAX:
        text = text[: SLUG_MAX + 1].rsplit("-", 1)[0] if "-" in text[:SLUG_MAX + 1] else text[:SLUG_MAX]
    return text.strip("-")


# ---------------------------------------------------------------------------------------------------- rules


def lock_imports() -> set[str]:
    """The top-level import names of the lock's packages (see LOCK_IMPORTS)."""
    return {line.strip() for line in LOCK_IMPORTS.read_text().splitlines() if line.strip() and not line.startswith("#")}


def reserved_packages() -> set[str]:
    return lock_imports() | set(sys.stdlib_module_names) | PROJECT_MODULES


def _printable(value: str) -> bool:
    return all(unicodedata.category(c)[0] != "C" for c in value)


def cluster_account(template_dir: Path, cluster: str):
    """The account settings of the cluster's description (None: the cluster takes no Slurm account)."""
    import yaml

    path = template_dir / "profiles" / cluster / "cluster.yaml"
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())["cluster"].get("account")


def problems(answers: dict, template_dir: Path = HERE):
    """Yield one message per bad answer."""
    for key in FREE_TEXT:
        value = answers[key]
        if not value.strip():
            yield f"{key} is empty: give a value"
        elif not _printable(value):
            yield f"{key} {value!r} contains control or other non-printable characters (a newline, a tab, ...): use one line of text"
        elif value != value.strip():
            yield f"{key} {value!r} starts or ends with spaces: remove them"

    slug_ = answers["project_slug"]
    if not SLUG.fullmatch(slug_) or len(slug_) > SLUG_MAX:
        yield (
            f"project_slug {slug_!r} is not valid: use 1-64 lowercase letters, digits and single hyphens, "
            "starting with a letter (e.g. 'digits-classifier')"
        )

    package = answers["package_name"]
    if not PACKAGE.fullmatch(package) or keyword.iskeyword(package) or keyword.issoftkeyword(package):
        yield (
            f"package_name {package!r} is not a valid Python package name: use lowercase letters, digits and "
            "underscores, starting with a letter (e.g. 'digits_classifier')"
        )
    elif package in reserved_packages():
        yield (
            f"package_name {package!r} would shadow the module of the same name that the project imports (the "
            "standard library, a package in requirements.lock, or the workflow's own): choose another name"
        )

    email = answers["author_email"]
    if not EMAIL.fullmatch(email):
        yield f"author_email {email!r} is not an e-mail address: use name@domain with ASCII letters, digits and ._%+- (e.g. 'you@example.org')"

    account, cluster = answers["slurm_account"], answers["cluster"]
    if account:
        spec = cluster_account(template_dir, cluster)
        if spec is None:
            takes = sorted(p.parent.name for p in (template_dir / "profiles").glob("*/cluster.yaml")
                           if cluster_account(template_dir, p.parent.name) is not None)
            yield (
                f"slurm_account {account!r} is only used with cluster {' or '.join(takes)}, not '{cluster}': "
                "leave it empty"
            )
        elif not re.fullmatch(spec["pattern"], account, re.ASCII):
            yield (
                f"slurm_account {account!r} is not a {cluster} account: it must match {spec['pattern']} "
                f"(e.g. '{spec['example']}'), or leave it empty to give it at run time"
            )

    remote, url = answers["dvc_remote"], answers["dvc_remote_url"]
    if remote == "s3" and url and not S3_URL.fullmatch(url):
        yield f"dvc_remote_url {url!r} is not an S3 URL: use s3://<bucket>/<path> (lowercase bucket name)"
    if remote == "local" and url and ("://" in url or not LOCAL_DIR.fullmatch(url)):
        yield f"dvc_remote_url {url!r} is not an absolute directory path (e.g. '/scratch/project_465000001/dvc')"


def missing_tools(answers: dict):
    """Generation runs git and DVC (with S3 support for an s3 remote) and writes the demo data from scikit-learn."""
    if shutil.which("git") is None:
        yield "git is not installed: install git (Debian: apt-get install git)"
    needed = [("dvc", "dvc"), ("sklearn", "scikit-learn")]
    if answers["dvc_remote"] == "s3":  # DVC's S3 support, used by the push at generation
        needed.append(("dvc_s3", "dvc-s3"))
    for module, package in needed:
        if importlib.util.find_spec(module) is None:
            yield (
                f"Python package '{package}' is missing from the environment running cookiecutter "
                f"({sys.executable}): pip install {package}"
            )


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, path)
    elif isinstance(value, str):
        yield path, value


def template_syntax(answers: dict, template_dir: Path = HERE):
    """Yield a message per answer holding template syntax that is not the template's own default for that key
    (cookiecutter.json)."""
    own = {}
    for path, text in _leaves(json.loads((template_dir / "cookiecutter.json").read_text())):
        own.setdefault(path, set()).add(text)
    for path, text in _leaves({k: v for k, v in answers.items() if not (k.startswith("_") and not k.startswith("__"))}):
        if MARKUP.search(text) and text not in own.get(path, ()):
            yield (
                f"{'.'.join(map(str, path))} {text!r} contains template syntax ('{{{{', '{{%' or '{{#'): "
                "answers are plain text, never evaluated; remove it"
            )


def check(context: dict, template_dir: Path = HERE) -> None:
    """Raise Refused naming every bad answer in cookiecutter's context ({"cookiecutter": answers, ...})."""
    answers = context.get("cookiecutter") or {}
    found = list(template_syntax(answers, template_dir))
    final = "_template" in answers  # set by cookiecutter and cruft once the prompts are answered
    if not found and final:
        found = list(problems(answers, template_dir))
        if not found and "_commit" not in answers:  # cruft's renders (`_commit`) only vendor files: no tools needed
            found = list(missing_tools(answers))
    if found:
        raise Refused("\n".join(f"ERROR: {message}" for message in found))


# ---------------------------------------------------------------------------------------------------- extension


def _creating_context():
    """The context cookiecutter builds its environment from (ExtensionLoaderMixin.__init__'s `context` argument)."""
    from cookiecutter.environment import ExtensionLoaderMixin

    code = ExtensionLoaderMixin.__init__.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return frame.f_locals.get("context")
        frame = frame.f_back
    return None


class Answers(Extension):
    def __init__(self, environment):
        super().__init__(environment)
        context = _creating_context()
        if context is None:
            raise Refused(
                "ERROR: cannot check the answers before rendering (this cookiecutter builds its environment in an "
                "unknown way): use the cookiecutter version in requirements/dev.txt"
            )
        repo = (context.get("cookiecutter") or {}).get("_repo_dir")
        # (resolved now: cookiecutter renders the project's files from another working directory)
        template_dir = Path(repo).resolve() if repo and (Path(repo) / "cookiecutter.json").is_file() else HERE
        # `cluster | account_settings`: the cluster description's account settings (None: no Slurm account), read
        # from profiles/<cluster>/cluster.yaml of the template being rendered, so that the project's files talk
        # about accounts exactly for the clusters that take one.
        environment.filters.update(
            quote=quote, rst=rst, slug=slug, account_settings=lambda cluster: cluster_account(template_dir, cluster)
        )
        check(context, template_dir)


# ---------------------------------------------------------------------------------------------------- the lock


def import_names(distribution) -> set[str]:
    """The top-level import names an installed distribution provides (top_level.txt, else its RECORD)."""
    text = distribution.read_text("top_level.txt")
    if text:
        names = {line.strip().replace("/", ".").split(".")[0] for line in text.splitlines() if line.strip()}
    else:
        names = set()
        for file in distribution.files or []:
            parts = Path(str(file)).parts
            if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".data", ".pth")):
                continue
            if len(parts) > 1:
                names.add(parts[0])
            elif parts[0].endswith((".py", ".so", ".pyd")):
                names.add(parts[0].split(".")[0])
    return {name for name in names if name.isidentifier()}


def locked_distributions() -> list[str]:
    """The distributions both locks pin, each once."""
    return list(dict.fromkeys(
        re.split(r"[=<>!~;\[ ]", line.strip())[0]
        for lock in (LOCK, LAB_LOCK)
        for line in lock.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ))


def derive_lock_imports(paths: list[str] = ()) -> set[str]:
    """From this environment, or for a distribution it lacks from `paths` (e.g. .venv-lab's site-packages)."""
    import importlib.metadata

    names = set()
    for name in locked_distributions():
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            found = list(importlib.metadata.distributions(name=name, path=list(paths)))
            if not found:
                raise
            distribution = found[0]
        names |= import_names(distribution)
    return names


if __name__ == "__main__":
    if sys.argv[1:2] != ["--lock-imports"]:
        sys.exit("usage: python template_answers.py --lock-imports [SITE_PACKAGES ...]   (in an environment with "
                 "requirements.lock installed; the site-packages folders of one with requirements-lab.lock, e.g. "
                 ".venv-lab/lib/python3.11/site-packages, for what this one lacks)")
    header = (
        "# Top-level import names of every package in {{cookiecutter.project_slug}}/requirements.lock and\n"
        "# requirements-lab.lock: a generated project's package_name must not be one.\n"
        "# Written by `python template_answers.py --lock-imports [.venv-lab's site-packages]`.\n"
    )
    names = derive_lock_imports(sys.argv[2:])
    LOCK_IMPORTS.write_text(header + "".join(f"{name}\n" for name in sorted(names)))
    print(f"wrote {LOCK_IMPORTS}")
