# Quick start: `make test`. The virtual environment is created on first use and reused after.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Without an NVIDIA driver, install the CPU build of torch first so that the package's torch range
# is already satisfied and pip never pulls a multi-GB CUDA wheel. Override on the command line.
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import torch" 2>/dev/null; then \
		$(PY) -m pip install --quiet "$(TORCH_CPU)"; \
	fi
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# Everything but the tests marked slow (the demo DAG, Slurm, Chromium, kill-and-resume, Snakemake
# itself): under 2 minutes on two cores.
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow"

# The whole DAG on synthetic stand-ins, CPU-sized; outputs in demo/ (report: demo/reports/).
demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/snakemake --cores all --profile profiles/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
