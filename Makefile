VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-azure test test-fast bench lint down histories

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tidegate up --detach
	$(PY) -m control.demo

# The same walk-through with deployments on VM scale sets, against the fake ARM, and a VM replaced.
demo-azure: $(STAMP)
	$(PY) -m tests.fakes.arm.demo

# Two processes, each test file whole in one of them (each runs its own stacks on its own ports).
test: lint
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

# The quick loop: lint, then the unit and workflow layers (no gateway, host or end-to-end).
test-fast: lint
	$(VENV)/bin/pytest -q -n 2 --dist loadfile tests/config tests/decisions tests/workflows tests/control tests/worker tests/activities

bench: $(STAMP)
	$(PY) bench/gateway.py

histories: $(STAMP)
	$(PY) -m tests.workflows.record_histories

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

down: $(STAMP)
	$(VENV)/bin/tidegate down
