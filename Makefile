# Two commands do all the set-up: `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
# Test processes (pytest-xdist): the tests mostly wait on sockets and subprocesses, so
# three share two cores well (1070 tests: 11.5 min in one process, under 5 in three).
TEST_JOBS ?= 3
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install chromium prometheus bench lint clean demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/hitl-proxy serve $(ARGS)

# Debian's Chromium for the browser tests (never a browser download of Playwright's own).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# Debian's Prometheus and promtool for the deploy tests (a real server scrapes the gate).
prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

test: $(VENV)/.installed chromium prometheus
	$(VENV)/bin/hitl-proxy policy test
	$(PY) -m pytest -q -n $(TEST_JOBS) $(PYTEST_ARGS)

# Benchmarks (not tests): wrk, tinyproxy and squid from Debian's packages.
bench: $(VENV)/.installed
	@PATH="$$PATH:/usr/sbin"; for tool in wrk tinyproxy squid nginx taskset; do command -v $$tool >/dev/null 2>&1 || missing=1; done; \
		[ -z "$$missing" ] || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -qq wrk tinyproxy squid nginx util-linux >/dev/null; }
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/bench_policy.py
	$(PY) bench/bench_decision_log.py --rounds 2
	$(PY) bench/bench_holds.py
	$(PY) bench/bench_tls.py --runs 3

# Pinned: a new release adds rules, and lint must not turn red on its own.
lint: $(VENV)/.installed
	$(PY) -m pip install -q ruff==0.17.6 mypy==2.4.1 types-PyYAML==6.0.12.20261122
	$(PY) -m ruff check proxy review_ui tests bench demo
	$(PY) -m mypy

clean:
	rm -rf $(VENV) hitl-data build *.egg-info

# The whole loop offline: loopback fakes of Stripe, SendGrid, Slack, a SQL gateway and an MCP server, the
# gate with the shipped policies, and a scripted agent; a reviewer decides in the web UI.
demo: $(VENV)/.installed
	$(PY) -m demo.run $(DEMO_ARGS)
