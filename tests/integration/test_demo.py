"""`make demo` end to end, non-interactively: python -m sync.demo --ci with a small load.

Each run starts its own servers under a temp state dir (the demo's own, not the session fixtures).
Checked: the exit code, Redis equal to MySQL for both key templates, and that nothing the demo
started is still running afterwards (its pids, and any process whose command line or working
directory is in the state dir). Also: --keep-running + an independent comparison + --stop, and
Ctrl-C in the middle of the load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest
import redis

from sync.rows.expected import expected_entry, select_sql
from sync.rows.schema import READ_SESSION_SQL, load_table
from sync.tables import TableSpec

REPO = Path(__file__).resolve().parent.parent.parent
DEMO = [sys.executable, "-m", "sync.demo", "--ci", "--no-install"]

pytestmark = pytest.mark.timeout(180)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _processes_in(state: Path) -> list[str]:
    """Live processes whose command line mentions the state dir or whose cwd is inside it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (str(state) in cmdline or cwd.startswith(str(state))) and _alive(int(entry.name)):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _run(args: list[str], timeout_s: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DEMO, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


def _assert_all_stopped(state: Path, summary: dict) -> None:
    names = {p["name"] for p in summary["processes"]["stopped"]}
    assert {"mariadb", "redis", "gearmand", "worker-1", "worker-2", "relay", "binlog"} <= names
    for p in summary["processes"]["stopped"]:
        assert not _alive(p["pid"]), p
    assert summary["processes"]["left_running"] == []
    assert list((state / "pids").glob("*.pid")) == []
    assert _processes_in(state) == []


def test_demo_ci_converges_and_stops_everything(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    result = _run(["--rows", "500", "--seconds", "5", "--state-dir", str(state)])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = json.loads((state / "summary.json").read_text())
    assert set(summary["verify"]) == {"trigger", "binlog"}
    for name, report in summary["verify"].items():
        assert report["equal"] and report["exit_code"] == 0, (name, report)
        assert report["rows"] > 500 and report["missing"] == report["different"] == report["extra"] == 0
    assert summary["load"]["written"] >= 400
    assert all(v["synced"] == summary["load"]["written"] for v in summary["lag"].values())
    _assert_all_stopped(state, summary)
    assert "EQUAL" in result.stdout and "demo: OK" in result.stdout


def test_keep_running_then_stop(tmp_path: Path) -> None:
    """--keep-running leaves a converged stack: compare it ourselves, then --stop (make demo-stop)."""
    state = tmp_path / "demo"
    result = _run(["--rows", "300", "--seconds", "2", "--rate", "150", "--keep-running", "--state-dir", str(state)])
    try:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        summary = json.loads((state / "summary.json").read_text())
        pids = {p.stem for p in (state / "pids").glob("*.pid")}
        assert {"mariadb", "redis", "gearmand", "worker-1", "worker-2", "relay", "binlog"} <= pids, pids
        assert "demo" not in pids, pids
        ports = summary["ports"]
        conn = pymysql.connect(host="127.0.0.1", port=ports["mysql"], user="root", database="demo")
        r = redis.Redis(host="127.0.0.1", port=ports["redis"])
        try:
            schema = load_table(conn, "demo", "data")
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute(READ_SESSION_SQL)
                cur.execute(select_sql(schema))
                rows = cur.fetchall()
            assert len(rows) > 100
            for template in ("{table}:{pk}", "binlog:{table}:{pk}"):
                expected = dict(expected_entry(schema, TableSpec("data", key_template=template), row) for row in rows)
                keys = list(expected)
                wrong = [(k, got, expected[k]) for k, got in zip(keys, r.mget(keys)) if got != expected[k]]
                assert not wrong, f"{template}: {len(wrong)} keys differ, e.g. {wrong[:3]}"
                prefix = template.split("{table}")[0] + "data:"
                found = {k.decode() for k in r.scan_iter(match=prefix + "*", count=1000)}
                # no extra keys (deleted rows are gone)
                assert found == set(expected), (template, sorted(found - set(expected))[:5],
                                                sorted(set(expected) - found)[:5])
        finally:
            conn.close()
            r.close()
    finally:
        stop = _run(["--stop", "--state-dir", str(state)], timeout_s=120)
    assert stop.returncode == 0 and "stopped:" in stop.stdout, stop.stdout + stop.stderr
    assert list((state / "pids").glob("*.pid")) == []
    assert _processes_in(state) == []
    # a second --stop finds nothing
    again = _run(["--stop", "--state-dir", str(state)])
    assert again.returncode == 0 and "no demo running" in again.stdout


def test_ctrl_c_during_the_load_stops_everything(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    proc = subprocess.Popen([*DEMO, "--rows", "200", "--seconds", "60", "--state-dir", str(state)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            out.append(line)
            if "written=" in line and "written=0 " not in line:
                break
            assert time.monotonic() < deadline, "".join(out)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        rest, _ = proc.communicate(timeout=90)
        out.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(out)
    assert proc.returncode == 130, text[-4000:]
    assert "interrupted: stopping everything" in text
    summary = json.loads((state / "summary.json").read_text())
    _assert_all_stopped(state, summary)
