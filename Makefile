# `make run` and `make test` each build .venv on first use (Python 3.11+ and make are all they need).
# `make test` runs the suite in .venv, from $(PYTHON), and its `matrix` tests in $(NEWEST_VENV),
# built with the newest Python on the machine (pyenv or PATH), if newer (.ci/test-matrix).
PYTHON ?= python3
VENV ?= .venv
NEWEST_VENV ?= .venv-newest
SOAK_MINUTES ?= 30
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test tools lint bench soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "egress-filter needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/egress-filter run

# The tests drive real peers and capture tools (tshark, tcpdump, dnsmasq, unbound,
# dnsperf, dig); a missing one fails its tests, so install them first (Debian/Ubuntu).
tools:
	bash .ci/install-tools

test: tools
	MAKE="$(MAKE)" PYTHON=$(PYTHON) VENV=$(VENV) NEWEST_VENV=$(NEWEST_VENV) bash .ci/test-matrix $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP) tools
	$(BIN)/python -m bench.policy_bench
	$(BIN)/python -m bench.dns_bench
	$(BIN)/python -m bench.proxy_bench
	$(BIN)/python -m bench.replay_bench
	$(BIN)/python -m bench.rpz_dnsperf_bench

# Not part of `bench` or `test`: 30 minutes of ours, then 30 of Unbound (`make soak SOAK_MINUTES=1440`: 24 h each).
soak: $(STAMP) tools
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) $(NEWEST_VENV) build *.egg-info
