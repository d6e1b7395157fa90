# Fresh-machine entry points. `make run`: venv + deps + default dataset, then the whole pipeline.
# `make test`: venv + deps, then the test suite. Both are idempotent.

VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: setup dataset run test lint bench clean

PLOTS_TEMPLATE := .dvc/plots_offline.html

setup: $(VENV)/.installed $(PLOTS_TEMPLATE)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import torch, timm, webdataset, dvc, prefect, optuna, great_expectations, gto, dvclive, vl_convert, transformers"
	touch $@

# the offline page of `dvc plots show` (vega bundle inlined; .dvc/config plots.html_template; gitignored)
$(PLOTS_TEMPLATE): $(VENV)/.installed
	$(BIN)/ijepa plots-template

dataset:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

run: setup dataset
	dvc repro
	@sed -n '/^## Results/,/^## Intended/p' registry/model_card.md | sed '$$d'
	@echo "headline metrics: dvc metrics show; plots: dvc plots show; model card: registry/model_card.md"

test: setup
	pytest

lint: setup
	ruff check . && ruff format --check .

bench: setup dataset
	python bench/shard.py
	python bench/train_step.py

clean:
	rm -rf $(VENV) .prefect .optuna
