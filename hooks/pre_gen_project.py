"""Validate every answer before anything is written (a second time).

The checks are template_answers.py's, the module cookiecutter loads as a Jinja extension: it already refused bad
answers before the project directory was created and before any answer was rendered. This hook runs the same checks
on the answers as rendered into it, for a renderer that did not load the extension. On a bad answer it prints one
`ERROR:` line per problem, naming the value and what is allowed, and exits 1.
"""

import importlib.util
import sys
from pathlib import Path

# The template checkout this hook was rendered from (local_extensions.py).
TEMPLATE_DIR = Path({{ template_path() | quote }})
ANSWERS = {
    "project_name": {{ cookiecutter.project_name | quote }},
    "project_slug": {{ cookiecutter.project_slug | quote }},
    "package_name": {{ cookiecutter.package_name | quote }},
    "author_name": {{ cookiecutter.author_name | quote }},
    "author_email": {{ cookiecutter.author_email | quote }},
    "description": {{ cookiecutter.description | quote }},
    "training_backend": {{ cookiecutter.training_backend | quote }},
    "cluster": {{ cookiecutter.cluster | quote }},
    "slurm_account": {{ cookiecutter.slurm_account | quote }},
    "dvc_remote": {{ cookiecutter.dvc_remote | quote }},
    "dvc_remote_url": {{ cookiecutter.dvc_remote_url | quote }},
    "license": {{ cookiecutter.license | quote }},
    # The answers are final here (the key cookiecutter and cruft set after the prompts); cruft (`cruft update`,
    # `cruft diff`) adds _commit when it re-renders: the post-generation hook then only vendors files, so git, DVC
    # and scikit-learn are not needed.
    "_template": {{ cookiecutter._template | default("") | quote }},
    **({"_commit": {{ cookiecutter._commit | default("") | tojson }}} if {{ cookiecutter._commit | default("") | tojson }} else {}),
}


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
