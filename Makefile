# Everything on a fresh machine goes through these targets:
#   make bench   set up .venv, build, check every backend against the reference, print the quick benchmark
#   make test    set up .venv, build, run the test suite
#   make lint    ruff (lint and format check) on the Python, clang-format on csrc/
# Knobs: PYTHON (the interpreter that makes .venv), PYKERNELS_CUDA, CUDA_HOME, MAX_JOBS, TORCH,
# TORCHVISION (the release that matches TORCH; open_clip needs it).
PYTHON ?= python3
TORCH ?= torch==2.14.1
TORCHVISION ?= torchvision==0.29.1
# The peers the benchmarks compare with and the tests check against (optional for users).
PEERS ?= diffusers transformers liger-kernel cut-cross-entropy open_clip_torch
# The style tools, pinned so every machine formats alike.
LINTERS ?= ruff==0.17.6 clang-format==23.1.5
VENV := .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2

.PHONY: all setup build test bench info lint clean

all: test

$(VENV)/.deps: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" numpy pytest hypothesis ninja matplotlib tqdm setuptools wheel
	$(PY) -m pip install -q "$(TORCH)" "$(TORCHVISION)" $(PEERS)
	$(PY) -m pip install -q $(LINTERS)
	touch $@

setup: $(VENV)/.deps

# pip builds in a fresh temporary folder each time, so rebuild only when a source changed
# (for quick incremental rebuilds while editing kernels: $(PY) setup.py build_ext --inplace).
$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(shell find csrc -type f)
	$(PY) -m pip install -q -e . --no-build-isolation
	touch $@

build: $(VENV)/.built

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m pykernels bench --quick

info: build
	$(PY) -m pykernels info

CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC)

clean:
	rm -rf build pykernels/_C*.so pykernels/_build_info.py *.egg-info
