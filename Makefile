# 报告问答 — one command to set up and run, one to set up and test.
#   make run    install everything, fetch the model, index ./corpus, open the UI on http://127.0.0.1:7860
#   make test   install everything (browser and CJK font included) and run the test suite
#   make test-fast   only the tests that do not need the real embedding model (a tiny local one)
#   make serve  like make run, but the UI and the HTTP API together on http://127.0.0.1:8000 (UI at /ui/, API at /v1)
#   make ask Q="GPT-3 的参数量是多少？"
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RAG := $(VENV)/bin/rag
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: setup model browser index run serve ask test test-fast eval bench lint llm llm-serve

# llama-cpp-python builds from source, portable (GGML_NATIVE=OFF) with the instruction sets this CPU has
# and AMX off. The default native build enables AMX on CPUs that have it and segfaults in decode; a fixed
# AVX-512 list dies with SIGILL on CPUs without AVX-512 (AMD EPYC with AVX2 only), so the list is read
# from /proc/cpuinfo. pip's own wheel cache keys on the sdist only and would hand a wheel built for another
# CPU to this one (SIGILL again), so the built wheel is kept in a directory keyed by version and flags and
# the venv's marker carries the same key: a venv or cache moved to another CPU rebuilds once.
cpu_has = $(shell grep -qw '$(1)' /proc/cpuinfo 2>/dev/null && echo ON || echo OFF)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=$(call cpu_has,avx) -DGGML_AVX2=$(call cpu_has,avx2) \
	-DGGML_FMA=$(call cpu_has,fma) -DGGML_F16C=$(call cpu_has,f16c) \
	-DGGML_AVX512=$(call cpu_has,avx512bw) -DGGML_AVX512_VNNI=$(call cpu_has,avx512_vnni) \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_KEY := $(shell echo '$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
LLAMA_WHEELS := $(HOME)/.cache/report-qa/wheels/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_KEY)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed model

model: $(VENV)/.installed
	$(PY) -m rag.model_fetch
	$(PY) -m rag.ov_export

# Debian's Chromium (for the browser test) and a small CJK font (so Chinese renders in screenshots).
browser:
	@if ! command -v chromium >/dev/null || ! fc-list 2>/dev/null | grep -qi 'wenquanyi\|wqy'; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; \
	fi

# The optional local LLM for generated answers: llama-cpp-python[server] and both Qwen GGUF models.
$(VENV)/.llm-$(LLAMA_KEY): $(VENV)/.installed
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
		echo "building llama-cpp-python $(LLAMA_VERSION) for this CPU ($(LLAMA_KEY)), 10-25 min on 2 cores"; \
		rm -rf $(LLAMA_WHEELS).partial && \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel --quiet --no-cache-dir --no-deps \
			-w $(LLAMA_WHEELS).partial llama-cpp-python==$(LLAMA_VERSION) && \
		mv $(LLAMA_WHEELS).partial $(LLAMA_WHEELS); \
	fi
	$(PY) -m pip install --quiet --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(PY) -m pip install --quiet -e '.[llm]'
	rm -f $(VENV)/.llm-installed $(VENV)/.llm-[0-9a-f]*
	touch $@

llm: $(VENV)/.llm-$(LLAMA_KEY)
	$(PY) -m rag.model_fetch qwen-0.5b qwen-1.5b

llm-serve: llm
	$(RAG) llm

index: setup
	$(RAG) index

run: index
	$(RAG) ui

serve: index
	$(RAG) serve

ask: index
	$(RAG) ask "$(Q)"

test: setup browser llm
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed browser
	$(PY) -m pytest -q -m "not slow"

eval: index
	$(RAG) eval

bench: index
	$(RAG) bench

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check rag tests eval ui.py
	$(VENV)/bin/mypy rag
