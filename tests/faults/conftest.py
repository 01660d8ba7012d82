"""Fault-suite fixtures: every case is marked `faults`, and its figures go to the report.

With GEARSYNC_FAULT_REPORT=path set, the figures of every case that ran (runs, changes written,
changes lost, differences after verify, and what else the case measured) are merged into that JSON
file when the session ends; scripts/fault_table.py turns it into docs/faults.md.

GEARSYNC_FAULT_RUNS=N (default 1) runs every case of tests/faults N times (test ids `…[run1]` …
`…[runN]`), each run with its own servers and its own record: `make faults-report` uses 3. CI
runs each case once.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.udf_fixtures import own_mariadb, udf_installed  # noqa: F401  (fixtures)

from .report import write_report

RUNS_ENV = "GEARSYNC_FAULT_RUNS"


def fault_runs() -> int:
    """How many times each case runs: $GEARSYNC_FAULT_RUNS, 1 when unset."""
    text = os.environ.get(RUNS_ENV, "").strip() or "1"
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise pytest.UsageError(f"{RUNS_ENV}={text!r}: expected a whole number of runs from 1 to 100")
    return int(text)


def _in_faults(path: object) -> bool:
    return "tests/faults/" in str(path).replace("\\", "/")


def pytest_configure(config: pytest.Config) -> None:
    fault_runs()   # a bad value stops the session with one line, before anything runs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    runs = fault_runs()
    if runs > 1 and _in_faults(metafunc.definition.fspath):
        metafunc.fixturenames.append("fault_run")
        metafunc.parametrize("fault_run", range(1, runs + 1), ids=[f"run{i}" for i in range(1, runs + 1)])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _in_faults(item.fspath):
            item.add_marker(pytest.mark.faults)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    write_report()
