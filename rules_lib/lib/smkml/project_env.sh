#!/bin/sh
# Runs a command with the project's environment first on PATH: .venv/bin when it exists (made by `make env`),
# otherwise PATH as it is. The pre-commit hooks (.pre-commit-config.yaml, `repo: local`, `language: system`) call
# their tools through it, so that `git commit` finds them without the environment being activated.
if [ -x .venv/bin/python ]; then
    PATH="$PWD/.venv/bin:$PATH"
    export PATH
fi
exec "$@"
