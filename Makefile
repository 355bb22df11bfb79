# Two commands do everything on a fresh machine; each makes its own virtual environment.
#   make demo   install, then segment the bundled sample scene (no servers needed)
#   make test   install with test extras, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch pinned, in the same pip call: the CPU build of this version is what this project is tested with;
# an unpinned torch pulls several GB of CUDA wheels.
TORCH  ?= torch==2.13.0
# no byte-compiling at install: pip otherwise compiles every module of every package (torch,
# TensorFlow, transformers ...), most of which never run here; Python compiles what it imports,
# once. Install time here: 172 s -> 59 s (make install), 115 s -> 65 s (the test extras)
PIP_INSTALL ?= pip install -q --no-compile

.PHONY: install install-test demo lint test test-stardist bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/$(PIP_INSTALL) $(TORCH) -e .

install-test: $(BIN)/python
	$(BIN)/$(PIP_INSTALL) $(TORCH) -e '.[test]'

demo: install
	$(BIN)/segflow demo --out segflow-demo

# ruff and mypy, as configured in pyproject.toml; CI runs this before the tests
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy

# two test processes at most (each with its own Prefect API, moto server and Dask cluster; a
# third was no faster on 2 cores: 1180 s against 1112 s),
# a file's tests together, in collection order (tests/conftest.py starts the longest files first)
test: install-test
	$(BIN)/python -m pytest -q -n auto --maxprocesses=2 --dist loadfile --no-loadscope-reorder --durations=25

# StarDist needs TensorFlow (~1.5 GB): its own environment, layered on the test environment
# (a .pth line adds .venv's packages), so `make test` never installs it; CI runs both
STARDIST_VENV ?= .venv-stardist
test-stardist: install-test
	test -x $(STARDIST_VENV)/bin/python || $(PYTHON) -m venv $(STARDIST_VENV)
	$(STARDIST_VENV)/bin/python -c "import site, sys; open(site.getsitepackages()[0] + '/zz_segflow_test.pth', 'w').write('import site; site.addsitedir(' + repr(sys.argv[1]) + ')\n')" \
		"$$($(BIN)/python -c 'import site; print(site.getsitepackages()[0])')"
	$(STARDIST_VENV)/bin/python -m $(PIP_INSTALL) 'stardist>=0.9' 'tensorflow-cpu>=2.16'
	$(STARDIST_VENV)/bin/python -m pytest -q tests/test_stardist.py tests/conformance/test_instance_models.py -k stardist

bench: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(STARDIST_VENV) segflow-demo benchmarks/out
