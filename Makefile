# gearsync — top-level targets. `make help` lists them.
PYTHON ?= .venv/bin/python
UDF_DIR := udf

.PHONY: help venv build-udf install-udf uninstall-udf test test-udf-asan test-udf-valgrind bench-udf bench-worker clean

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

venv:  ## create .venv with gearsync and the dev tools
	python3 -m venv .venv
	.venv/bin/pip install -q -e '.[dev]'

build-udf:  ## build udf/build/gearsync_udf.so against the server UDF headers
	$(MAKE) -C $(UDF_DIR)

install-udf: build-udf  ## copy the UDF library into @@plugin_dir and CREATE FUNCTION (MYSQL_* / MYSQL_URL env)
	$(PYTHON) -m sync.udf_install install --library $(UDF_DIR)/build/gearsync_udf.so

uninstall-udf:  ## DROP the UDF functions (MYSQL_* / MYSQL_URL env)
	$(PYTHON) -m sync.udf_install uninstall

test:  ## the whole test suite against throwaway real servers
	$(PYTHON) -m pytest -q

test-udf-asan:  ## UDF tests with the library built under AddressSanitizer/UBSan
	$(MAKE) -C $(UDF_DIR) asan
	$(MAKE) -C $(UDF_DIR) test-asan

test-udf-valgrind:  ## UDF unit driver under valgrind memcheck
	$(MAKE) -C $(UDF_DIR) valgrind

bench-udf:  ## trigger overhead: 20k single-row UPDATEs and one 10k-row UPDATE, with/without the UDF trigger
	$(PYTHON) -m sync.bench udf

bench-worker:  ## drain 100k pre-queued change jobs with one and two sync-worker processes
	$(PYTHON) -m sync.bench worker

clean:  ## remove build output
	$(MAKE) -C $(UDF_DIR) clean
