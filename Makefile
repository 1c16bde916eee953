# Every target bootstraps .venv itself: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-load soak cluster clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]" -e clients/python
	# pipecat-ai only for its Smart Turn v3.2 weights (models/smart_turn.py): no deps,
	# never imported (its own dependencies are huge)
	$(PY) -m pip install --quiet --no-deps "pipecat-ai==1.14.0"
	touch $(STAMP)

run: $(STAMP)
	$(PY) run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) lint
	$(PY) -m pytest

# N instances (one per core by default) behind a real proxy: `make cluster PROXY=haproxy`
INSTANCES ?= 2
PROXY ?= nginx
cluster: $(STAMP)
	$(PY) deploy/cluster.py --instances $(INSTANCES) --proxy $(PROXY)

bench: $(STAMP)
	$(PY) bench/transport.py
	$(PY) bench/latency.py

# Capacity ramps (~10 min): one process, N behind nginx, transport-only
bench-load: $(STAMP)
	$(PY) bench/load.py --mode pipeline
	$(PY) bench/load.py --mode cluster
	$(PY) bench/load.py --mode transport

# One hour of talking sessions with reconnects, barge-ins and churn: RSS/fd/task slopes
soak: $(STAMP)
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
