"""The fault report and its table: runs accumulate, and every run's figures are shown in order."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import RUNS_ENV, fault_runs
from .report import merge

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault_table.py"


def _fault_table():
    spec = importlib.util.spec_from_file_location("fault_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(written: int, **details: object) -> dict:
    return {"case": "gearmand SIGKILL", "kind": "fault", "written": written, "lost": 0, "differences": 0,
            "time": "t", **details}


def test_runs_accumulate_and_each_run_is_shown(tmp_path: Path) -> None:
    data = merge({}, [_run(1434, kills=3), _run(1502, kills=3)])
    data = merge(json.loads(json.dumps(data)), [_run(1390, kills=2, duplicates_fenced=7)])   # a later session
    row = _fault_table().table(data).splitlines()[2]
    assert row.startswith("| gearmand SIGKILL | fault | 3 | 1,434 / 1,502 / 1,390 | 0 / 0 / 0 | 0 / 0 / 0 |"), row
    assert "kills 3 / 3 / 2" in row and "duplicates fenced – / – / 7" in row, row


def test_write_replaces_only_the_table(tmp_path: Path) -> None:
    report, md = tmp_path / "runs.json", tmp_path / "faults.md"
    report.write_text(json.dumps(merge({}, [_run(10), _run(20), _run(30)])))
    md.write_text("intro\n<!-- fault-table:begin -->\nold\n<!-- fault-table:end -->\nafter\n")
    r = subprocess.run([sys.executable, str(SCRIPT), str(report), "--write", str(md)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = md.read_text()
    assert text.startswith("intro\n<!-- fault-table:begin -->\n| case |") and text.endswith("<!-- fault-table:end -->\nafter\n")
    assert "| 10 / 20 / 30 |" in text and "old" not in text


@pytest.mark.parametrize("value", ["0", "x", "-1", "101"])
def test_bad_runs_value_names_it(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNS_ENV, value)
    with pytest.raises(pytest.UsageError, match=f"{RUNS_ENV}='{value}': expected a whole number"):
        fault_runs()


def test_runs_default_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RUNS_ENV, raising=False)
    assert fault_runs() == 1
    monkeypatch.setenv(RUNS_ENV, "3")
    assert fault_runs() == 3
