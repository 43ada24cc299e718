# The two commands of the README: `make run` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test check lint format system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all]"
	touch $@

setup: $(VENV)/.installed

# Open napari with the plugin's widgets docked on the bundled sample CT
# (prints how to run headless where there is no display).
run: setup
	$(PY) -m napari_vertebra.launch $(ARGS)

# System packages that napari's canvas needs under Xvfb (Debian/Ubuntu, as root).
system-deps:
	@bash scripts/system-deps.sh

test: setup system-deps
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(ARGS)

# The everyday inner loop: ruff, then the tests not marked slow (a few minutes).
check: setup system-deps
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow" -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
