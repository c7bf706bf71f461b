# greenpipe: `make run` starts web + three workers; `make test` runs the suite.
# Both build .venv from requirements.txt first (once, and again when it changes;
# --no-compile: Python compiles what it imports, a third less CPU than all of it),
# with greenpipe itself installed editable for the `greenpipe` command.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-bench test-thorough test-without-tools bench loadtest scenario screenshot lint clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile --disable-pip-version-check -r requirements.txt
	# greenpipe itself, editable: the `greenpipe` command (.venv/bin/greenpipe)
	$(BIN)/python -m pip install --quiet --no-compile --disable-pip-version-check \
	  --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	@touch $@

run: $(STAMP)  ## web on :4567 + workers on :4444-4446, via honcho (Procfile)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start

# Tests run in TEST_WORKERS processes at once (pytest-xdist): most of their
# time is spent waiting on real processes, each on ports the OS picks.
TEST_WORKERS ?= 4

test: $(STAMP)  ## the whole suite: unit tests and real processes, in parallel
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not thorough and not bench" $(PYTEST_ARGS)

test-bench: $(STAMP)  ## the benchmarks' smoke runs: every section of python -m bench works (CI runs it)
	$(BIN)/python -m pytest -n 2 --dist worksteal -m bench $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the in-process tier, a contributor's first command (seconds)
	$(BIN)/python -m pytest -n 2 --dist worksteal -m "inprocess and not thorough and not slow" $(PYTEST_ARGS)

# More seeds of the in-process models (crash points, the job lifecycle): each
# explores schedules the tests above do not; about a minute. CI runs it.
test-thorough: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m thorough $(PYTEST_ARGS)

# The tests that use optional system tools, run as on a machine without them:
# each must skip with a reason naming the tool, or fall back (CI runs this too).
OPTIONAL_TOOLS := wrk,iptables,ip,redis-server,promtool,chromium,ab
test-without-tools: $(STAMP)
	GREENPIPE_HIDE_TOOLS=$(OPTIONAL_TOOLS) $(BIN)/python -m pytest -rs \
	  tests/faults/test_faults.py::test_network_cut_and_heal \
	  "tests/faults/test_faults.py::test_faults_with_curve_on[cut_drop]" \
	  tests/test_bench.py::test_wrk_load_against_the_bare_app \
	  tests/test_bench.py::test_locust_stats_without_percentiles_are_reported_not_fatal \
	  tests/test_metrics.py::test_promtool_accepts_the_metrics \
	  tests/test_dashboard.py::test_the_page_shows_workers_ready_then_one_not_ready \
	  tests/test_dashboard.py::test_the_page_re_sends_kept_jobs_and_cancels_a_backlog_by_name \
	  tests/test_progress.py::test_the_dashboard_lists_a_running_job_with_its_report \
	  tests/test_dashboard_layout.py::test_no_element_overflows_its_column_at_1300_and_1024_px \
	  tests/test_hosts.py::test_workers_on_three_hosts_with_curve

bench: $(STAMP)  ## benchmarks (not tests): prints a table, writes bench/results/
	$(BIN)/python -m bench

loadtest: $(STAMP)  ## ab-style Locust run against a running web (make run first)
	$(BIN)/python -m loadtest -n 100000 -c 100 http://127.0.0.1:4567/

screenshot: $(STAMP)  ## docs/dashboard.png: the dashboard under load, a worker stopped (needs chromium)
	$(BIN)/python -m tests.dashboard_shot

scenario: $(STAMP)  ## starts everything, kills a worker mid-run, draws the chart
	$(BIN)/python -m loadtest.scenario

lint: $(STAMP)  ## ruff check, ruff format --check, mypy --strict on the public API (pyproject.toml)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
