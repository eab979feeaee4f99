# fedray: `make quickstart` runs the embedded default, `make test` passes the test suite.
# Both create .venv and install what is missing first (CPU-only torch through constraints-cpu.txt).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp

.PHONY: install quickstart test lint format bench-overhead

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints-cpu.txt -e ".[dev]"
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
