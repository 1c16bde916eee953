# Every target bootstraps .venv itself: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-swift system-deps lint bench bench-load soak cluster clean

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

# System packages some tests use (Chromium, nginx, HAProxy, espeak-ng): installed when
# root with apt-get, else named once here and their tests skip with one line each
# (tests/tools.py); under CI=true nothing may be missing.
system-deps:
	@.ci/system-deps

test: system-deps $(STAMP) lint
	$(PY) -m pytest
	@$(MAKE) --no-print-directory test-swift

# The Swift client (clients/swift): swift build, then its unit tests and its integration
# tests against run.py from this .venv (~1-2 min). Uses `swift` from PATH, else
# /opt/swift/usr/bin/swift; without either it says so and passes, except under CI=true.
SWIFT ?= $(or $(shell command -v swift 2>/dev/null),$(wildcard /opt/swift/usr/bin/swift))
SWIFT_PACKAGE := clients/swift
SWIFT_BUILD_FLAGS ?= -Xswiftc -warnings-as-errors
test-swift: $(STAMP)
ifeq ($(strip $(SWIFT)),)
	@if [ "$$CI" = "true" ]; then \
		echo "test-swift: no swift on PATH or at /opt/swift/usr/bin (CI=true: failing)" >&2; exit 1; fi
	@echo "Swift tests skipped: no swift on PATH or at /opt/swift/usr/bin (install a Swift 6 toolchain there, or add its bin to PATH, then: make test-swift)"
else
	$(SWIFT) build --package-path $(SWIFT_PACKAGE) --build-tests $(SWIFT_BUILD_FLAGS)
	timeout -k 10 480 $(SWIFT) test --package-path $(SWIFT_PACKAGE) --skip-build
endif

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
