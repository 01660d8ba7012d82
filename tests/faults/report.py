"""The fault report: one record per case and run, merged into $GEARSYNC_FAULT_REPORT at the end.

    record("gearmand SIGKILL, -q mysql", kind="fault", written=3120, lost=0, differences=0, ...)

The file keeps every run ever merged into it: {"cases": {name: {"kind", "runs", "written", "lost",
"differences", "details": [per-run dicts]}}}. Running the suite again against the same file adds
runs, so the table can show "N runs" honestly.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "GEARSYNC_FAULT_REPORT"
_RECORDS: list[dict[str, Any]] = []


def record(case: str, *, kind: str = "fault", written: int, lost: int, differences: int, **details: Any) -> None:
    """Keep one run's figures for the report (written = row changes committed by the writers)."""
    _RECORDS.append({"case": case, "kind": kind, "written": int(written), "lost": int(lost),
                     "differences": int(differences), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **details})


def merge(data: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    cases = data.setdefault("cases", {})
    for r in records:
        c = cases.setdefault(r["case"], {"kind": r["kind"], "runs": 0, "written": 0, "lost": 0,
                                         "differences": 0, "details": []})
        c["runs"] += 1
        c["written"] += r["written"]
        c["lost"] += r["lost"]
        c["differences"] += r["differences"]
        c["details"].append({k: v for k, v in r.items() if k not in ("case", "kind")})
    return data


def write_report(path: str | None = None) -> None:
    path = path or os.environ.get(ENV)
    if not path or not _RECORDS:
        return
    p = Path(path)
    try:
        data = json.loads(p.read_text()) if p.exists() else {}
    except ValueError:
        data = {}
    merge(data, _RECORDS)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(p)
    _RECORDS.clear()


# Also when only tests outside tests/faults recorded figures (the bad-input tests).
atexit.register(write_report)
