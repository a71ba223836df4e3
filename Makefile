# relgraph: `make run` trains on the synthetic default, `make test` runs the suite.
# The virtual environment lives in .venv/. On a CPU-only Linux machine set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA wheel;
# on a GPU machine the default (PyPI's torch, a CUDA build on Linux) is what you want.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_INDEX ?=
RELGRAPH_DATA ?= $(CURDIR)/data
# `make run MODELS=all` trains every model; default: relgraph run's four (README)
MODELS ?=
export RELGRAPH_DATA
export DAGSTER_HOME := $(RELGRAPH_DATA)/dagster

.PHONY: install run test ui bench soak clean

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) -c requirements.lock
	$(PIP) install -q -e '.[test,deploy]' -c requirements.lock
	touch $@

install: $(VENV)/.installed

run: install
	mkdir -p $(DAGSTER_HOME) && cp -f dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/relgraph run --dataset datasets/ecommerce.yaml $(if $(MODELS),--models $(MODELS))

test: install
	$(PY) -m pytest -q

ui: install
	mkdir -p $(DAGSTER_HOME) && cp -f dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/relgraph ui

bench: install
	$(PIP) install -q -r bench/requirements.txt -c requirements.lock
	$(VENV)/bin/relgraph bench

soak: install
	$(PY) -m pytest -q -m soak

clean:
	rm -rf $(VENV)
