"""Cookiecutter's local Jinja extension of this template (named in cookiecutter.json `_extensions`).

`{{ template_path() }}` is the template checkout a hook is rendered from: cookiecutter (and cruft, which calls
cookiecutter's generate_files) render every hook with the template directory as the working directory, whether
the template was given as a relative path, an absolute path or a git URL (then it is the clone). The hooks read
the template's own files from there: the choices in cookiecutter.json, the cluster descriptions in profiles/, and
the shared trees they vendor into the project.
"""

import os

from jinja2.ext import Extension


class TemplatePath(Extension):
    def __init__(self, environment):
        super().__init__(environment)
        # Looked up at render time, not import time: Python keeps this module once per process, while one process
        # may render several template checkouts (tests, cruft's before/after renders).
        environment.globals["template_path"] = os.getcwd
