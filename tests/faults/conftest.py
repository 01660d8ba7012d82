"""Fault-suite fixtures: every case is marked `faults`, and its figures go to the report.

With GEARSYNC_FAULT_REPORT=path set, the figures of every case that ran (runs, changes written,
changes lost, differences after verify, and what else the case measured) are merged into that JSON
file when the session ends; scripts/fault_table.py turns it into docs/faults.md.
"""

from __future__ import annotations

import pytest

from tests.integration.udf_fixtures import own_mariadb, udf_installed  # noqa: F401  (fixtures)

from .report import write_report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    write_report()
