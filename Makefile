VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint down histories

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tidegate up --detach
	$(PY) -m control.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) bench/gateway.py

histories: $(STAMP)
	$(PY) -m tests.workflows.record_histories

lint: $(STAMP)
	$(VENV)/bin/ruff check .

down: $(STAMP)
	$(VENV)/bin/tidegate down
