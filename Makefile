# The two commands a new user runs: `make demo` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/cm3leon
STAMP := $(VENV)/.installed
# The CPU wheel of torch that this project is tested with; GPU users install their own torch first.
TORCH_PIN ?= torch==2.13.0

.PHONY: install test test-fast demo bench lint protos clean

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	# The client distribution first: the project depends on it (cm3leon-client is not on an index).
	$(PY) -m pip install --quiet -e clients/python
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# One intra-op thread: the suite is dominated by tiny models, for which extra threads only add spin-waiting, and
# the DDP and torchrun tests start several processes on a 2-core machine.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# The fast lane: every test but those marked slow (real stacks, several processes, torchrun, longer training).
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow"

# The VQ round trip of shapes scenes, then the whole stack (Redis, S3, Qdrant, gateway, a worker) with the shipped
# models/shapes: one job of every kind the model declares, through gRPC; outputs and grids under out/demo/.
demo: $(STAMP)
	$(CLI) demo --out out/demo
	$(CLI) stack demo --model models/shapes --out out/demo

bench: $(STAMP)
	$(CLI) bench all --out bench/results
	$(CLI) bench chaos --out bench/results
	$(CLI) bench fuzz --n 20000 --out bench/results --model models/shapes
	$(CLI) bench stack --out bench/results --model models/shapes

# Style (ruff) and the direction of imports (import-linter: the contracts in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check cm3leon cm3leon_cli cm3leon_stack services worker clients tests experiments
	$(VENV)/bin/lint-imports

# Regenerate the gRPC stubs in clients/python/cm3leon_client/api from protos/ (a test fails when they are stale).
protos: $(STAMP)
	$(PY) -m services.protos

clean:
	rm -rf out .pytest_cache

# The stack in containers, for users who have Docker (docker-compose.yml, docs/deploy.md). Secrets come from .env
# (copy .env.example); CPU=1 runs the worker without a GPU (deploy/compose.cpu.yml).
COMPOSE ?= docker compose
COMPOSE_FILES := -f docker-compose.yml $(if $(CPU),-f deploy/compose.cpu.yml)

.PHONY: up down

up:
	@test -f .env || { echo "no .env: cp .env.example .env, then set every change-me value"; exit 1; }
	$(COMPOSE) $(COMPOSE_FILES) up --build --detach --wait

down:
	$(COMPOSE) $(COMPOSE_FILES) down
