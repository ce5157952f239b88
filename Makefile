# ortserve: the two set-up commands of the README, and the developer targets around them.
#   make run    venv + install + train the quick default models if models/ is empty + serve :8000
#   make test   venv + install + system tools (promtool, prometheus, docker-compose) + pytest
#   make test-gpu   the same in .venv-gpu with onnxruntime-gpu: tests/test_cuda.py, then the
#               suite on device=auto; fails unless a CUDA session really starts

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
GPU_VENV ?= .venv-gpu
GPU_BIN  := $(GPU_VENV)/bin
PORT   ?= 8000
export HF_HUB_OFFLINE := 1

.PHONY: run test test-gpu install train serve lint bench soak clean-models

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,test,bench]'
	touch $@

install: $(VENV)/.installed

$(GPU_BIN)/python:
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_BIN)/python -m pip install --quiet --upgrade pip

# onnxruntime (a base dependency) and onnxruntime-gpu install the same module: keep only the
# GPU build (as Dockerfile.gpu does; the version floor is the gpu extra's)
$(GPU_VENV)/.installed: pyproject.toml | $(GPU_BIN)/python
	$(GPU_BIN)/pip install --quiet -e '.[train,test,gpu]'
	$(GPU_BIN)/pip uninstall --quiet -y onnxruntime
	$(GPU_BIN)/pip install --quiet --force-reinstall --no-deps 'onnxruntime-gpu>=1.20'
	touch $@

train: install
	$(BIN)/python -m training all --profile quick --output models

run: install
	@if ! ls models/*/[0-9]*/model.json >/dev/null 2>&1; then \
		echo "models/ is empty: training the quick default models (about 3-5 minutes)"; \
		$(BIN)/python -m training all --profile quick --output models || exit 1; \
	fi
	$(BIN)/ortserve serve --models models --host 0.0.0.0 --port $(PORT)

serve: install
	$(BIN)/ortserve serve --models models --port $(PORT)

test: install
	scripts/system-deps.sh
	$(BIN)/ruff check app training tests bench
	$(BIN)/python -m pytest -q

# ORTSERVE_EXPECT_GPU=1: tests/test_cuda.py fails (instead of skipping) when no CUDA session
# starts. Tests whose outcome is the CPU provider's pin device=cpu themselves.
test-gpu: $(GPU_VENV)/.installed
	scripts/system-deps.sh
	ORTSERVE_EXPECT_GPU=1 ORTSERVE_DEVICE=auto $(GPU_BIN)/python -m pytest -q tests/test_cuda.py
	ORTSERVE_EXPECT_GPU=1 ORTSERVE_DEVICE=auto $(GPU_BIN)/python -m pytest -q \
		--ignore=tests/test_cuda.py

lint: install
	$(BIN)/ruff check app training tests bench

bench: install
	$(BIN)/python -m bench run

soak: install
	$(BIN)/python -m bench soak
