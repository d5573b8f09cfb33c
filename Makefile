# cdrflow — make install | run | test | test-unit | coverage | lint | schemas | bench | bench-compare | profile | tools-check
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
export CDRFLOW_SOURCES ?= deploy/sources.dev.toml

.PHONY: install tools run test test-unit lint format bench profile clean

install: $(VENV)/.installed

# Tools from Debian the tests and checks drive: wrk (the benchmark, its smoke test, the fault
# suites), java (the JDK client test of raw request lines), promtool (deploy-check), chromium
# (the console's browser test, driven by Playwright: no browser download works here). kubectl
# and hadolint are pinned in deploy/.tools by deploy/check.sh (PyPI wheels that ship them).
tools:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq default-jre-headless)
	@command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Migrate, then run the ingress, WORKERS workers (two: what a 2-core host with RabbitMQ
# and PostgreSQL beside it does best, docs/operations.md "Scaling") and the reconciler until
# Ctrl-C; all stop gracefully. The reconciler reconciles the sources that have a reconcile
# table (docs/reconciliation.md); with none, as in deploy/sources.dev.toml, it says so and
# idles. A process that fails (a wrong sources file, a port in use) stops the others and
# `make run` with its exit status; each exits 0 only when told to stop (130, 143: by Ctrl-C
# or SIGTERM, as is `make run` itself). bash: `wait -n`.
WORKERS ?= 2
run: SHELL := /bin/bash
run: install
	$(BIN)/cdrflow migrate
	@pids=; trap 'kill -TERM $$pids 2>/dev/null; wait' INT TERM; \
	for _ in $$(seq $(WORKERS)); do $(BIN)/cdrflow worker & pids="$$pids $$!"; done; \
	$(BIN)/cdrflow reconciler & pids="$$pids $$!"; \
	$(BIN)/cdrflow ingress --host $(HOST) --port $(PORT) & pids="$$pids $$!"; \
	wait -n; status=$$?; kill -TERM $$pids 2>/dev/null; wait; \
	if [ $$status -ne 0 ] && [ $$status -ne 130 ] && [ $$status -ne 143 ]; then \
	  echo "make run: a process failed (exit $$status); the others were stopped" >&2; \
	  exit $$status; fi

# Every test, against the real RabbitMQ and PostgreSQL, on TEST_WORKERS pytest-xdist
# workers: most tests wait on sockets, processes and the services, so four workers keep two
# cores busy (docs/testing.md, "How the suite runs"). TEST_WORKERS=0 runs it in this one
# process.
TEST_WORKERS ?= 4
PYTEST_PARALLEL = $(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal
test: install tools
	$(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The same run with coverage, of the `cdrflow` commands the tests start too. Kept out of
# `make test` because tracing every line makes the suite about 1.6 times as long.
.PHONY: coverage
coverage: install tools
	$(PYTEST_PARALLEL) --cov --cov-report=term $(PYTEST_ARGS)

# The pure tests only: seconds, and neither RabbitMQ nor PostgreSQL needed.
test-unit: install
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The parts of schemas/call_record.schema.json, asyncapi.yaml and openapi.yaml that name the
# providers (enums, routing keys, answers), written from the provider registry; the rest of
# each file is hand-written and left as it is (docs/providers.md, "Adding a provider").
.PHONY: schemas
schemas: install
	$(BIN)/python -m cdrflow.operations.schema_files

# One table of the pipeline against the same-run limits of this machine (docs/benchmarks.md):
# 8 to 13 minutes; BENCH_ARGS=--full adds a 1,000,000-message backlog (12 to 20). Then the
# reconciler over a day of 100,000 provider records, and the console's pages over 1,000,000
# records (a few minutes more).
bench: install tools
	$(BIN)/python -m tools.bench $(BENCH_ARGS)
	$(BIN)/python -m tools.bench.reconcile
	$(BIN)/python -m tools.bench.console_pages

# This tree's end-to-end row against BASE's (a git revision), alternating on this machine in
# one run (docs/benchmarks.md): make bench-compare BASE=<revision> [COMPARE_ARGS="--rounds 10"].
.PHONY: bench-compare
bench-compare: install tools
	$(if $(BASE),,$(error name the revision to compare with: make bench-compare BASE=<revision>))
	$(BIN)/python -m tools.bench.compare --base $(BASE) $(COMPARE_ARGS)

# `cdrflow reconcile` over a day of 100,000 records in a local NXCloud voice-record query
# (docs/reconciliation.md): its own time, CPU and peak RSS against the provider's rate.
.PHONY: bench-reconcile
bench-reconcile: install
	$(BIN)/python -m tools.bench.reconcile $(BENCH_ARGS)

# Where one process's CPU goes under the bench's load (py-spy, docs/benchmarks.md): a worker
# draining a backlog, or PROFILE_ARGS=ingress; the collapsed stacks are left in profile.raw.
profile: install tools
	$(BIN)/python -m tools.bench.profile $(PROFILE_ARGS)

# The pins with hashes, from pyproject.toml at the versions of constraints.txt:
# requirements/runtime.txt (the image installs it with --require-hashes) and
# requirements/dev.txt (the tools too). Run after adding a dependency to pyproject.toml and
# constraints.txt; deploy-check fails until then. pip-tools asks PyPI for every file's hash.
PIP_TOOLS := pip-tools==7.6.2
PIN_ARGS := --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	--no-emit-find-links --constraint constraints.txt
.PHONY: pins
pins:
	$(PYTHON) -m venv .venv-pins
	.venv-pins/bin/python -m pip install --quiet $(PIP_TOOLS)
	CUSTOM_COMPILE_COMMAND="make pins" .venv-pins/bin/pip-compile $(PIN_ARGS) \
		--output-file requirements/runtime.txt pyproject.toml
	CUSTOM_COMPILE_COMMAND="make pins" .venv-pins/bin/pip-compile $(PIN_ARGS) --extra dev \
		--output-file requirements/dev.txt pyproject.toml

# deploy/ without a container engine: overlays, compose, Dockerfile, alert rules, units.
.PHONY: deploy-check
deploy-check: install tools
	bash deploy/check.sh

# The fault suite (docs/testing.md): its own RabbitMQ node (5701) and PostgreSQL
# (5433), wrk load, six faults one at a time, a table; exit 1 if a success is lost.
.PHONY: chaos
chaos: install tools
	$(BIN)/python -m tools.chaos.run $(CHAOS_ARGS)

# The tools' own smoke runs (tools/checks/): the bench fills every row of its table, the
# profile samples a draining worker. They test the tools, not cdrflow, so `make test` leaves
# them out; CI runs them (.ci/run). About two minutes.
.PHONY: tools-check
tools-check: install tools
	$(BIN)/pytest tools/checks $(PYTEST_ARGS)

# A three-node RabbitMQ cluster of its own (deploy/cluster/rabbitmq-cluster.sh) loses the node
# leading cdr.raw under wrk load: nothing answered 200 may be lost (docs/testing.md).
.PHONY: cluster-failover
cluster-failover: install tools
	$(BIN)/python -m tools.cluster.failover $(FAILOVER_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
