# dicom-node: `make run` sets up and starts the node; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Where torch and torchvision come from. Empty (the default): PyPI's build, which on
# Linux x86-64 is the CUDA one (several GB). Set it to install them from that index
# first, e.g. the CPU-only build on a machine without an NVIDIA GPU:
#   make run TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
CPU_TORCH_INDEX_URL := https://download.pytorch.org/whl/cpu

.PHONY: run test test-fast setup torch-info system-deps viewer-deps bench lint conformance clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel
ifneq ($(strip $(TORCH_INDEX_URL)),)
	$(PY) -m pip install --quiet --index-url '$(TORCH_INDEX_URL)' 'torch>=2.4' 'torchvision>=0.19'
endif
	$(PY) -m pip install --quiet -e '.[dev]'
	@$(MAKE) --no-print-directory torch-info GOAL='$(or $(firstword $(MAKECMDGOALS)),run)'
	touch $(STAMP)

setup: $(STAMP)

# Which torch build the environment has, and whether this machine can use CUDA with it.
torch-info:
	@$(PY) -c 'import torch; c = torch.version.cuda; \
	print("torch", torch.__version__, "-", f"CUDA {c} build" if c else "CPU-only build", \
	"- CUDA usable here:", "yes" if torch.cuda.is_available() else "no")'
	@if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidia0 ] \
	    && $(PY) -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then \
	    echo "No NVIDIA GPU here: the node runs on the CPU, and most of $(VENV)" \
	        "($$(du -sh $(VENV) | cut -f1)) is CUDA libraries it does not use. For the CPU-only build:"; \
	    echo "  rm -rf $(VENV) && make $(or $(GOAL),run) TORCH_INDEX_URL=$(CPU_TORCH_INDEX_URL)"; \
	fi

system-deps:
	bash scripts/install-system-deps.sh

# The OHIF web viewer (npm package @ohif/app, prebuilt) for tests/viewer/, cached in .cache/ohif/.
viewer-deps: system-deps
	bash scripts/fetch-ohif.sh

run: setup
	$(VENV)/bin/dicom-node --config config.toml serve

test: setup system-deps viewer-deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The unit and fast integration tests (no DCMTK, Orthanc or browser): a few minutes.
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup system-deps
	$(PY) -m bench.receive
	$(PY) -m bench.analyze

# docs/conformance.md, the DICOM Conformance Statement, written from the code
# (tests/node/test_conformance.py fails when it is stale).
conformance: setup
	$(PY) -m dicom_node.conformance

lint: setup
	$(VENV)/bin/ruff check dicom_node ai_models storage tests bench
	$(VENV)/bin/mypy dicom_node storage ai_models

clean:
	rm -rf var .pytest_cache test-artifacts
