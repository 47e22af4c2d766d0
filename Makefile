# cookiecutter-snakemake-ml. Two commands on a fresh machine:
#   make demo   create the environment, generate the demo project, run its whole pipeline locally
#   make test   run the template's test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
DEMO_DIR ?= build/demo
DEMO_PROJECT := $(DEMO_DIR)/digits-classifier
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test env system-deps docs bench bench-slurm bench-sweep bench-sweep-overhead bench-setup reliability-table clean

# A previous demo (its project, results and MLflow store) is kept: moved aside to $(DEMO_DIR)-previous-<time>.
demo: env
	@if [ -e $(DEMO_DIR) ]; then \
	  backup=$(DEMO_DIR)-previous-$$(date +%Y%m%d-%H%M%S); \
	  echo "make demo: keeping the previous demo: moving $(DEMO_DIR) (project, results, MLflow store $(DEMO_PROJECT)/mlflow.db and mlruns/) to $$backup (make clean removes it)"; \
	  mv $(DEMO_DIR) $$backup; \
	fi
	mkdir -p $(DEMO_DIR)
	cookiecutter --no-input --output-dir $(DEMO_DIR) $(CURDIR)
	$(MAKE) --no-print-directory -C $(DEMO_PROJECT) run

# Two pytest-xdist workers by default (CI has 2 cores; the suite waits on Slurm and downloads much of the time);
# tests/scheduling.py keeps the mini-LUMI tests and each module's shared fixtures on one worker. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
test: env
	python -m pytest --durations=40 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

env: $(STAMP)

# The environment is installed by the same script as a generated project's (uv, else pip; INSTALLER=pip: pip only).
$(STAMP): requirements/dev.txt {{cookiecutter.project_slug}}/requirements.lock containers/horovod/build-horovod.sh rules_lib/lib/smkml/install_env.py
	$(MAKE) --no-print-directory system-deps
	$(PYTHON) rules_lib/lib/smkml/install_env.py --venv $(VENV) -r requirements/dev.txt
	bash containers/horovod/build-horovod.sh --python $(VENV)/bin/python
	touch $@

# Debian packages the environment needs: a C++ toolchain and MPI for Horovod, git for generated projects.
SYSTEM_TOOLS := g++:g++ cmake:cmake mpicxx:libopenmpi-dev mpirun:openmpi-bin git:git
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "error: install these system packages first:$$missing" >&2; exit 1; fi; \
	fi

docs: env
	mkdocs build --strict

bench: env
	python benchmarks/pipeline.py

# The same pipeline on the test suite's mini-LUMI Slurm cluster: snakemake --profile profiles/lumi against one
# sbatch script (starts the cluster; needs root).
bench-slurm: env
	python benchmarks/slurm_pipeline.py

# Sweeps at scale: Snakemake's dry run for 1 000 and 10 000 members under the lumi profile, and the Slurm jobs they
# become (counted from the dry run; no cluster needed).
bench-sweep: env
	python benchmarks/sweep_dag.py

# A sweep's time per member against training the same members one by one with the single-run pipeline (local profile).
bench-sweep-overhead: env
	python benchmarks/sweep_overhead.py

# A new user's set-up time: `make demo` in a fresh clone with empty caches, with uv and with pip, phase by phase
# (about 16 min on 2 cores; the machine should be otherwise idle).
bench-setup: env
	python benchmarks/setup_time.py

# docs/reliability.md from the tests' reliability markers (tests/reliability.py).
reliability-table: env
	python -m pytest --collect-only -q --reliability-table=docs/reliability.md >/dev/null

clean:
	rm -rf build site
