# lit-snapvideo: every target installs what it needs on first use (`make help` lists them).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.install-stamp
CLI := HF_HUB_OFFLINE=1 $(VENV)/bin/lit-snapvideo
export HF_HUB_OFFLINE := 1

.DEFAULT_GOAL := help
.PHONY: help install test test-full

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the kit (re-runs only when pyproject.toml/constraints.txt change)

test: $(STAMP) ## the fast CPU test suite (what CI runs)
	$(PY) -m pytest -m "not slow" -q

test-full: $(STAMP) ## every test, the slow ones too
	$(PY) -m pytest -q

# the embedded set; its manifest is written last, so it marks a complete set
SHAPES := data/shapes/manifest.csv
.PHONY: data
data: $(SHAPES) ## generate the embedded moving-shapes set (4000 train + 256 val clips, a few minutes on 2 cores)

$(SHAPES): | $(STAMP)
	$(CLI) data shapes --out $(dir $(SHAPES))
