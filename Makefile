# fergi: two entry points for a fresh machine with Python 3.11.
#   make demo   creates .venv, installs fergi, runs `fergi reproduce` on the public release
#   make test   creates .venv, installs fergi with its test tools and Chromium, runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The public release: a local copy beside the checkout when there is one, else
# $FERGI_DATA, the user cache, or a download (see fergi.datasets.fetch_fergi).
DATA ?= $(firstword $(wildcard ../shared/fergi-public))
OUT ?= fergi-results

.PHONY: demo test venv browser postgres lint bench clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "fergi needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: pip then takes the CPU wheel instead of a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/fergi reproduce $(if $(DATA),--data $(DATA)) --out $(OUT)

# Debian's Chromium for the end-to-end browser test (never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; \
	  else echo "note: chromium missing and not root; the browser test will be skipped (install Debian's chromium)"; fi; }

# Debian's PostgreSQL server binaries: the tests start a throwaway cluster with them.
postgres:
	@test -x "$$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)" || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	  else echo "note: PostgreSQL missing and not root; the PostgreSQL tests will be skipped (install Debian's postgresql)"; fi; }

# Two pytest-xdist workers, a test file each at a time (module fixtures stay shared):
# 8 min instead of 12.5 on 2 cores (docs/layout.md). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: venv browser postgres
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

lint: venv
	$(BIN)/ruff check src tests benchmarks

# Each benchmark prints its figures; the release ones read $(DATA) via FERGI_DATA.
bench: venv
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(if $(DATA),FERGI_DATA=$(DATA)) $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
