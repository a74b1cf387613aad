# Every target installs what it needs on first use: a fresh clone runs `make synth`
# or `make test` directly.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_VERSION := 22.23.3
# jsii wants a supported Node.js. When the machine's is older than 22, a Node 22 from
# the npm registry (node-linux-<arch>) is installed into .tools/ and put first on PATH.
NODE_ARCH := $(subst x86_64,x64,$(subst aarch64,arm64,$(shell uname -m)))
NODE_TOOL := .tools/node/node_modules/node-linux-$(NODE_ARCH)/bin
SYSTEM_NODE_MAJOR := $(shell node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
export PATH := $(CURDIR)/$(NODE_TOOL):$(CURDIR)/node_modules/.bin:$(PATH)
CDK := node_modules/.bin/cdk
STAGE ?=
STAGE_ARG := $(if $(STAGE),-c stage=$(STAGE))
STACKS := $(if $(STAGE),'$(STAGE)/*',--all)

.PHONY: help synth test lint preflight diff deploy smoke serve bench dashboard mutation clean chromium

help:
	@echo "make synth [STAGE=dev]   synthesize every stage (or one) into cdk.out/"
	@echo "make test                run the whole test suite"
	@echo "make lint                ruff, and cfn-lint on synthesized templates"
	@echo "make preflight STAGE=name  read-only checks of the stage's account before deploying (needs credentials)"
	@echo "make diff STAGE=name     cdk diff against the stage's account (needs credentials)"
	@echo "make deploy STAGE=name   cdk deploy every stack of the stage (needs credentials)"
	@echo "make smoke STAGE=name    after a deploy: does the stage serve? (key in INFERENCE_CACHE_API_KEY; URL=... for any front)"
	@echo "make serve [PORT=8080]   the whole request path locally, for the openai client and curl"
	@echo "make bench               benchmarks; prints figures"
	@echo "make dashboard [STAGE=]  each stage's dashboard drawn as charts in build/dashboards/<stage>.html"
	@echo "bin/cache-report LOG     what the cache would save on a request log: report.html"
	@echo "make mutation            mutation testing of the trust paths (mutmut, ~30 min; docs/testing.md)"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

.tools/.installed:
	@if [ "$(SYSTEM_NODE_MAJOR)" -lt 22 ]; then \
	  echo "system Node.js is $(SYSTEM_NODE_MAJOR).x; installing Node $(NODE_VERSION) into .tools/ for jsii"; \
	  npm install --prefix .tools/node --no-save --no-audit --no-fund --loglevel=error node-linux-$(NODE_ARCH)@$(NODE_VERSION); \
	fi
	@mkdir -p .tools && touch $@

TOOLS := $(VENV)/.installed node_modules/.installed .tools/.installed

# Headless Chromium for the tests that draw pages (marked chromium; tests/chromium.py):
# Debian's package, installed when missing, as root or with passwordless sudo. Where it
# cannot be, the note says so and those tests fail with what to run (they never skip);
# `make test PYTEST_ARGS='-m "not chromium"'` runs the rest. Never a browser that
# Playwright downloads itself.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the tests that draw pages"; \
	    { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; } \
	      || echo "NOTE: installing chromium failed: the tests marked chromium will fail."; \
	  else \
	    echo "NOTE: no Chromium, and apt-get cannot run here: the tests marked chromium will fail." \
	         "Install Debian's chromium, or set CHROMIUM=/path/to/chromium."; \
	  fi; }

synth: $(TOOLS)
	rm -rf cdk.out
	time $(CDK) synth $(STAGE_ARG) --quiet
	@echo "templates: $$(ls cdk.out/assembly-*/*.template.json | wc -l)"; ls cdk.out/assembly-*/*.template.json

test: $(TOOLS) chromium
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(TOOLS) synth
	$(PY) -m ruff check .
	$(VENV)/bin/cfn-lint cdk.out/assembly-*/*.template.json || [ $$? -eq 4 ]  # 4: warnings only

# Read-only: what would make the stage's deploy fail late (quotas, bootstrap, certificate,
# published model, ...). Exit status 1 when a check fails.
preflight: $(VENV)/.installed
	@test -n "$(STAGE)" || (echo "usage: make preflight STAGE=dev|staging|prod" && exit 2)
	bin/preflight --stage $(STAGE)

diff: $(TOOLS)
	@test -n "$(STAGE)" || (echo "usage: make diff STAGE=dev|staging|prod" && exit 2)
	$(CDK) diff $(STAGE_ARG) $(STACKS)

deploy: $(TOOLS)
	@test -n "$(STAGE)" || (echo "usage: make deploy STAGE=dev|staging|prod" && exit 2)
	$(CDK) deploy $(STAGE_ARG) $(STACKS) --require-approval broadening

# After a deploy: a dozen requests to the stage's domain (or URL=http://127.0.0.1:8080),
# the API key in INFERENCE_CACHE_API_KEY. Exit status 1 when a step fails.
smoke: $(VENV)/.installed
	@test -n "$(STAGE)$(URL)" || (echo "usage: INFERENCE_CACHE_API_KEY=<key> make smoke STAGE=dev|staging|prod (or URL=http://...)" && exit 2)
	bin/smoke $(if $(URL),--url $(URL),--stage $(STAGE))

serve: $(VENV)/.installed node_modules/.installed
	$(PY) -m local_run --port $${PORT:-8080} $(if $(STAGE),--stage $(STAGE))

bench: $(TOOLS)
	$(PY) -m bench.bench_cache_decision
	$(PY) -m bench.bench_local_run
	$(PY) -m bench.bench_vs_litellm
	$(PY) -m bench.bench_embeddings
	$(PY) -m bench.bench_api_key_check
	$(PY) -m bench.bench_model_publish
	$(PY) -m bench.bench_edge_hit_path
	$(PY) -m bench.bench_coalescing
	$(PY) -m bench.bench_streaming
	$(PY) -m bench.bench_cache_report

# Synthesizes (the preview reads the dashboard body from the templates), then writes
# build/dashboards/<stage>.html: no AWS account needed.
dashboard: synth
	$(PY) -m cli.dashboard_preview --cdk-out cdk.out --out build/dashboards

# mutmut (setup.cfg) on the mutants tests/mutation/scope.txt names, then the score per
# module (tests/mutation/report.py; it fails on a survivor that is neither killed nor
# listed in tests/mutation/equivalent.txt). Not part of `make test` or CI: ~30 min.
mutation: $(VENV)/.installed
	rm -rf mutants
	time $(VENV)/bin/mutmut run --max-children 2 $$(grep -v '^#' tests/mutation/scope.txt)
	$(PY) -m tests.mutation.report

clean:
	rm -rf cdk.out .pytest_cache .ruff_cache mutants
