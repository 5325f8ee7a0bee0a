# Two commands on a fresh machine: `make demo` and `make test`.
# Everything installs into .venv from the pinned lock file (requirements.lock).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed-stamp
UV_VERSION := 0.13.8

.PHONY: demo test test-fast bench bench-quick kernel lab lock notebooks-sync lint clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(UV) pip sync --quiet --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)  ## simulate a small bank, validate it, build the customer view
	$(VENV)/bin/nextoffer demo

test: $(STAMP)  ## the whole test suite, notebooks included (small data)
	$(PY) -m pytest

test-fast: $(STAMP)  ## the suite without the tests marked slow (notebooks, CLI end to end, load)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)  ## benchmarks at full size; JSON under benchmarks/results/
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)  ## the same benchmarks at a small size, to check they run
	$(PY) -m benchmarks.run --customers 2000 --days 60 --detection-events 200000 \
		--serving-store-rows 20000 --serving-duration 3 --soak-seconds 0 \
		--only simulator customer_view detection serving_shared --out /tmp/nextoffer-bench-quick

# `make lab LAB_IP=0.0.0.0` in a container; as root (id -u = 0) jupyter needs --allow-root.
LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
LAB_ARGS ?=
KERNEL_NAME ?= nextoffer
LAB_ROOT = $(if $(filter 0,$(shell id -u)),--allow-root)

kernel: $(STAMP)  ## register this venv as the Jupyter kernel "nextoffer" (JupyterHub, VS Code)
	$(PY) -m ipykernel install --user --name $(KERNEL_NAME) --display-name "Python (nextoffer)"

lab: kernel  ## JupyterLab on the notebooks (LAB_IP, LAB_PORT, LAB_ARGS)
	$(VENV)/bin/jupyter lab notebooks/ --ip=$(LAB_IP) --port=$(LAB_PORT) $(LAB_ROOT) $(LAB_ARGS)

lock: $(STAMP)  ## re-pin requirements.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --extra dev --extra spark --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu -o requirements.lock

notebooks-sync: $(STAMP)  ## regenerate .ipynb from the paired py:percent files
	$(VENV)/bin/jupytext --sync notebooks/*.py

lint: $(STAMP)  ## ruff, the formatter's check and the import contracts (pyproject.toml)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) data/raw data/truth data/features data/rejects reports
