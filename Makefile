# dicom-node: `make run` sets up and starts the node; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test setup system-deps viewer-deps bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

# The OHIF web viewer (npm package @ohif/app, prebuilt) for tests/viewer/, cached in .cache/ohif/.
viewer-deps: system-deps
	bash scripts/fetch-ohif.sh

run: setup
	$(VENV)/bin/dicom-node --config config.toml serve

test: setup system-deps viewer-deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup system-deps
	$(PY) -m bench.receive
	$(PY) -m bench.analyze

lint: setup
	$(VENV)/bin/ruff check dicom_node ai_models storage tests bench
	$(VENV)/bin/mypy dicom_node storage ai_models

clean:
	rm -rf var .pytest_cache test-artifacts
