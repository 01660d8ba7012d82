#!/usr/bin/env python3
"""Turn the fault report JSON (GEARSYNC_FAULT_REPORT=path pytest tests/faults …) into docs/faults.md's table.

    make faults-report        # every case 3 times (FAULT_RUNS), runs added to docs/faults-runs.json, table rewritten
    GEARSYNC_FAULT_RUNS=3 GEARSYNC_FAULT_REPORT=/tmp/faults.json .venv/bin/python -m pytest tests/faults
    python scripts/fault_table.py /tmp/faults.json            # the Markdown table on stdout
    python scripts/fault_table.py /tmp/faults.json --write docs/faults.md   # replace the table between the markers

Every run recorded in the JSON is shown: "1,434 / 1,502 / 1,390" changes written in three runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"
KINDS = {"fault": 0, "bad input": 1, "fuzz": 2}


# per-run details shown in the last column: key -> label (values of the runs follow it, " / " between)
NOTES = {
    "queued_at_kill": "jobs queued at the kill", "queued_after_restart": "back after restart",
    "spooled_while_down": "changes spooled", "worst_statement_s_while_stopped": "worst statement (s)",
    "worst_statement_s_while_down": "worst statement (s)", "queued_while_redis_down": "jobs held",
    "held_while_oom": "jobs held at OOM", "oom_replies": "OOM retries", "oom_log_lines": "OOM log lines",
    "missing_before_repair": "keys gone with Redis (repaired)", "differences_before_repair": "differences before repair",
    "kills": "kills", "queued_after_kills": "jobs requeued", "backlog": "backlog", "relay_kills": "relay kills",
    "spooled_after_restarts": "spooled after each restart", "in_flight_committed": "in flight at the kill, committed",
    "in_flight_failed": "in flight at the kill, not committed", "writer_reconnects": "reconnects",
    "binlog_reconnects": "sync-binlog reconnects",
    "phantoms": "phantoms", "journal_jobs_read": "jobs read back from the UDF journal",
    "duplicates_fenced": "duplicates fenced", "classes": "payload classes",
    "forged": "forged jobs", "dead_letters": "dead letters", "execs_per_s": "execs/s", "coverage_edges": "edges",
    "seconds": "seconds",
}


def _runs(case: dict, key: str) -> list:
    """The value of `key` in each run (the totals of the runs recorded before per-run figures: one value)."""
    details = case.get("details") or []
    if key in ("written", "lost", "differences"):
        if len(details) == case["runs"] and all(key in d for d in details):
            return [d[key] for d in details]
        return [case[key]]
    return [d.get(key) for d in details]


def _join(values: list) -> str:
    return " / ".join("–" if v is None else f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else
                      str(v) for v in values)


def _notes(case: dict) -> str:
    out = []
    for key, label in NOTES.items():
        values = _runs(case, key)
        if any(v not in (None, 0, [], "") for v in values):
            out.append(f"{label} {_join(values)}")
    return "; ".join(out)


def table(data: dict) -> str:
    """One row per case; the figures of every run, in order, separated by " / "."""
    rows = ["| case | kind | runs | changes written | changes lost | differences after verify | per run |",
            "|---|---|---:|---:|---:|---:|---|"]
    cases = sorted(data.get("cases", {}).items(), key=lambda kv: (KINDS.get(kv[1]["kind"], 9), kv[0]))
    for name, c in cases:
        written = _join(_runs(c, "written"))
        if c["kind"] == "fuzz":
            written += " execs"
        elif c["kind"] == "bad input":
            written += " inputs"
        rows.append(f"| {name} | {c['kind']} | {c['runs']} | {written} | {_join(_runs(c, 'lost'))} | "
                    f"{_join(_runs(c, 'differences'))} | {_notes(c)} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="the JSON file written with GEARSYNC_FAULT_REPORT")
    p.add_argument("--write", metavar="MD", help="replace the table between the fault-table markers in MD")
    args = p.parse_args()
    try:
        data = json.loads(Path(args.report).read_text())
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"fault_table: error: {args.report}: {exc}\n")
        return 2
    text = table(data)
    if not args.write:
        sys.stdout.write(text)
        return 0
    md = Path(args.write)
    doc = md.read_text()
    if BEGIN not in doc or END not in doc:
        sys.stderr.write(f"fault_table: error: {md} has no {BEGIN} … {END} markers\n")
        return 2
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    md.write_text(head + BEGIN + "\n" + text + END + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
