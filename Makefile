# Quick start: `make test`. The virtual environment is created on first use and reused after.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch: on a machine without nvidia-smi, its CPU build from PyTorch's CPU wheel index, so that
# pip never pulls PyPI's Linux wheel (the CUDA build, several GB); where that index cannot be
# reached within TORCH_PROBE_S seconds, the default package index. With nvidia-smi, the package's
# torch range takes the default index's (CUDA) build. TORCH_INDEX=URL takes torch from URL on any
# machine (e.g. https://download.pytorch.org/whl/cu128 for an older driver). Says which it used.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PROBE_S ?= 10
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if [ -n "$(TORCH_INDEX)" ]; then \
		echo "torch $(TORCH_VERSION) from $(TORCH_INDEX) (TORCH_INDEX)"; \
		$(PY) -m pip install --quiet --index-url "$(TORCH_INDEX)" "torch==$(TORCH_VERSION)"; \
	elif $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		echo "nvidia-smi found: torch (a CUDA build) from the default package index"; \
	elif $(PY) -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))" \
			"$(TORCH_CPU_INDEX)/torch/" "$(TORCH_PROBE_S)" 2>/dev/null; then \
		echo "no NVIDIA driver: torch $(TORCH_VERSION), CPU build, from $(TORCH_CPU_INDEX)"; \
		$(PY) -m pip install --quiet --index-url "$(TORCH_CPU_INDEX)" "torch==$(TORCH_VERSION)"; \
	else \
		echo "no NVIDIA driver, and $(TORCH_CPU_INDEX) is not reachable: torch $(TORCH_VERSION) from the default package index"; \
		echo "  (where that is PyPI on Linux x86_64 this is the CUDA build, several GB; set TORCH_INDEX to avoid it)"; \
		$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	fi
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

# Everything but the tests marked slow (the demo DAG, Slurm, Chromium, kill-and-resume, Snakemake
# itself): under 2 minutes on two cores.
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -m "not slow"

# The whole DAG on synthetic stand-ins, CPU-sized; outputs in demo/ (report: demo/reports/).
demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/snakemake --cores all --profile profiles/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
