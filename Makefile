# ortserve: the two set-up commands of the README, and the developer targets around them.
#   make run    venv + install + train the quick default models if models/ is empty + an API
#               key in .ortserve/api-keys on first run + serve :8000 (keys required)
#   make test   venv + install + system tools (promtool, prometheus, docker-compose) + ruff,
#               mypy + pytest
#   make test-gpu   the same in .venv-gpu with onnxruntime-gpu: tests/test_cuda.py, then the
#               suite on device=auto; fails unless a CUDA session really starts

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
GPU_VENV ?= .venv-gpu
GPU_BIN  := $(GPU_VENV)/bin
PORT   ?= 8000
# the API key `make run` serves with: made on first run, never committed (.gitignore)
KEYS_FILE ?= .ortserve/api-keys
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

$(KEYS_FILE): | $(VENV)/.installed
	@mkdir -p $(dir $@)
	@umask 077 && $(BIN)/ortserve keygen > $@
	@echo "A new API key for this server, kept in $@ (print it again with: cat $@):"
	@echo "  $$(cat $@)"

run: install $(KEYS_FILE)
	@if ! ls models/*/[0-9]*/model.json >/dev/null 2>&1; then \
		echo "models/ is empty: training the quick default models (about 3-5 minutes)"; \
		$(BIN)/python -m training all --profile quick --output models || exit 1; \
	fi
	@echo "Every call needs the key; for example:"
	@echo "  curl -s localhost:$(PORT)/predict -H \"Authorization: Bearer \$$(cat $(KEYS_FILE))\" \\"
	@echo "       -H 'Content-Type: application/json' -d '{\"inputs\": [\"I love this phone\"]}'"
	ORTSERVE_API_KEYS_FILE=$(KEYS_FILE) $(BIN)/ortserve serve --models models --host 0.0.0.0 \
		--port $(PORT)

serve: install
	$(BIN)/ortserve serve --models models --port $(PORT)

test: install
	scripts/system-deps.sh
	$(BIN)/ruff check app training tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# ORTSERVE_EXPECT_GPU=1: tests/test_cuda.py fails (instead of skipping) when no CUDA session
# starts. Tests whose outcome is the CPU provider's pin device=cpu themselves.
test-gpu: $(GPU_VENV)/.installed
	scripts/system-deps.sh
	ORTSERVE_EXPECT_GPU=1 ORTSERVE_DEVICE=auto $(GPU_BIN)/python -m pytest -q tests/test_cuda.py
	ORTSERVE_EXPECT_GPU=1 ORTSERVE_DEVICE=auto $(GPU_BIN)/python -m pytest -q \
		--ignore=tests/test_cuda.py

# mypy reads [tool.mypy] in pyproject.toml: all of app/, strict on the serving core and edge
lint: install
	$(BIN)/ruff check app training tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m bench run

soak: install
	$(BIN)/python -m bench soak
