# flowlearn — `make run` starts the local stack and the demo; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run stop test test-unit test-minicluster test-e2e lint fmt proto bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11"; exit 1; }
	@command -v javac >/dev/null || { echo "error: javac not found: install a JDK 17 (apt-get install -y openjdk-17-jdk-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "error: mvn not found: install Maven (apt-get install -y maven)"; exit 1; }
	@echo "[make] creating $(VENV) and installing flowlearn with its dependencies (a few minutes the first time) ..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: install
	@$(VENV)/bin/flowlearn run

stop: install
	@$(VENV)/bin/flowlearn down

# The import contracts (pyproject.toml [tool.importlinter]) are part of lint: a wrong arrow
# between layers fails CI with the chain of imports that makes it.
lint: install
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check --quiet .
	@$(VENV)/bin/mypy -p flowlearn
	@$(VENV)/bin/lint-imports --no-cache

fmt: install
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

# After an edit of flowlearn/serving/protocol/grpc_predict_v2.proto: regenerate its committed
# Python code (grpcio-tools, the dev extra's).
proto: install
	@$(PY) -m flowlearn.serving.protocol.generate

test-unit: install
	@$(VENV)/bin/pytest -q tests/unit flowlearn

test-minicluster: install
	@$(VENV)/bin/pytest -q -m minicluster tests/minicluster

test-e2e: install
	@$(VENV)/bin/pytest -q -m e2e tests/e2e

# One pytest run, so the closing line counts every test; tiers are markers and folders. The
# package's docstring examples run too (flowlearn: doctests).
test: lint
	@$(VENV)/bin/pytest tests flowlearn

# BENCH_ARGS goes to every benchmark (only --quick is common to all); the per-benchmark
# variables (CORE_ARGS, QUALITY_ARGS, TREES_ARGS, PREDICTOR_ARGS, PIPELINE_ARGS, JOIN_ARGS,
# FRESHNESS_ARGS, STATE_ARGS, MODELS_ARGS, POISONING_ARGS, BANDITS_ARGS, SCALING_ARGS,
# RECOVERY_ARGS, SOAK_ARGS; e.g. PIPELINE_ARGS="--samples 500000", TREES_ARGS="--streams agrawal,phishing")
# to one.
bench: install
	@$(PY) -m pip install -q -e '.[bench]'
	@command -v wrk >/dev/null || { test "$$(id -u)" = 0 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || { echo "error: wrk not found: apt-get install -y wrk"; exit 1; }
	@$(PY) bench/bench_core.py $(BENCH_ARGS) $(CORE_ARGS)
	@$(PY) bench/bench_quality.py $(BENCH_ARGS) $(QUALITY_ARGS)
	@$(PY) bench/bench_trees.py $(BENCH_ARGS) $(TREES_ARGS)
	@$(PY) bench/bench_predictor.py $(BENCH_ARGS) $(PREDICTOR_ARGS)
	@$(PY) bench/bench_pipeline.py $(BENCH_ARGS) $(PIPELINE_ARGS)
	@$(PY) bench/bench_pipeline.py --parallelism 2 --models 4 $(BENCH_ARGS) $(PIPELINE_ARGS)
	@$(PY) bench/bench_join.py $(BENCH_ARGS) $(JOIN_ARGS)
	@$(PY) bench/bench_freshness.py $(BENCH_ARGS) $(FRESHNESS_ARGS)
	@$(PY) bench/bench_state.py $(BENCH_ARGS) $(STATE_ARGS)
	@$(PY) bench/bench_models.py $(BENCH_ARGS) $(MODELS_ARGS)
	@$(PY) bench/bench_poisoning.py $(BENCH_ARGS) $(POISONING_ARGS)
	@$(PY) bench/bench_bandits.py $(BENCH_ARGS) $(BANDITS_ARGS)
	@$(PY) bench/bench_scaling.py $(BENCH_ARGS) $(SCALING_ARGS)
	@$(PY) bench/bench_recovery.py $(BENCH_ARGS) $(RECOVERY_ARGS)
	@$(PY) bench/bench_soak.py $(BENCH_ARGS) $(SOAK_ARGS)

clean:
	rm -rf build *.egg-info .mypy_cache .ruff_cache .pytest_cache
