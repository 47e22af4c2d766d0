"""Validate every answer before anything is written (a second time).

The checks are template_answers.py's, the module cookiecutter loads as a Jinja extension: it already refused bad
answers before the project directory was created and before any answer was rendered. This hook runs the same checks
on the answers as rendered into it, for a renderer that did not load the extension. On a bad answer it prints one
`ERROR:` line per problem, naming the value and what is allowed, and exits 1.
"""

import importlib.util
import json
import sys
from pathlib import Path

# The template checkout this hook was rendered from (local_extensions.py).
TEMPLATE_DIR = Path({{ template_path() | quote }})
# Cookiecutter's context: every answer and cookiecutter's own entries (_template, _repo_dir, _extensions, ...).
CONTEXT = json.loads({{ cookiecutter | tojson | tojson }})
# The answers: every key of cookiecutter.json without a leading `_`, none listed here, and the two entries the checks
# read. `_template` says the answers are final (cookiecutter and cruft set it after the prompts). Cruft (`cruft
# update`, `cruft diff`) adds `_commit` when it re-renders: the post-generation hook then only vendors files, so git,
# DVC and scikit-learn are not needed.
ANSWERS = {key: value for key, value in CONTEXT.items() if not key.startswith("_")}
ANSWERS["_template"] = CONTEXT.get("_template") or ""
if CONTEXT.get("_commit"):
    ANSWERS["_commit"] = CONTEXT["_commit"]


def main():
    spec = importlib.util.spec_from_file_location("template_answers_of_hook", TEMPLATE_DIR / "template_answers.py")
    answers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(answers)
    try:
        answers.check({"cookiecutter": ANSWERS}, TEMPLATE_DIR)
    except answers.AnswersRefused as refused:
        print(refused, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
