# fedray: `make quickstart` runs the embedded default, `make test` passes the test suite.
# Both create .venv and install what is missing first: every package at the exact version and hash in
# lock-cpu.txt (CPU-only torch), then fedray itself. `make lock` refreshes the lock; `make test-latest` runs
# the suite against the newest releases pyproject.toml allows, in .venv-latest.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp
LOCK := lock-cpu.txt
LATEST_VENV := .venv-latest
LOCK_VENV := .venv-lock
PIP_TOOLS := pip-tools==7.6.2

.PHONY: install quickstart test lint format bench-overhead lock test-latest

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(VENV)/bin/pip install -q --no-deps -e .
	$(VENV)/bin/pip check
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(VENV)/bin/fedray run configs/quickstart.yaml

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench-overhead: install
	$(VENV)/bin/python benchmarks/overhead.py

# Resolve pyproject.toml's ranges (every extra of `dev`, CPU torch through constraints-cpu.txt) to the newest
# versions today, with the sha256 of every file, into lock-cpu.txt. Needs the package index (~5 min).
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q $(PIP_TOOLS)
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe --strip-extras \
	  --extra dev --constraint constraints-cpu.txt --no-emit-index-url --no-emit-find-links \
	  --output-file $(LOCK).new pyproject.toml
	{ echo "# locked on $$(date -u +%Y-%m-%d) by \`make lock\` (Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'), $$(uname -m))"; \
	  grep -v '^# locked on ' $(LOCK).new; } > $(LOCK)
	rm -f $(LOCK).new

# The suite against the newest releases the ranges allow (torch stays the CPU build of constraints-cpu.txt),
# in a venv made anew each time; prints what differs from the lock before the tests (docs/dependencies.md).
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q --upgrade --upgrade-strategy eager -c constraints-cpu.txt -e ".[dev]"
	$(LATEST_VENV)/bin/python tools/drift.py $(LOCK)
	$(LATEST_VENV)/bin/pytest -q -p no:cacheprovider
