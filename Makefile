# Two commands do everything: `make book` and `make test`. Each creates .venv if missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= demo
CORES ?= 2
# Python reads and writes text as UTF-8 whatever the machine's locale (some CI images default to ASCII;
# nnU-Net, for one, writes its logs in the locale's encoding).
export PYTHONUTF8 := 1

.PHONY: book test test-fast lint format lab venv clean mutation

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q "setuptools>=70.1" wheel
	SAM2_BUILD_CUDA=0 $(VENV)/bin/pip install -q --no-build-isolation -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

book: venv
	$(VENV)/bin/snakemake --snakefile Snakefile --cores $(CORES) --rerun-incomplete --config profile=$(PROFILE) -- book

# The whole suite (CI runs this): lint first, then every test, the end-to-end ones included, on $(CORES) workers
# (a test module stays on one worker: its fixtures are built once).
test: venv lint
	$(VENV)/bin/python -m pytest -n $(CORES) --dist loadfile --no-loadscope-reorder tests

# The loop while working: every module's tests, without the end-to-end runs marked slow.
test-fast: venv
	$(VENV)/bin/python -m pytest -n $(CORES) --dist loadfile --no-loadscope-reorder tests -m "not slow"

# Mutation testing (not in `make test` nor CI; docs/mutation.md): mutmut over the metrics, statistics, stage filters
# and the geometry's region/orientation code, each mutant against the fast tests that reach it; fails below 85 %.
mutation: venv
	test -x $(VENV)/bin/mutmut || $(VENV)/bin/pip install -q -e ".[mutation]"
	$(PY) tools/mutation.py --jobs $(CORES)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lab: venv
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf work/$(PROFILE) book/_build book/generated
