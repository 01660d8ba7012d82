# gearsync — top-level targets. `make help` lists them.
PYTHON ?= .venv/bin/python
UDF_DIR := udf
# The demo starts under the system python3 (it installs what is missing, the venv included, then
# continues inside .venv). Options: make demo DEMO_ARGS='--rows 100000 --rate 1000 --seconds 60'
DEMO_ARGS ?=
DEMO_STATE ?= .state/demo
# The targets that run $(PYTHON) start with this: on a fresh checkout (no .venv yet) one line that
# says what to run first, instead of make's "Error 127".
NEED_PYTHON = @command -v "$(PYTHON)" >/dev/null 2>&1 || { echo "make $@: $(PYTHON) not found: run \`make venv\` first (or make $@ PYTHON=/path/to/python with gearsync installed)" >&2; exit 2; }

.PHONY: help venv build-udf install-udf uninstall-udf lint test test-udf-asan test-udf-valgrind test-udf-tsan bench-udf bench-worker \
	demo demo-classic demo-stop docs clean

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

venv:  ## create .venv with gearsync, the dev tools and matplotlib (sync-bench compare --plot)
	@command -v python3 >/dev/null || { echo "make venv needs python3: apt-get install -y python3 python3-venv" >&2; exit 2; }
	python3 -m venv .venv
	.venv/bin/pip install -q -e '.[dev,plot]'

build-udf:  ## build udf/build/gearsync_udf.so against the server UDF headers
	@command -v $(CC) >/dev/null 2>&1 || { echo "make build-udf needs a C compiler ($(CC)): apt-get install -y gcc make libmariadbd-dev" >&2; exit 2; }
	$(MAKE) -C $(UDF_DIR)

install-udf: build-udf  ## copy the UDF library into @@plugin_dir and CREATE FUNCTION (GEARSYNC_MYSQL_* env or --config)
	$(NEED_PYTHON)
	@# GEARSYNC_JOB_KEY set: udf_install also writes @@plugin_dir/gearsync_udf.key (0600, mysqld's user; docs/security.md)
	@test -n "$$GEARSYNC_JOB_KEY" || echo "install-udf: GEARSYNC_JOB_KEY is not set: background jobs will not be signed (docs/security.md)" >&2
	$(PYTHON) -m sync.capture.udf_install install --library $(UDF_DIR)/build/gearsync_udf.so

uninstall-udf:  ## DROP the UDF functions (GEARSYNC_MYSQL_* env or --config)
	$(NEED_PYTHON)
	$(PYTHON) -m sync.capture.udf_install uninstall

lint:  ## ruff (lint rules and import order) and mypy (types of sync/ and workers/), as configured in pyproject.toml
	$(NEED_PYTHON)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

test: lint  ## make lint, then the whole test suite against throwaway real servers
	$(NEED_PYTHON)
	$(PYTHON) -m pytest -q

test-udf-asan:  ## UDF tests with the library built under AddressSanitizer/UBSan
	$(MAKE) -C $(UDF_DIR) asan
	$(MAKE) -C $(UDF_DIR) test-asan

test-udf-valgrind:  ## UDF unit driver under valgrind memcheck
	$(MAKE) -C $(UDF_DIR) valgrind

test-udf-tsan:  ## UDF unit driver (callers' threads + the keeper thread) under ThreadSanitizer; needs clang
	$(MAKE) -C $(UDF_DIR) test-tsan

.PHONY: faults-report
FAULT_RUNS ?= 3
FAULT_JSON ?= docs/faults-runs.json
faults-report:  ## every fault case FAULT_RUNS times (default 3), runs added to FAULT_JSON, docs/faults.md's table rewritten (slow: ~30 min)
	$(NEED_PYTHON)
	GEARSYNC_FAULT_RUNS=$(FAULT_RUNS) GEARSYNC_FAULT_REPORT=$(FAULT_JSON) $(PYTHON) -m pytest -q -p no:cacheprovider tests/faults; \
	rc=$$?; $(PYTHON) scripts/fault_table.py $(FAULT_JSON) --write docs/faults.md && exit $$rc

.PHONY: fuzz-udf
fuzz-udf:  ## libFuzzer (ASan/UBSan) on the UDF entry points and parsers, FUZZ_SECONDS per target (default 300); needs clang
	$(MAKE) -C $(UDF_DIR)/fuzz replay
	$(MAKE) -C $(UDF_DIR)/fuzz run FUZZ_SECONDS=$(or $(FUZZ_SECONDS),300)

.PHONY: fuzz-rowdecode
fuzz-rowdecode:  ## libFuzzer (ASan/UBSan) on the C binlog row decoder, FUZZ_SECONDS (default 300); needs clang and .venv
	$(NEED_PYTHON)
	$(MAKE) -C fuzz/rowdecode replay PYTHON=$(abspath $(PYTHON))
	$(MAKE) -C fuzz/rowdecode run PYTHON=$(abspath $(PYTHON)) FUZZ_SECONDS=$(or $(FUZZ_SECONDS),300)

bench-udf:  ## trigger overhead: 20k single-row UPDATEs and one 10k-row UPDATE, with/without the UDF trigger
	$(NEED_PYTHON)
	$(PYTHON) -m sync.bench udf

bench-worker:  ## drain 100k pre-queued change jobs with one and two sync-worker processes
	$(NEED_PYTHON)
	$(PYTHON) -m sync.bench worker

demo:  ## the whole pipeline on throwaway servers, live display, verify (DEMO_ARGS=--ci: no display, small load)
	@command -v python3 >/dev/null || { echo "make demo needs python3: apt-get install -y python3 python3-venv" >&2; exit 2; }
	python3 -m sync.demo --state-dir $(DEMO_STATE) $(DEMO_ARGS)

demo-classic:  ## the classic recipe: AFTER UPDATE trigger datatoredis, sync-worker --classic, SET <id> <payload>
	@command -v python3 >/dev/null || { echo "make demo-classic needs python3: apt-get install -y python3 python3-venv" >&2; exit 2; }
	python3 -m sync.demo --classic --state-dir $(DEMO_STATE) $(DEMO_ARGS)

demo-stop:  ## stop a demo left running (pid files in .state/demo)
	python3 -m sync.demo --stop --state-dir $(DEMO_STATE)

docs:  ## regenerate docs/cli.md from the commands' --help
	$(NEED_PYTHON)
	$(PYTHON) scripts/gen_cli_reference.py

clean:  ## remove build output and the demo state (.state/demo; a demo still running there is stopped first)
	$(MAKE) -C $(UDF_DIR) clean
	rm -rf fuzz/rowdecode/build
	@if [ -d $(DEMO_STATE) ]; then python3 -m sync.demo --stop --state-dir $(DEMO_STATE) >/dev/null && rm -rf $(DEMO_STATE); fi
	rm -rf build
