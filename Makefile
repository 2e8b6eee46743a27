# idcheck: two commands on a fresh machine.
#   make run   sets up a virtual environment, installs idcheck and serves a demo register on 127.0.0.1:50051
#   make test  sets up the same environment and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LISTEN ?= 127.0.0.1:50051
DATA   ?= data

.PHONY: install run test torture lint bench bench-service proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install when the contract or the packaging changes (the build regenerates the stubs from proto/).
$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py $(wildcard proto/idcheck/v1/*.proto)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/idcheck serve --demo --listen $(LISTEN) --data $(DATA)

test: install
	$(BIN)/python -m pytest -q

# Longer crash-safety run for operators: 200 SIGKILLs at random moments, uploads of up to 3,000 rows.
torture: install
	IDCHECK_CRASH_KILLS=200 IDCHECK_CRASH_UPLOAD_ROWS=3000 $(BIN)/python -m pytest -q -s --timeout 7200 tests/server/test_crash_safety.py

lint: install
	$(BIN)/ruff check idcheck tests bench
	$(BIN)/ruff format --check idcheck tests bench

# Regenerate idcheck/v1 from proto/ (the build does this; here without reinstalling dependencies).
proto: $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps -e .

bench: install
	$(BIN)/python -m pytest bench --benchmark-only -q

bench-service: install
	$(BIN)/python bench/load.py --records 1000000

clean:
	rm -rf $(VENV) build *.egg-info idcheck/v1 .pytest_cache .ruff_cache .benchmarks
