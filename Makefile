# DeepFood Serverless. `make demo` runs the whole pipeline locally; `make test` installs and tests everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := data/sample
CKPT := checkpoints/demo
ART := artifacts
PORT ?= 8000
# The demo trains briefly at full resolution on the synthetic sample set; override for longer runs.
DEMO_TRAIN_ARGS ?= --head-epochs 1 --epochs 2 --batch-size 32 --workers 2 --weights auto
# int8 is ~5x faster on x86 CPUs at the same retrieval quality (docs/benchmarks.md); EXPORT_ARGS= for fp32.
EXPORT_ARGS ?= --int8

.PHONY: help install demo serve add-photo test test-avx2 lint format browser node bench docs lock audit clean

help:
	@echo "make demo   - sample data -> train -> export -> index -> local server on http://127.0.0.1:$(PORT)"
	@echo "make test   - install everything the tests need (venv, npm CLI, Chromium) and run lint + pytest"
	@echo "make bench  - benchmarks under bench/ (see docs/benchmarks.md)"
	@echo "make docs   - regenerate the configuration table in docs/configuration.md from Settings"
	@echo "make add-photo PHOTO=dish.jpg LABEL=ramen - add a photo to the demo collection; a running demo finds it"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

node: node_modules/.installed

# Debian's Chromium drives the browser tests (playwright's own browser downloads are not used).
browser:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "chromium is missing: run 'sudo apt-get install -y chromium' (browser tests fail without it under CI=true)"; fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile.lambda

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# int8 kernels and their numerics differ between AVX-512 VNNI and AVX2 (all Lambda promises): the tests marked
# `isa` run again with the kernels capped at AVX2, so a machine with AVX-512 also catches what AVX2 breaks.
test: install node browser lint
	$(VENV)/bin/python -m pytest
	$(MAKE) --no-print-directory test-avx2

test-avx2: install
	env $$($(PY) -m support.isa) $(PY) -m pytest -m isa -p no:cacheprovider

$(DATA)/README.txt: | install
	$(PY) -m training.sample_data $(DATA)

$(CKPT)/best.pt: $(DATA)/README.txt
	$(PY) -m training.train --data $(DATA) --output-dir $(CKPT) $(DEMO_TRAIN_ARGS)

$(ART)/model.pt: $(CKPT)/best.pt
	$(PY) -m training.export --checkpoint $(CKPT)/best.pt --out $(ART)/model.pt $(EXPORT_ARGS)

$(ART)/manifest.json: $(ART)/model.pt
	$(PY) -m training.build_index --images $(DATA) --model $(ART)/model.pt --out $(ART) --save-embeddings
	$(PY) -m training.evaluate --artifacts $(ART) --images $(DATA)

demo: $(ART)/manifest.json
	$(PY) -m lambda_fn.search.local --artifacts $(ART) --images $(DATA) --port $(PORT) --eager

serve: install
	$(PY) -m lambda_fn.search.local --artifacts $(ART) --images $(DATA) --port $(PORT)

# Embeds the photo with the live model and publishes a new build into $(ART); `make demo` picks it up live.
add-photo: install
	@test -n "$(PHOTO)" || { echo "usage: make add-photo PHOTO=path/to/dish.jpg LABEL=ramen"; exit 2; }
	$(PY) -m ops.collection --artifacts $(ART) --images $(DATA) add "$(PHOTO)" $(if $(LABEL),--label "$(LABEL)")

bench: install
	$(PY) -m bench.run

# The configuration table in docs/configuration.md is generated from lambda_fn/contract/config.py's Settings.
docs: install
	$(PY) -m lambda_fn.contract.settings_table docs/configuration.md

# The Lambda image's requirements, resolved for its Python (3.12, x86-64 Linux) from pyproject.toml's runtime
# dependencies, every file pinned by sha256. torch itself, and the CUDA packages only PyPI's GPU build of
# torch pulls in, are left out: the image installs the CPU build of torch from PyTorch's own index.
LOCK_TARGET := --python-version 3.12 --python-platform x86_64-manylinux_2_28
lock: install
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_TARGET) --quiet --no-header \
	  | grep -oE '^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' | tr -d '=' > .lock-exclude
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_TARGET) --generate-hashes --quiet \
	  --custom-compile-command "make lock" $$(sed 's/^/--no-emit-package /' .lock-exclude) -o lambda_fn/requirements.txt
	rm -f .lock-exclude

audit: install
	$(PY) .ci/audit.py

clean:
	rm -rf $(ART) $(CKPT) $(DATA) cdk.out test-output
