# mlscale: `make demo` runs the main job, `make test` runs the tests. `make help` lists all.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help install models serve demo test lint bench clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "mlscale needs Python 3.11+; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## Create .venv with mlscale and its dev tools (pinned in pyproject.toml)

models: install ## Train versions 1 and 2 of the example models into models/ (idempotent)
	$(BIN)/mlscale train --ensure 2

serve: models ## Serve a model on :8080 (MODEL=iris|linear|multilinear, VERSION=latest)
	$(BIN)/mlscale serve --model $(or $(MODEL),iris) --version $(or $(VERSION),latest)

demo: install ## The main job: train, serve, predict over HTTP, print
	BIN=$(BIN) scripts/demo-local.sh

lint: install ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint ## Lint, then every test (Docker/cluster tests skip with a reason where unavailable)
	$(BIN)/python -m pytest

bench: install ## Throughput and latency against a naive app and the floor (needs wrk, taskset)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || { echo "install wrk: sudo apt-get install wrk"; exit 1; }
	$(BIN)/python -m bench.run

clean: ## Remove the venv, trained models and results
	rm -rf $(VENV) models reports bench/results .pytest_cache .ruff_cache
