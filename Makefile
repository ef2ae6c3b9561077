# Developer commands. The same commands run locally and in CI (.ci/run calls `make test`).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip
STAMP := $(VENV)/.installed
# PyTorch from PyPI: its Linux build runs on the CPU and uses CUDA where there is a GPU.
TORCH ?= torch==2.13.0

.DEFAULT_GOAL := help

help: ## list every developer command
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# pip on these machines warns about every configured local index it cannot find; keep the errors only.
QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }; test $${PIPESTATUS[0]} -eq 0

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing into $(VENV) (first time: a minute or two)"
	@$(PIP) install -q --upgrade pip $(QUIET)
	@$(PIP) install -q "$(TORCH)" $(QUIET)
	@$(PIP) install -q -e ".[dev]" $(QUIET)
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install the package with its dev dependencies (idempotent)

kafka: venv ## fetch Apache Kafka's broker jars from Maven Central, once (needs Java 17+ and Maven; INTENTSTREAM_KAFKA_HOME)
	@$(VENV)/bin/intentstream broker install

tools: venv ## install what the tests use where possible (promtool, hadolint, kubernetes-validate, docker-compose, chromium + its driver)
	@bash scripts/install-tools.sh

demo: kafka ## run the demo: a local Kafka broker, worker, simulator, live signals (Ctrl-C, or DEMO_SECONDS=N, stops it)
	$(VENV)/bin/intentstream demo $(if $(DEMO_SECONDS),--seconds $(DEMO_SECONDS),)

test: kafka tools ## run the whole test suite (unit, stream, integration on a real Kafka, deploy checks)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv ## run the unit tests only
	$(PY) -m pytest -q -m "not integration and not slow" tests/unit $(PYTEST_ARGS)

bench: kafka ## benchmarks on a local Kafka broker: throughput, latency, memory vs baselines (BENCH_ARGS=...; docs/BENCHMARKS.md)
	$(VENV)/bin/intentstream bench all $(BENCH_ARGS)

lint: venv ## ruff over the code
	$(VENV)/bin/ruff check stream models tests benchmarks

worker: kafka ## run one worker (a local Kafka broker unless KAFKA_BOOTSTRAP_SERVERS is set)
	$(VENV)/bin/intentstream worker

clean: ## remove local state (.intentstream) and caches, keep .venv
	rm -rf .intentstream .pytest_cache .ruff_cache .hypothesis build *.egg-info

.PHONY: help venv kafka tools demo test test-fast bench lint worker clean
