# idcheck: two commands on a fresh machine.
#   make run   sets up a virtual environment, installs idcheck and serves a demo register on 127.0.0.1:50051
#   make test  sets up the same environment and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LISTEN ?= 127.0.0.1:50051
DATA   ?= data

.PHONY: install run run-tls test torture lint bench bench-1m bench-capacity bench-floor bench-instructions bench-service proto clean

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

# The same demo with mutual TLS on loopback: a CA, a server certificate and member certificates in $(PKI) (made
# once, kept), then serve. Clients: IDCHECK_TARGET=$(TLS_LISTEN) IDCHECK_TLS_DIR=$(PKI) idcheck check --member FJI ...
TLS_LISTEN ?= 127.0.0.1:50052
PKI        ?= $(DATA)/pki
TLS_DATA   ?= $(DATA)/tls
TLS_IDS    ?= NZL:member FJI:border AUS:operator
run-tls: install
	@test -f $(PKI)/ca.pem || $(BIN)/idcheck certs init-ca $(PKI)
	@test -f $(PKI)/server.pem || $(BIN)/idcheck certs issue-server --host 127.0.0.1 --host localhost $(PKI)
	@for id in $(TLS_IDS); do member=$${id%%:*}; role=$${id##*:}; \
	  stem=$$(echo $$member-$$role | tr A-Z a-z); \
	  test -f $(PKI)/$$stem.pem || $(BIN)/idcheck certs issue --member $$member --role $$role $(PKI) || exit 1; \
	done
	$(BIN)/idcheck serve --demo --listen $(TLS_LISTEN) --data $(TLS_DATA) --tls-dir $(PKI)

test: install
	$(BIN)/python -m pytest -q

# The long forms of the issue-9 tests, for operators (README "Torture"; about an hour on two cores):
# crash safety with 200 SIGKILLs and uploads of up to 3,000 rows, a 5-minute soak, 500 generated cases per
# hostile-input property, and 10 minutes of coverage-guided fuzzing of the MRZ parser (atheris, installed here).
TORTURE_ENV = IDCHECK_CRASH_KILLS=200 IDCHECK_CRASH_UPLOAD_ROWS=3000 IDCHECK_SOAK_SECONDS=300 \
	IDCHECK_FUZZ_EXAMPLES=500 IDCHECK_FUZZ_SECONDS=600
torture: install
	$(BIN)/python -m pip install --quiet atheris
	$(TORTURE_ENV) $(BIN)/python -m pytest -q -s --timeout 7200 tests/server/test_crash_safety.py \
		tests/server/test_soak.py tests/server/test_hostile_input.py tests/server/test_hostile_biometrics.py \
		tests/server/test_hostile_audit.py tests/server/test_raw_bytes.py tests/server/test_overload_e2e.py \
		tests/icao/test_fuzz_mrz.py

lint: install
	$(BIN)/ruff check idcheck tests bench
	$(BIN)/ruff format --check idcheck tests bench
	$(BIN)/mypy idcheck bench

# Regenerate idcheck/v1 from proto/ (the build does this; here without reinstalling dependencies).
proto: $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps -e .

# Micro-benchmarks (pytest-benchmark: MRZ, folded key, index lookups, template search), then the quick service
# scenarios of `idcheck bench` on a register of 100,000 records and 10,000 templates, with the baselines.
bench: install
	$(BIN)/python -m pytest bench --benchmark-only -q
	$(BIN)/idcheck bench --records 1e5 --templates 1e4 --duration 5 --baselines --output bench/results/bench-100000.json

# The README's Performance figures: 1,000,000 records, single checks (calls and streams) and manifests of 1,000,
# beside the baselines.
bench-1m: install
	$(BIN)/idcheck bench --records 1e6 --templates 0 --scenarios single@1,single@16,stream@1,stream@16,manifest-1000,manifest-1000@4,documents-1000 --duration 10 \
		--baselines --output bench/results/bench-1000000.json

# What a CheckDocument call and a CheckManifest of 1,000 cost one server process beyond grpc-python's own cost of a
# call (h2load as the client).
bench-floor: install
	$(BIN)/python bench/grpc_floor.py --records 1000000

# Instructions (valgrind's callgrind) the register's own work costs a manifest and a single check: repeatable to within
# 1 % whatever else the machine does, for comparing two versions of the code (run it in each checkout).
bench-instructions: install
	$(BIN)/python bench/instructions.py --records 1000000

# What 1 and 2 server processes answer when the client (h2load, Debian's nghttp2-client) leaves them the cores.
bench-capacity: install
	$(BIN)/python bench/h2load.py --records 1000000 --workers 1 2

bench-service: install
	$(BIN)/python bench/load.py --records 1000000

clean:
	rm -rf $(VENV) build *.egg-info idcheck/v1 .pytest_cache .ruff_cache .benchmarks
