# Two entry points (see README): `make demo` and `make test`. Both create .venv
# on first use; torch/torchvision resolve from this machine's local wheels.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.freezetune-installed
DATA_ROOT ?= data
FMNIST_SYSTEM := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-all install data clean

install: $(STAMP)

# Bytecode is compiled once here, on every core: pip compiles each wheel's files one at a time on one
# core (a third of the install: 6,000 files of torch, transformers and sympy), and without bytecode
# every process compiles torch again (PYTHONDONTWRITEBYTECODE=1 on these machines: 3 s a start).
# compileall's status is 1 when a file is not Python 3.11 (torch's py312_intrinsics.py): pip skips
# those the same way, and they are never imported here.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e '.[test,report,timm,onnx,tensorboard,lora]'
	$(PY) -m compileall -qq -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || true
	@touch $@

# Debian's dataset-fashion-mnist when we are root with apt; otherwise
# scripts/fetch_data.py falls back to torchvision's download.
data: $(STAMP)
	@if [ ! -f $(DATA_ROOT)/FashionMNIST/raw/t10k-labels-idx1-ubyte ] && [ ! -d $(FMNIST_SYSTEM) ] \
	    && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "apt-get could not install dataset-fashion-mnist; trying torchvision's download"; \
	fi
	$(PY) scripts/fetch_data.py --root $(DATA_ROOT)

demo: data
	$(PY) scripts/demo.py

# Lint and format check first (ruff, configured in pyproject.toml: style, and each function's
# complexity and parameter count): CI keeps the code clean.
# The tests run in one process per core (pytest-xdist), each with one torch thread: on 2 cores
# that is 81 s where one process with two threads takes 123 s (measured one after the other).
# worksteal: a worker that runs out takes queued tests from the other, so the run does not end on
# one worker's backlog (tests/conftest.py also starts the longest tests first).
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -n auto --dist worksteal

# Everything, the heavy checks included (every architecture; minutes, not for CI).
test-all: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -n auto --dist worksteal -m "heavy or not heavy"

clean:
	rm -rf runs .pytest_cache
