{{ (cookiecutter.project_name ~ ": " ~ cookiecutter.description) | quote }}

__version__ = "0.1.0"
