# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo simulate test test-all test-integration bench clean data gpu-stage gpu-check gpu-check-dry

# Fashion-MNIST (real data for the reference trainers) from Debian's dataset-fashion-mnist.
DATA_DIR := /usr/share/datasets/fashion-mnist

# constraints.txt pins what these machines install (torch 2.13.0 is the CPU build on local disk);
# pyproject.toml's extras are ranges, so a user's own torch or JAX is left alone.
$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,torch,jax,plot,tensorboard]"
	touch $(STAMP)

data:
	@test -d $(DATA_DIR) || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "could not install dataset-fashion-mnist: the trainer tests will be skipped"

# CLIP pre-training with SCAN on Fashion-MNIST on this CPU, then its result.
demo: $(STAMP) data
	$(PY) -m reference_trainers.clip --preset cpu-fmnist --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# A preview of a SCAN run's saving at ImageNet scale on a synthetic loss stream.
simulate: $(STAMP)
	$(PY) -m scan_core simulate --num-samples 1200000 --epochs 32 --batch-size 1024 --world-size 4

# The CI suite: everything but the runs marked slow. Exit code 5 (no tests collected) fails.
# Two pytest processes: the JAX tests import jax, whose threads must not share a process with
# the PyTorch tests that fork DataLoader workers (os.fork under JAX's threads can deadlock).
JAX_TESTS := tests/adapters/jax tests/jax_trainers
NO_JAX := $(foreach d,$(JAX_TESTS),--ignore=$(d))

test: $(STAMP) data
	$(PY) -m pytest -m "not slow and not integration" -q --durations=8 $(NO_JAX)
	$(PY) -m pytest -m "not slow and not integration" -q --durations=8 $(JAX_TESTS)

test-all: $(STAMP) data
	$(PY) -m pytest -m "not integration" -q $(NO_JAX)
	$(PY) -m pytest -m "not integration" -q $(JAX_TESTS)

# open_clip's own trainer patched with SCAN (docs/open_clip.md), in a virtual environment of its
# own: open_clip needs torchvision, whose PyPI wheels need the CUDA build of torch (~5.5 GB).
OC_VENV := .venv-openclip
OC_REQS := tests/integration/requirements-openclip.txt
$(OC_VENV)/.installed: pyproject.toml $(OC_REQS)
	$(PYTHON) -m venv $(OC_VENV)
	$(OC_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OC_VENV)/bin/python -m pip install --quiet -r $(OC_REQS) -e ".[dev]"
	touch $@

test-integration: $(OC_VENV)/.installed data
	$(OC_VENV)/bin/python -m pytest -m integration -q --durations=8 tests/integration

bench: $(STAMP)
	$(PY) benchmarks/bench_bookkeeping.py --sizes 100000 1000000 10000000
	$(PY) benchmarks/bench_billion.py

# GPU acceptance check (issue 19; docs/benchmarks.md, "GPU check"). gpu-stage: where pip has a
# network, the wheels and data the device lacks into .gpu-stage/ (git-ignored; name it in the
# device tool's carry). gpu-check: on the GPU machine. gpu-check-dry: the same on this CPU.
gpu-stage: $(STAMP) data
	$(PY) benchmarks/stage_gpu_check.py --dest .gpu-stage

gpu-check:
	bash benchmarks/gpu_check/device.sh

gpu-check-dry: $(STAMP)
	$(PY) -m benchmarks.gpu_check --dry-run --out runs/gpu-check-dry

clean:
	rm -rf $(VENV) $(OC_VENV) .pytest_cache .hypothesis
