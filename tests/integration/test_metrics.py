"""sync-worker and sync-binlog --metrics-port: scrape /metrics over HTTP from the running process."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest

from sync.testing.servers import GearmanServer, RedisServer, free_port
from tests.integration.test_sync_worker import change, start_worker_process, submit_sync

pytestmark = pytest.mark.timeout(60)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_worker_exposes_counters(gearmand: GearmanServer, redis_server: RedisServer, redis_client: Any) -> None:
    port = free_port()
    jobs = [change("data", "update", {"id": i}, {"id": i, "volume": 1}, 10) for i in range(20)]
    jobs += [change("data", "update", {"id": i}, {"id": i, "volume": 0}, 5) for i in range(5)]   # older: stale
    jobs += [b"{not json", b"[]", b'{"v":2}']                                                      # dead
    submit_sync(gearmand, "gearsync.data", jobs)
    proc = start_worker_process(gearmand, redis_server, "--metrics-port", str(port), "--batch", "8")
    try:
        deadline = time.monotonic() + 20
        m: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                m = scrape(port)
            except OSError:
                time.sleep(0.05)
                continue
            if m.get("gearsync_jobs_total") == len(jobs):
                break
            time.sleep(0.05)
        assert m.get("gearsync_jobs_total") == 28, m
        assert m["gearsync_applied_total"] == 20
        assert m["gearsync_stale_skipped_total"] == 5
        assert m["gearsync_dead_total"] == 3
        assert m["gearsync_retries_total"] == 0
        assert m["gearsync_batch_seconds_count"] >= 4 and m["gearsync_batch_seconds_sum"] > 0
        assert m["gearsync_lag_seconds"] >= 0
        # Redis down: the held batch is retried, and the retries counter shows it.
        redis_server.stop()
        submit_sync(gearmand, "gearsync.data", [change("data", "update", {"id": 1}, {"id": 1}, 99)])
        deadline = time.monotonic() + 20
        while scrape(port)["gearsync_retries_total"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scrape(port)["gearsync_retries_total"] >= 1
        redis_server.start()
        deadline = time.monotonic() + 20
        while scrape(port)["gearsync_applied_total"] < 21 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scrape(port)["gearsync_applied_total"] == 21
    finally:
        proc.terminate()
        proc.wait(15)
        if not redis_server.running:
            redis_server.start()


def test_busy_metrics_port_is_a_one_line_error(gearmand: GearmanServer, redis_server: RedisServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = start_worker_process(gearmand, redis_server, "--metrics-port", str(port))
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and b"--metrics-port" in err and b"Traceback" not in err


def test_binlog_exposes_counters(mariadb, db, redis_server: RedisServer, redis_client: Any, tmp_path) -> None:
    import subprocess
    from pathlib import Path

    from sync.capture.binlog.service import stream_name
    from sync.keys import binlog_position_key
    from sync.mysql import from_url

    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    url = mariadb.url + name
    port = free_port()
    bin_dir = Path(__file__).resolve().parents[2] / ".venv" / "bin"
    log = open(tmp_path / "binlog.log", "ab")
    proc = subprocess.Popen(
        [str(bin_dir / "sync-binlog"), "--table", "data", "--mysql-url", url, "--redis-url",
         f"redis://127.0.0.1:{redis_server.port}/0", "--start", "current", "--stats-interval", "0",
         "--metrics-port", str(port), "--log-format", "json"], stdout=log, stderr=log)
    try:
        key = binlog_position_key(stream_name(from_url(url), name, ["data"]))
        deadline = time.monotonic() + 30
        while redis_client.get(key) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with db.cursor() as cur:
            cur.executemany("INSERT INTO data VALUES (%s, 1)", [(i,) for i in range(30)])
            cur.execute("UPDATE data SET volume = 2 WHERE id < 10")
        deadline = time.monotonic() + 30
        m: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                m = scrape(port)
            except OSError:
                time.sleep(0.05)
                continue
            if m.get("gearsync_applied_total", 0) >= 40:
                break
            time.sleep(0.05)
        assert m.get("gearsync_applied_total") == 40, m
        assert m["gearsync_jobs_total"] == 40 and m["gearsync_stale_skipped_total"] == 0
        assert m["gearsync_batch_seconds_count"] >= 1
    finally:
        proc.terminate()
        assert proc.wait(15) == 0, (tmp_path / "binlog.log").read_text()[-2000:]
        log.close()
