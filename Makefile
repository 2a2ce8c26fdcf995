# Set-up and the two everyday jobs. The CPU build of torch is installed first so that
# pip never pulls a multi-GB CUDA build on a CPU-only machine.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/labkit demo

test: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

bench: setup
	$(PY) -m pip install --quiet --no-deps aihwkit-lightning tqdm  # the peer (no deps: it must not move torch)
	$(PY) benchmarks/run_all.py
