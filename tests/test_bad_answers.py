"""Bad answers: one clear line naming the value and what is allowed, and nothing left behind.

Answers are data: an answer holding template syntax is refused before cookiecutter renders it (the expressions
below would write a file if evaluated), and every other answer is checked before the project directory is created
(template_answers.py, loaded by cookiecutter as a Jinja extension).
"""

from __future__ import annotations

import subprocess

import pytest

from conftest import BIN_DIR, TEMPLATE_DIR, command_env, generate, run

BAD_ANSWERS = [
    ({"project_slug": "My Project"}, "project_slug 'My Project' is not valid"),
    ({"project_slug": "9lives"}, "project_slug '9lives' is not valid"),
    ({"project_slug": "a--b"}, "project_slug 'a--b' is not valid"),
    ({"package_name": "my-package"}, "package_name 'my-package' is not a valid Python package name"),
    ({"package_name": "class"}, "package_name 'class' is not a valid Python package name"),
    ({"package_name": "torch"}, "package_name 'torch' would shadow"),
    ({"package_name": "json"}, "package_name 'json' would shadow"),
    ({"project_name": "   ", "project_slug": "blank"}, "project_name is empty"),
    ({"project_name": "Two\nlines"}, "project_name 'Two\\nlines' contains control or other non-printable characters"),
    ({"description": "tab\there"}, "description 'tab\\there' contains control"),
    ({"author_name": " Padded"}, "author_name ' Padded' starts or ends with spaces"),
    ({"project_slug": "digits\n"}, "project_slug 'digits\\n' is not valid"),
    ({"project_slug": "a/b"}, "project_slug 'a/b' is not valid"),
    ({"project_slug": "../escape"}, "project_slug '../escape' is not valid"),
    ({"package_name": "pkg\n"}, "package_name 'pkg\\n' is not a valid Python package name"),
    ({"package_name": "match"}, "package_name 'match' is not a valid Python package name"),
    ({"package_name": "yaml"}, "package_name 'yaml' would shadow"),
    ({"package_name": "smkml"}, "package_name 'smkml' would shadow"),
    ({"package_name": "git"}, "package_name 'git' would shadow"),  # GitPython, deep in the lock
    ({"package_name": "horovod"}, "package_name 'horovod' would shadow"),
    ({"author_email": "nobody"}, "author_email 'nobody' is not an e-mail address"),
    ({"author_email": 'a"b@example.org'}, "author_email 'a\"b@example.org' is not an e-mail address"),
    ({"author_email": "you@example.org\n"}, "author_email 'you@example.org\\n' is not an e-mail address"),
    ({"cluster": "lumi", "slurm_account": "project_\u0664\u0666\u0665000001"},
     "slurm_account 'project_\u0664\u0666\u0665000001' is not a lumi account"),  # Arabic-Indic digits
    ({"cluster": "slurm", "slurm_account": "\uff10\uff11\uff12"}, "slurm_account '\uff10\uff11\uff12' is not a slurm account"),  # fullwidth digits
    ({"cluster": "slurm", "slurm_account": "grp\n"}, "slurm_account 'grp\\n' is not a slurm account"),
    ({"cluster": "lumi", "slurm_account": "465000001"},
     "slurm_account '465000001' is not a lumi account: it must match project_[0-9]{9} (e.g. 'project_465000001')"),
    ({"cluster": "lumi", "slurm_account": "project_12"}, "slurm_account 'project_12' is not a lumi account"),
    ({"cluster": "slurm", "slurm_account": "my group"}, "slurm_account 'my group' is not a slurm account"),
    ({"cluster": "local", "slurm_account": "project_465000001"}, "slurm_account 'project_465000001' is only used with cluster lumi or slurm"),
    ({"dvc_remote": "s3", "dvc_remote_url": "https://bucket"}, "dvc_remote_url 'https://bucket' is not an S3 URL"),
    ({"dvc_remote": "s3", "dvc_remote_url": "s3://Bad_Bucket/x"}, "dvc_remote_url 's3://Bad_Bucket/x' is not an S3 URL"),
    ({"dvc_remote": "local", "dvc_remote_url": "relative/dir"}, "dvc_remote_url 'relative/dir' is not an absolute directory"),
    ({"dvc_remote": "local", "dvc_remote_url": "/tmp/x\n"}, "dvc_remote_url '/tmp/x\\n' is not an absolute directory"),
    ({"dvc_remote": "s3", "dvc_remote_url": "s3://bucket/a b"}, "dvc_remote_url 's3://bucket/a b' is not an S3 URL"),
]

# Choice answers outside the list are refused by cookiecutter itself, before our hook runs: its
# message is the last line of a traceback we cannot suppress.
BAD_CHOICES = [
    ({"training_backend": "tensorflow"}, "tensorflow provided for choice variable training_backend, but the choices are ['horovod', 'torch_ddp']"),
    ({"cluster": "aws"}, "aws provided for choice variable cluster, but the choices are ['lumi', 'slurm', 'kubernetes', 'local']"),
    ({"dvc_remote": "gcs"}, "gcs provided for choice variable dvc_remote"),
]


def ids(case):
    answers, _ = case
    return "-".join(f"{k}={v}" for k, v in answers.items())


def generate_refused(tmp_path, answers):
    """Run cookiecutter's command line with these answers; it must fail and leave nothing behind."""
    out = tmp_path / "out"
    out.mkdir()
    words = [f"{key}={value}" for key, value in answers.items()]
    result = run(["cookiecutter", "--no-input", "--output-dir", str(out), str(TEMPLATE_DIR), *words], tmp_path, check=False)
    assert result.returncode != 0
    assert list(out.iterdir()) == [], "something was left behind"
    return result


@pytest.mark.parametrize("answers, message", BAD_ANSWERS, ids=[ids(c) for c in BAD_ANSWERS])
@pytest.mark.reliability(
    tried="A template answer that would give a broken project",
    sees="`ERROR:` line naming the answer and what is allowed, exit 1, no traceback",
    left="nothing: no project folder, no DVC remote folder",
)
def test_bad_answer_is_named_and_nothing_is_written(tmp_path, answers, message):
    """Refused before the project directory is created: `ERROR:` lines, exit 1, no traceback, no directory."""
    result = generate_refused(tmp_path, answers)
    output = result.stderr + result.stdout
    assert f"ERROR: {message}" in output
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if line.strip()][-1].startswith("ERROR: "), output


@pytest.mark.parametrize("answers, message", BAD_CHOICES, ids=[ids(c) for c in BAD_CHOICES])
@pytest.mark.reliability(
    tried="An answer outside the choices in cookiecutter.json",
    sees="cookiecutter's message naming the choices, exit 1",
    left="nothing",
)
def test_bad_choice_is_named_and_nothing_is_written(tmp_path, answers, message):
    result = generate_refused(tmp_path, answers)
    assert message in result.stderr.strip().splitlines()[-1]


@pytest.mark.reliability(tried="Several bad answers at once", sees="one `ERROR:` line per bad answer", left="nothing")
def test_every_bad_answer_is_reported_on_its_own_line(tmp_path):
    result = generate_refused(tmp_path, {"package_name": "1x", "author_email": "x"})
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 2, output
    assert "Traceback" not in output


# Expressions that write a file when a template engine evaluates them (they do, in cookiecutter without the
# template's own check): the classic Jinja escape from a template to Python's builtins.
def writes(path):
    return f"self.__init__.__globals__.__builtins__.open('{path}', 'w').write('evaluated')"


EXPRESSIONS = {
    "expression": lambda path: "{{ " + writes(path) + " }}",
    "statement": lambda path: "Study {% set x = " + writes(path) + " %}",
    "comment": lambda path: "Study {# " + writes(path) + " #}",
}


@pytest.mark.parametrize("key", ["description", "project_name", "author_name", "project_slug", "dvc_remote_url"])
@pytest.mark.parametrize("form", list(EXPRESSIONS))
@pytest.mark.reliability(
    tried="Jinja syntax in a free-text answer (an expression that would write a file)",
    sees="`ERROR:` naming the answer; the expression never runs",
    left="nothing: no file written by the expression, no project",
)
def test_template_syntax_in_an_answer_is_refused_and_never_evaluated(tmp_path, key, form):
    evidence = tmp_path / "evaluated"
    value = EXPRESSIONS[form](evidence)
    result = generate_refused(tmp_path, {key: value})
    output = result.stdout + result.stderr
    assert f"ERROR: {key} {value!r} contains template syntax" in output, output
    assert "Traceback" not in output
    assert not evidence.exists(), "the answer was evaluated"


@pytest.mark.reliability(
    tried="The template's own default expression typed into another answer",
    sees="`ERROR:` naming the answer",
    left="nothing",
)
def test_the_templates_own_expression_is_refused_as_another_answer(tmp_path):
    """Only a key's own default in cookiecutter.json may hold template syntax, not a copy of it in another answer."""
    result = generate_refused(tmp_path, {"description": "{{ cookiecutter.project_name | slug }}"})
    assert "ERROR: description '{{ cookiecutter.project_name | slug }}' contains template syntax" in result.stdout


@pytest.mark.reliability(
    tried="Jinja syntax in extra_context through cookiecutter's Python API",
    sees="an error naming the answer; never evaluated",
    left="nothing",
)
def test_template_syntax_is_refused_through_the_python_api(tmp_path):
    """The same through cookiecutter's Python API (what pytest-cookies and cruft call): an exception naming the
    answer, the file the expression would write not written, no project directory."""
    evidence = tmp_path / "evaluated"
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Exception, match=r"ERROR: description .* contains template syntax"):
        generate(out, description=EXPRESSIONS["expression"](evidence))
    assert not evidence.exists()
    assert list(out.iterdir()) == []


@pytest.mark.reliability(
    tried="Jinja syntax typed at the interactive prompt",
    sees="`ERROR:` naming the answer; never evaluated",
    left="nothing",
)
def test_template_syntax_typed_at_the_prompt_is_refused(tmp_path):
    """Typed answers are not rendered by cookiecutter's prompts but land in the files: refused before any is written."""
    out = tmp_path / "out"
    out.mkdir()
    evidence = tmp_path / "evaluated"
    typed = ["Prompted Study", "", "", "Me", "me@example.org", EXPRESSIONS["expression"](evidence)]
    result = subprocess.run(
        [str(BIN_DIR / "cookiecutter"), "--output-dir", str(out), str(TEMPLATE_DIR)],
        input="\n".join(typed) + "\n" * 20, capture_output=True, text=True, timeout=120, env=command_env(),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "ERROR: description \"{{ self.__init__" in output and "contains template syntax" in output, output
    assert not evidence.exists()
    assert list(out.iterdir()) == []


# Odd answers that are allowed make a project that works: free text is written as quoted literals (TOML, YAML,
# Python, reStructuredText), never pasted, and the slug and package name derived from any project name are valid.
ODD = {
    "project_name": "Café (Beta): Study # 1 — “quoted” \\ {x}",
    "author_name": "O'Brien \"Bob\" \\ 😀",
    "author_email": "o.brien+ml@example.org",
    "description": 'Says "hi": a # b, {x} *y* `z` $(touch evaluated) \\n; key: value',
}


@pytest.fixture(scope="module")
def odd_project(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("odd"), **ODD)


@pytest.mark.reliability(
    tried="Accents, punctuation and parentheses in the project name",
    sees="a valid slug and package derived (transliterated)",
    left="a working project",
)
def test_odd_answers_derive_a_valid_slug_and_package(odd_project):
    assert odd_project.name == "cafe-beta-study-1-quoted-x"
    assert (odd_project / "src" / "cafe_beta_study_1_quoted_x" / "__init__.py").is_file()


def test_odd_answers_are_read_back_unchanged(odd_project):
    import ast
    import tomllib

    import yaml

    project = tomllib.loads((odd_project / "pyproject.toml").read_text())["project"]
    assert project["description"] == ODD["description"]
    assert project["authors"] == [{"name": ODD["author_name"], "email": ODD["author_email"]}]
    init = (odd_project / "src" / "cafe_beta_study_1_quoted_x" / "__init__.py").read_text()
    assert ast.get_docstring(ast.parse(init)) == f"{ODD['project_name']}: {ODD['description']}"
    config = yaml.safe_load((odd_project / "config/config.yaml").read_text())
    assert config["tracking"]["experiment"] == config["tracking"]["registered_model"] == odd_project.name
    assert yaml.safe_load((odd_project / "MLproject").read_text())["name"] == odd_project.name
    author = run(["git", "log", "--format=%an <%ae>"], odd_project).stdout.strip()
    assert author == f"{ODD['author_name']} <{ODD['author_email']}>"
    assert not (odd_project / "evaluated").exists()


def test_odd_answers_make_a_valid_report_description(odd_project):
    """workflow/description.rst as Snakemake's report renders it (Jinja, then docutils): no warning, the text as given."""
    import docutils.core
    import jinja2

    text = jinja2.Template((odd_project / "workflow/description.rst").read_text()).render(
        snakemake={"config": {"train": {"backend": "horovod"}}}
    )
    document = docutils.core.publish_doctree(text, settings_overrides={"halt_level": 2, "report_level": 2})
    paragraphs = document.astext().splitlines()
    assert paragraphs[0] == ODD["project_name"]  # the title
    assert ODD["description"] in paragraphs


@pytest.mark.reliability(
    tried="Quotes, `: `, `#` and non-ASCII text in free-text answers",
    sees="the project's pipeline runs; YAML/TOML/Makefiles stay valid",
    left="a working project",
)
def test_odd_answers_project_runs(odd_project):
    dry = run(["snakemake", "-n", "--profile", "profiles/local"], odd_project)
    assert "train_model" in dry.stdout
    package = run(["python", "-c", "import cafe_beta_study_1_quoted_x as p; print(p.__doc__)"], odd_project / "src")
    assert package.stdout.strip() == f"{ODD['project_name']}: {ODD['description']}"


@pytest.mark.parametrize("account", ["0123", "null", "1e3", "true"])
@pytest.mark.reliability(
    tried="A Slurm account that YAML would read as a number, null or boolean",
    sees="the account kept exactly as typed",
    left="a working project",
)
def test_account_that_yaml_would_misread_stays_a_string(tmp_path, account, template_dir):
    """Written as a quoted YAML string: the cluster description gives the same text back, and the run uses it."""
    import yaml

    from conftest import project_helper

    project = generate(tmp_path, cluster="slurm", slurm_account=account)
    description = yaml.safe_load((project / "profiles/slurm/cluster.yaml").read_text())
    assert description["cluster"]["account"]["value"] == account
    # As the workflow reads it: the project's config with the profile's cluster description, validated.
    config = project_helper(project, "schemas").validate(
        {**yaml.safe_load((project / "config/config.yaml").read_text()), **description}
    )
    assert project_helper(project, "resources").account(config["cluster"], environ={}) == account


def test_lock_import_names_are_current(lab_venv):
    """requirements/lock-imports.txt (the names package_name must not take) is what the packages of both locks
    provide (those of requirements-lab.lock that this environment lacks from JupyterLab's environment)."""
    import template_answers

    lab_site = [str(path) for path in lab_venv.glob("lib/python3*/site-packages")]
    assert {"jupyterlab", "bleach", "rfc3987_syntax"} <= template_answers.lock_imports()
    assert template_answers.lock_imports() == template_answers.derive_lock_imports(lab_site), (
        "requirements/lock-imports.txt is out of date: run `python template_answers.py --lock-imports "
        f"{' '.join(lab_site)}`"
    )


@pytest.mark.reliability(
    tried="Generation that fails in the post-generation hook",
    sees="the error, exit 1",
    left="nothing: no project, no `<slug>-dvc-remote/`",
)
def test_failed_generation_leaves_no_dvc_remote_behind(tmp_path):
    """A failure after the local DVC remote was made (here: git refuses the commit date) removes the project and the
    remote directory this run created."""
    out = tmp_path / "out"
    out.mkdir()
    result = run(
        ["cookiecutter", "--no-input", "--output-dir", str(out), str(TEMPLATE_DIR), "project_name=Broken Commit"],
        tmp_path, check=False, GIT_AUTHOR_DATE="not a date",
    )
    assert result.returncode != 0
    assert "git" in result.stdout + result.stderr
    assert list(out.iterdir()) == []


def test_the_pre_generation_hook_reads_every_answer_from_the_context(tmp_path):
    """hooks/pre_gen_project.py as a renderer without the template's extension would run it (plain Jinja with the
    `quote` filter): the answers come from cookiecutter's context, none listed in the hook (a question added to
    cookiecutter.json is checked too), cookiecutter's own `_` entries left out; a good set passes, bad ones are
    named."""
    import json
    import sys

    import jinja2

    from template_answers import quote

    spec = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
    context = {key: value[0] if isinstance(value, list) else value for key, value in spec.items()}
    context.update(project_slug="digits-classifier", package_name="digits_classifier", _template=str(TEMPLATE_DIR),
                   _repo_dir=str(TEMPLATE_DIR), _output_dir=str(tmp_path))
    env = jinja2.Environment(keep_trailing_newline=True)
    env.filters["quote"] = quote
    env.globals["template_path"] = lambda: str(TEMPLATE_DIR)
    hook = env.from_string((TEMPLATE_DIR / "hooks/pre_gen_project.py").read_text())

    def run_hook(**answers):
        path = tmp_path / "pre_gen_project.py"
        path.write_text(hook.render(cookiecutter={**context, **answers}))
        return subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    good = run_hook()
    assert good.returncode == 0, good.stderr
    bad = run_hook(author_email="nobody", slurm_account="project_1")
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        "ERROR: author_email 'nobody' is not an e-mail address: use name@domain with ASCII letters, digits and ._%+- "
        "(e.g. 'you@example.org')",
        "ERROR: slurm_account 'project_1' is not a lumi account: it must match project_[0-9]{9} "
        "(e.g. 'project_465000001'), or leave it empty to give it at run time",
    ]
    added = run_hook(new_question="{{ 6 * 7 }}")
    assert added.returncode == 1 and "ERROR: new_question '{{ 6 * 7 }}' contains template syntax" in added.stderr
