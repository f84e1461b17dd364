# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,torch]"
	touch $(STAMP)

# A preview of a SCAN run's saving on a realistic config (CLIP defaults, 1.2M samples, 32 epochs).
demo: $(STAMP)
	$(PY) -m scan_core simulate --num-samples 1200000 --epochs 32 --batch-size 1024 --world-size 4

# The CI suite: everything but the runs marked slow. Exit code 5 (no tests collected) fails.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_bookkeeping.py --sizes 100000 1000000 10000000
	$(PY) benchmarks/bench_billion.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
