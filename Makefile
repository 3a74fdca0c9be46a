# One entry point per task. `make test` and `make reproduce` create .venv when missing.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
PROFILE  ?= tiny
DATA_DIR ?=
NOTEBOOKS ?=
NB       ?=
# Worker processes that train the plan before the notebooks run. auto: one per GPU on CUDA,
# else the cores divided by the threads that pay per worker on a CPU (one: two one-thread
# workers beat one two-thread process here), i.e. one per core.
JOBS     ?= auto
# Pinned to the releases served from local disk on the build machines; pyproject admits ranges.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: env test test-fast reproduce notebook bench clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m ipykernel install --user --name nsa --display-name "Python (nsa)" >/dev/null
	@touch $@

# One pytest worker per core, one torch thread each, whole files to a worker in collection order
# (--dist loadfile --no-loadscope-reorder; conftest.py puts the longest file first):
# the smoke run of every notebook (tests/test_notebooks.py) goes to one worker while the other
# takes the unit tests.
test: env
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder tests

# The quick loop: everything but the tests marked slow (the smoke run of the whole suite).
test-fast: env
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m "not slow" tests

# The plan first (every missing model, JOBS at a time), then the notebooks, which then only load.
reproduce: env
	$(PY) -m nsa_core train-all --profile $(PROFILE) --jobs $(JOBS) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS))
	$(PY) -m nsa_core reproduce --profile $(PROFILE) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS))

notebook: env
	@test -n "$(NB)" || { echo "make notebook: set NB, e.g. make notebook NB=03" >&2; exit 2; }
	$(PY) -m nsa_core reproduce --profile $(PROFILE) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --notebooks $(NB) --no-report

# One thread unless told otherwise: on a shared machine, OpenMP threads that wait for a busy
# core make every step several times slower (measured 5x here) and the medians meaningless.
bench: env
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m nsa_core bench

clean:
	rm -rf results/smoke results/models
