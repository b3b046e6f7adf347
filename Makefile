# Two commands: `make run` runs the whole system, `make test` runs every test.
# Both create the virtual environment and start local Kafka and Postgres when
# LOYALTY_KAFKA_BOOTSTRAP / LOYALTY_DATABASE_URL are not set.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist): most tests wait on Kafka and Postgres more than they compute.
TEST_WORKERS ?= 2

.PHONY: run test lint infra-up infra-down infra-status clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/loyalty run

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

infra-up infra-down infra-status: $(STAMP)
	$(BIN)/loyalty infra $(subst infra-,,$@)

clean:
	rm -rf $(VENV) build *.egg-info
