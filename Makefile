# ortserve: the two set-up commands of the README, and the developer targets around them.
#   make run    venv + install + train the quick default models if models/ is empty + serve :8000
#   make test   venv + install + system tools (promtool, prometheus, docker-compose) + ruff,
#               mypy + pytest

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
export HF_HUB_OFFLINE := 1

.PHONY: run test install train serve lint bench soak clean-models

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,test,bench]'
	touch $@

install: $(VENV)/.installed

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
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# mypy reads [tool.mypy] in pyproject.toml: all of app/, strict on the serving core and edge
lint: install
	$(BIN)/ruff check app training tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m bench run

soak: install
	$(BIN)/python -m bench soak
