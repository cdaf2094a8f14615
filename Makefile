# The README's commands. `make demo` and `make test` set everything up first (a .venv from scratch when missing).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgeship-installed
PYTEST_ARGS ?=
# Real pretrained networks (bench/real_models.py). facenet-pytorch ships MTCNN's weights in its wheel (1.9 MB): the
# test suite quantizes its P-Net for real. These go in with --no-deps: their declared requirements would replace
# this torch (bench/real_models.py says why, package by package).
TEST_NODEPS := facenet-pytorch==2.6.0
REAL_NODEPS := $(TEST_NODEPS) onnx2torch==1.5.15 torchcrepe==0.0.24 resemblyzer==0.1.4
REAL_STAMP := $(VENV)/.edgeship-real-installed

WEB_STAMP := web-demo/vendor/versions.json

.PHONY: setup real-setup web-setup demo test test-fast bench bench-distill fidelity architectures bench-browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run: make PYTHON=python3 ..."; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	$(BIN)/python -m pip install -q --no-deps $(TEST_NODEPS)
	touch $(STAMP)

real-setup: $(REAL_STAMP)

$(REAL_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[all,dev,real]'
	$(BIN)/python -m pip install -q --no-deps $(REAL_NODEPS)
	@command -v espeak-ng >/dev/null || echo "note: espeak-ng is not installed: the audio models (crepe_tiny, resemblyzer) get no speech; install it with: apt-get install -y espeak-ng"
	touch $(REAL_STAMP)

demo: setup
	$(BIN)/python -m edgeship.demo

# The web page's runtimes (onnxruntime-web, LiteRT.js) from web-demo/package-lock.json into web-demo/vendor/;
# tests/web and --device browser need them (and Chromium: scripts/install-system-deps.sh). Without npm: a note,
# and the browser tests skip (fail under EDGESHIP_REQUIRE_SYSTEM_TOOLS=1).
web-setup: $(WEB_STAMP)

$(WEB_STAMP): web-demo/package-lock.json web-demo/scripts/vendor.mjs
	@if command -v npm >/dev/null; then \
	  cd web-demo && npm ci --no-audit --no-fund --ignore-scripts && node scripts/vendor.mjs; \
	else echo "note: npm is not installed: web-demo/vendor/ is not built (apt-get install -y npm; make web-setup)"; fi

test: setup web-setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/run.py

bench-distill: setup
	$(BIN)/python bench/distill.py

# int8 on real pretrained networks, each runtime's plain recipe beside edgeship's: bench/fidelity.md (~35 min)
fidelity: real-setup
	$(BIN)/python bench/fidelity.py

# Hugging Face architectures (ResNet ... Wav2Vec2, small configs) in every format at fp32 and fp16: bench/architectures.md
architectures: setup
	$(BIN)/python bench/architectures.py

# the same models in the browser (wasm, 1 and 2 threads) against native onnxruntime and LiteRT: bench/browser.md
bench-browser: setup web-setup
	$(BIN)/python bench/browser.py

clean:
	rm -rf dist .pytest_cache
