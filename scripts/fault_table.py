#!/usr/bin/env python3
"""Turn the fault report JSON (GEARSYNC_FAULT_REPORT=path pytest tests/faults …) into docs/faults.md's table.

    GEARSYNC_FAULT_REPORT=/tmp/faults.json .venv/bin/python -m pytest tests/faults tests/integration/test_bad_input.py
    python scripts/fault_table.py /tmp/faults.json            # the Markdown table on stdout
    python scripts/fault_table.py /tmp/faults.json --write docs/faults.md   # replace the table between the markers
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"
KINDS = {"fault": 0, "bad input": 1, "fuzz": 2}


def _notes(case: dict) -> str:
    d = case["details"][-1]
    keep = {
        "queued_at_kill": "{} jobs queued at the kill", "queued_after_restart": "{} back after restart",
        "spooled_while_down": "{} changes spooled", "worst_statement_s_while_stopped": "worst statement {} s",
        "worst_statement_s_while_down": "worst statement {} s", "queued_while_redis_down": "{} jobs held",
        "missing_before_repair": "{} keys gone with Redis, repaired", "kills": "{} kills",
        "queued_after_kills": "{} jobs requeued", "backlog": "backlog {}", "relay_kills": "{} relay kills",
        "spooled_after_restarts": "spooled after each restart {}", "writer_reconnects": "{} reconnects",
        "duplicates_fenced": "{} duplicates fenced", "classes": "{} payload classes",
        "forged": "{} forged jobs", "dead_letters": "{} dead letters", "execs_per_s": "{} execs/s", "coverage_edges": "{} edges",
        "seconds": "{} s",
    }
    out = []
    for k, fmt in keep.items():
        if k in d and d[k] not in (None, 0, [], ""):
            out.append(fmt.format(d[k]))
    return ", ".join(out)


def table(data: dict) -> str:
    rows = ["| case | kind | runs | changes written | changes lost | differences after verify | last run |",
            "|---|---|---:|---:|---:|---:|---|"]
    cases = sorted(data.get("cases", {}).items(), key=lambda kv: (KINDS.get(kv[1]["kind"], 9), kv[0]))
    for name, c in cases:
        written = f"{c['written']:,}"
        if c["kind"] == "fuzz":
            written += " execs"
        elif c["kind"] == "bad input":
            written += " inputs"
        rows.append(f"| {name} | {c['kind']} | {c['runs']} | {written} | {c['lost']} | {c['differences']} | "
                    f"{_notes(c)} |")
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
