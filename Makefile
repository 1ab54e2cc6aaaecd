# Adversarial attacks on medical image classifiers: build the book and run the tests.
#
#   make book [SCALE=smoke|cpu|gpu|paper]   execute the chapters and build book/_build/html
#   make test                               run the test suite
#   make regress [SCALE=smoke]              the chapters' numbers against the references, as a table
#   make rehearse SCALE=gpu|paper           every chapter on the scale's code paths, tiny budgets, on a CPU
#   make help                               list all targets
#
# Needs only Python >= 3.11 (set PYTHON=... to pick one); the first run creates .venv.

SHELL  := /bin/bash
PYTHON ?= python3
SCALE  ?= smoke
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Optional local data folders, used when present (absolute: the chapters run from chapters/).
MEDMNIST_DIR       ?= $(abspath $(wildcard ../shared/data/medmnist))
NATURAL_IMAGES_DIR ?= $(abspath $(wildcard ../shared/data/natural/imagenet-sample-images))
ifneq ($(strip $(MEDMNIST_DIR)),)
export MEDMNIST_DIR
endif
ifneq ($(strip $(NATURAL_IMAGES_DIR)),)
export NATURAL_IMAGES_DIR
endif

# Where `make rehearse` writes its chapters and cache (rehearsal models never mix with the real ones).
REHEARSAL_DIR ?= $(abspath build/rehearsal-$(SCALE))

export TF_CPP_MIN_LOG_LEVEL := 2
export MPLBACKEND := Agg

.PHONY: help book test rehearse regress references clean strip venv

help:  ## list the targets
	@echo "Targets (variables: SCALE=$(SCALE), PYTHON=$(PYTHON)):"
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /  make \1\t/'

book: $(STAMP)  ## execute the chapters at SCALE and build the HTML book
	$(PY) -m helpers.tools.pipeline --scale $(SCALE)

test: $(STAMP)  ## run the test suite
	$(PY) -m pytest -q --durations=15

rehearse: $(STAMP)  ## execute every chapter with SCALE's code paths, tiny budgets, random weights, synthetic data
	COURSE_CACHE_DIR=$(REHEARSAL_DIR)/cache $(PY) -m helpers.tools.pipeline --scale $(SCALE) --rehearsal --no-build \
	  --jobs 2 --book-dir $(REHEARSAL_DIR)/book
	$(PY) -m helpers.timing --check $(REHEARSAL_DIR)/book/chapters --scale $(SCALE)

regress: $(STAMP)  ## execute the chapters at SCALE from scratch and print their numbers against the references
	$(PY) -m helpers.tools.regression report --scale $(SCALE)

references: $(STAMP)  ## measure the seed spread (5 seeds, with and without local data), re-derive the references
	$(PY) -m helpers.tools.regression derive --scale $(SCALE) --seeds 0 1 2 3 4
	$(PY) -m helpers.tools.regression derive --scale $(SCALE) --seeds 0 1 2 3 4 --no-local-data
	$(PY) -m helpers.tools.regression references --scale $(SCALE)

clean:  ## remove the built book, executed chapters and rehearsals (keeps the model cache)
	rm -rf book/_build book/chapters build

strip: $(STAMP)  ## clear outputs and execution counts from chapters/*.ipynb
	$(PY) -c 'from helpers.tools.pipeline import strip_notebooks; [print("stripped", p) for p in strip_notebooks()]'

venv: $(STAMP)  ## create .venv and install the course's requirements

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: Python >= 3.11 is required, but '$(PYTHON)' is: $$($(PYTHON) --version 2>/dev/null || echo 'not found')." >&2; \
	  echo "       Install it, or point make at one, e.g. 'make $(MAKECMDGOALS) PYTHON=python3.12'." >&2; \
	  exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $@
