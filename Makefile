# One-command set-up: `make demo` (main job) and `make test` (the suite CI runs).
# torch is pinned here (the CPU wheel on disk); an unpinned torch pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wdb-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -e ".[test]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/wdb --db demo-out/db demo

# The suite runs twice: on DuckDB (the default catalog), then on a throwaway PostgreSQL server
# (tests/pgserver.py; skipped with the reason printed where PostgreSQL cannot be installed).
test: setup
	-sh tests/apt_install.sh chromium chromium chromium-browser google-chrome  # report test
	-sh tests/apt_install.sh postgresql initdb '/usr/lib/postgresql/*/bin/initdb'
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports  # the layers of wdb/ (pyproject.toml [tool.importlinter])
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; \
	  [ $$rc -eq 0 ] || exit $$rc
	@echo "== the same suite on PostgreSQL =="
	WDB_TEST_CATALOG=postgresql $(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-out .wdb .pytest_cache
