# Two entry points: `make demo` and `make test`. Both create .venv when missing and install the CPU
# build of torch first: an unpinned torch would pull several GB of CUDA wheels.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.*
INSTRUCTOR_SPEC ?= instructor==1.17.*
STAMP := $(VENV)/.installed

.PHONY: install demo test test-vllm vllm-contract lint docs clean clean-cache mutation

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps "$(INSTRUCTOR_SPEC)"  # its jiter cap would downgrade openai (docs/api.md)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lora-gateway demo $(ARGS)

# One xdist worker per core, each module whole on one worker so its fixtures are built once
# (--dist loadscope; pytest 9.2 ignores xdist 3.8's renaming that loadgroup needs). PYTEST_PARALLEL=
# runs the suite in one process. Trained adapters come from the test-artifact cache (tests/artifacts.py):
# LORA_GATEWAY_TEST_CACHE=$$(mktemp -d) times a cold run; `make clean-cache` empties the cache.
PYTEST_PARALLEL ?= -n auto --dist loadscope
test: $(STAMP)
	@started=$$(date +%s); \
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS); status=$$?; \
	echo "make test: the suite took $$(( $$(date +%s) - started )) s of wall time"; exit $$status
	@if [ -f $(VLLM_STAMP) ]; then $(MAKE) --no-print-directory vllm-contract; \
	else echo "vLLM contract tests skipped: $(VLLM_VENV) is not built (run 'make test-vllm')"; fi

# Contract tests against the real, pinned vLLM: its CUDA wheel installed with --no-deps next to the
# CPU torch, plus the light pure-Python packages its API modules import (vLLM cannot run here).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_LIGHT_DEPS := msgspec cbor2 aiohttp openai-harmony pillow pybase64 uvloop prometheus_client xgrammar \
	partial_json_parser llguidance pyzmq cloudpickle blake3 cachetools psutil regex py-cpuinfo urllib3 requests openai

$(VLLM_STAMP): pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_PY) -m pip install -q --no-deps "vllm==0.33.0"
	$(VLLM_PY) -m pip install -q $(VLLM_LIGHT_DEPS) "transformers>=5.16.1,<5.21" "fastapi>=0.133,<0.137"
	$(VLLM_PY) -m pip install -q -e ".[dev]" "transformers>=5.16.1,<5.21" "fastapi>=0.133,<0.137"
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP) vllm-contract

vllm-contract:
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VLLM_PY) -m pytest -q -p no:cacheprovider tests/engine/test_vllm_contract.py

# Mutation testing of the modules where a silent error costs most ([tool.mutmut] in pyproject.toml).
mutation: $(STAMP)
	$(PIP) install -q "mutmut>=3.3"
	rm -rf mutants
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/mutmut run; $(VENV)/bin/mutmut results

lint: $(STAMP)
	$(VENV)/bin/ruff check server tests benchmarks docs/hooks.py
	$(VENV)/bin/ruff format --check server tests benchmarks docs/hooks.py
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $$(mktemp -d)

# The documentation site (docs/, MkDocs with the Material theme) on http://127.0.0.1:8001.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8001

clean:
	rm -rf $(VENV) $(VLLM_VENV) .demo .pytest_cache

# The trained adapters the suite keeps between runs (tests/artifacts.py); keyed by their inputs, so
# emptying it is never needed for correctness, only to reclaim the space or time a cold run.
clean-cache:
	rm -rf $${LORA_GATEWAY_TEST_CACHE:-$$HOME/.cache/lora-gateway/test-artifacts}
