# ebm_nb: two commands.  `make test` and `make reproduce [SCALE=quick|cpu|gpu|paper]`.
# `make lab` opens JupyterLab on nbs/; `make test-lab` runs two notebooks in it through headless Chromium.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SCALE  ?= quick
PAPER  ?= all
# torch/torchvision pins: the CUDA build runs on a CPU too. Override, e.g. `make test TORCH=` to keep yours.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: test lint reproduce bench report lab test-lab chromium export env data sync clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml or the version (ebm_nb/__init__.py) changes.
$(VENV)/.installed: pyproject.toml ebm_nb/__init__.py | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(strip $(TORCH)),$(BIN)/python -m pip install -q $(TORCH))
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

env: $(VENV)/.installed data

# Fashion-MNIST from Debian when we are root with apt; otherwise the loader explains the alternatives.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ ! -d data/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	     echo "could not install dataset-fashion-mnist; see data/README.md"; \
	  else echo "Fashion-MNIST not found; see data/README.md for the two other ways to get it"; fi; \
	fi

# Notebooks are the source: exporting and cleaning must not change any file.
sync: env
	@find ebm_nb nbs -path nbs/_runs -prune -o -type f \( -name '*.py' -o -name '*.ipynb' \) -print0 | sort -z | xargs -0 sha1sum > $(VENV)/.sync_before
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean
	@find ebm_nb nbs -path nbs/_runs -prune -o -type f \( -name '*.py' -o -name '*.ipynb' \) -print0 | sort -z | xargs -0 sha1sum > $(VENV)/.sync_after
	@diff $(VENV)/.sync_before $(VENV)/.sync_after >/dev/null || { echo "nbdev-export/nbdev-clean changed files: export, clean and commit them:"; diff $(VENV)/.sync_before $(VENV)/.sync_after; exit 1; }
	@echo "notebooks and ebm_nb/ are in sync"

# Lint first (seconds): line length, one statement per line, unused imports, over ebm_nb/, the notebooks and tools/.
lint: env
	$(BIN)/ruff check ebm_nb nbs tools

test: sync lint
	EBM_NB_QUIET=1 $(BIN)/python -m pytest -n 2 -q --durations=15 tests

reproduce: env
	$(BIN)/python -m ebm_nb.run --paper $(PAPER) --scale $(SCALE)

# The benchmark notebook: our fast paths against plain eager loops in the same run (paper presets on a GPU, smoke on a CPU).
bench: env
	@scale=$$($(BIN)/python -c "import torch; print('paper' if torch.cuda.is_available() else 'smoke')"); \
	  echo "benchmarks at scale $$scale"; $(BIN)/python -m ebm_nb.run --paper benchmarks --scale $$scale

# The results index figures/README.md, from the committed figures/<paper>/*.json.
report: env
	$(BIN)/python -m ebm_nb.run report

export: env
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean

# Jupyter refuses to start as root without --allow-root; containers usually run as root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: env
	$(BIN)/jupyter lab $(ALLOW_ROOT) nbs

# Debian's chromium and chromium-driver, installed with apt-get when missing and we are root.
chromium:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium and chromium-driver"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "make test-lab needs chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"; exit 1; fi; \
	fi

# JupyterLab on 127.0.0.1 with a token, on a copy of the checkout; screenshots in _lab/. Not part of `make test`.
test-lab: env chromium
	@$(BIN)/python -c 'import selenium' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[lab]'
	$(BIN)/python tests/lab/run_lab.py --out _lab nbs/02_nets.ipynb nbs/papers/toy/energy_landscapes.ipynb

clean:
	rm -rf nbs/_runs .pytest_cache _lab
