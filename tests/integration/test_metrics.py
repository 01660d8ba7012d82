"""sync-worker, sync-binlog and sync-relay --metrics-port: scrape /metrics over HTTP from the running
process and check the per-table series a user would graph."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sync.testing.servers import GearmanServer, RedisServer, free_port
from tests.integration.test_sync_worker import change, start_worker_process, submit_sync

pytestmark = pytest.mark.timeout(120)

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(m: Samples, name: str, **labels: str) -> float | None:
    return m.get((name, frozenset(labels.items())))


def per_table(m: Samples, name: str) -> dict[str, float]:
    """The samples of one series by their table label."""
    return {dict(labels)["table"]: v for (n, labels), v in m.items() if n == name}


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(what: str, probe: Callable[[], Any], ok: Callable[[Any], bool], timeout_s: float = 30) -> Any:
    """probe() until ok(result) (connection errors count as not yet); AssertionError with the last result."""
    deadline = time.monotonic() + timeout_s
    got: Any = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except OSError as exc:
            got = exc
        else:
            if ok(got):
                return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: last seen {got!r}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    assert proc.wait(20) == 0


def test_worker_series_per_table_and_health(gearmand: GearmanServer, redis_server: RedisServer,
                                            redis_client: Any) -> None:
    port = free_port()
    data = [change("data", "update", {"id": i}, {"id": i, "volume": 1}, 10) for i in range(20)]
    users = [change("users", "update", {"id": i}, {"id": i, "name": "u"}, 10) for i in range(7)]
    users += [change("users", "update", {"id": i}, {"id": i, "name": "old"}, 5) for i in range(3)]   # stale
    users += [b"{not json", b'{"v":2}']                                                               # dead
    submit_sync(gearmand, "gearsync.data", data)
    submit_sync(gearmand, "gearsync.users", users)
    t0 = time.time()
    proc = start_worker_process(gearmand, redis_server, "--table", "users", "--metrics-port", str(port),
                                "--batch", "8")
    try:
        m = wait_for("all jobs counted", lambda: scrape(port),
                     lambda m: per_table(m, "gearsync_jobs_total") == {"data": 20, "users": 12})
        assert per_table(m, "gearsync_applied_total") == {"data": 20, "users": 7}
        assert per_table(m, "gearsync_stale_skipped_total") == {"data": 0, "users": 3}
        assert per_table(m, "gearsync_dead_total") == {"data": 0, "users": 2}
        assert value(m, "gearsync_retries_total") == 0
        assert (value(m, "gearsync_batch_seconds_count") or 0) >= 4
        for table in ("data", "users"):
            assert t0 - 1 <= (value(m, "gearsync_last_applied_timestamp_seconds", table=table) or 0) <= time.time()
        # only the worker's own series: none of sync-binlog's or sync-relay's, no *_created
        assert not [k for k in m if k[0].startswith(("gearsync_binlog_", "gearsync_relay_", "gearsync_spool_"))
                    or k[0].endswith("_created")], sorted(m)
        # polled gauges: the dead letters stored, the drained queues
        m = wait_for("polled gauges", lambda: scrape(port),
                     lambda m: value(m, "gearsync_dead_letters", table="users") == 2
                     and value(m, "gearsync_gearman_queued_jobs", function="gearsync.data", table="data") == 0)
        assert value(m, "gearsync_dead_letters", table="data") == 0
        assert value(m, "gearsync_gearman_queued_jobs", function="gearsync.users", table="users") == 0
        code, doc = healthz(port)
        assert code == 200 and doc["status"] == "ok" and doc["command"] == "sync-worker", doc
        assert doc["gearman_connections"] == 1 and doc["jobs"] == 32, doc
        assert value(scrape(port), "gearsync_healthy") == 1

        # Redis paused: /healthz says so, the queue gauge shows the jobs waiting in gearmand
        redis_server.pause()
        try:
            submit_sync(gearmand, "gearsync.data", [change("data", "update", {"id": i}, {"id": i}, 99)
                                                    for i in range(30)])
            code, doc = wait_for("503 while Redis is paused", lambda: healthz(port), lambda r: r[0] == 503)
            assert doc["status"] == "unhealthy" and doc["reason"].startswith("redis: "), doc
            wait_for("queue depth while Redis is paused", lambda: scrape(port),
                     lambda m: value(m, "gearsync_gearman_queued_jobs", function="gearsync.data", table="data") == 30)
            assert value(scrape(port), "gearsync_healthy") == 0
        finally:
            redis_server.resume()
        wait_for("200 after Redis came back", lambda: healthz(port), lambda r: r[0] == 200)
        m = wait_for("the held jobs applied", lambda: scrape(port),
                     lambda m: per_table(m, "gearsync_applied_total") == {"data": 50, "users": 7})

        # gearmand gone: 503 naming it, and back to 200 once the worker reconnected
        gearmand.stop()
        try:
            code, doc = wait_for("503 while gearmand is down", lambda: healthz(port), lambda r: r[0] == 503)
            assert doc["reason"] == f"not connected to any gearmand ({gearmand.address})", doc
        finally:
            gearmand.start()
        wait_for("200 after gearmand came back", lambda: healthz(port), lambda r: r[0] == 200)
    finally:
        stop(proc)


def test_bad_metrics_addr_is_a_one_line_error(gearmand: GearmanServer, redis_server: RedisServer) -> None:
    proc = start_worker_process(gearmand, redis_server, "--metrics-port", str(free_port()),
                                "--metrics-addr", "no-such-host.invalid")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "--metrics-addr: 'no-such-host.invalid' does not resolve" in lines[0], lines


def test_busy_metrics_port_is_a_one_line_error(gearmand: GearmanServer, redis_server: RedisServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = start_worker_process(gearmand, redis_server, "--metrics-port", str(port))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and b"--metrics-port: cannot listen on 127.0.0.1:" in err and b"Traceback" not in err


def test_binlog_series_per_table_and_health(mariadb, db, redis_server: RedisServer, redis_client: Any,
                                            tmp_path: Path) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
    port = free_port()
    log = open(tmp_path / "binlog.log", "ab")
    proc = subprocess.Popen(
        [str(BIN / "sync-binlog"), "--table", "data,users", "--mysql-url", mariadb.url + name, "--redis-url",
         f"redis://127.0.0.1:{redis_server.port}/0", "--start", "current", "--stats-interval", "0",
         "--metrics-port", str(port), "--log-format", "json"], stdout=log, stderr=log)
    try:
        wait_for("healthy once streaming", lambda: healthz(port), lambda r: r[0] == 200)
        with db.cursor() as cur:
            cur.executemany("INSERT INTO data VALUES (%s, 1)", [(i,) for i in range(30)])
            cur.execute("UPDATE data SET volume = 2 WHERE id < 10")
            cur.executemany("INSERT INTO users VALUES (%s, 'u')", [(i,) for i in range(5)])
        m = wait_for("changes counted", lambda: scrape(port),
                     lambda m: per_table(m, "gearsync_applied_total") == {"data": 40, "users": 5})
        assert per_table(m, "gearsync_binlog_changes_read_total") == {"data": 40, "users": 5}
        assert per_table(m, "gearsync_stale_skipped_total") == {"data": 0, "users": 0}
        assert not [k for k in m if k[0] in ("gearsync_jobs_total", "gearsync_lag_seconds", "gearsync_dead_total")]
        assert (value(m, "gearsync_last_applied_timestamp_seconds", table="users") or 0) > 0
        wait_for("caught up", lambda: scrape(port), lambda m: value(m, "gearsync_binlog_behind_seconds") == 0)
        code, doc = healthz(port)
        assert code == 200 and doc["command"] == "sync-binlog" and doc["behind_seconds"] == 0, doc

        redis_server.stop()
        try:
            code, doc = wait_for("503 while Redis is down", lambda: healthz(port), lambda r: r[0] == 503)
            assert doc["status"] == "unhealthy" and "redis" in doc["reason"], doc
            with db.cursor() as cur:
                cur.execute("DELETE FROM users WHERE id = 0")
            # the change cannot be delivered: the reader holds it and falls behind the server
            wait_for("behind while the change waits", lambda: scrape(port),
                     lambda m: (value(m, "gearsync_binlog_behind_seconds") or 0) >= 1)
            assert healthz(port)[0] == 503
        finally:
            redis_server.start()
        wait_for("200 after Redis came back", lambda: healthz(port), lambda r: r[0] == 200)
        m = wait_for("the held change delivered, caught up again", lambda: scrape(port),
                     lambda m: value(m, "gearsync_binlog_changes_read_total", table="users") == 6
                     and value(m, "gearsync_binlog_behind_seconds") == 0)
        assert per_table(m, "gearsync_applied_total") == {"data": 40, "users": 6}
        assert redis_client.exists("users:0") == 0
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, (tmp_path / "binlog.log").read_text()[-2000:]
        log.close()
        if not redis_server.running:
            redis_server.start()


def test_relay_series_and_health(mariadb, gearmand_factory, db) -> None:
    from tests.integration.test_relay import fill_spool

    g: GearmanServer = gearmand_factory()
    g.stop()
    fill_spool(db, 30, ("gearsync.a", "gearsync.b", "custom_fn"))
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "sync-relay"), "--database", db.db_name, "--servers", g.address, "--mysql-url",
         f"mysql://root@127.0.0.1:{mariadb.port}/", "--no-watch-triggers", "--stats-interval", "0",
         "--metrics-port", str(port), "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "GEARSYNC_MYSQL_PASSWORD": ""})
    try:
        # 503 "starting" until the relay's first round; then 503 naming the unreachable gearmand
        code, doc = wait_for("503 while gearmand is down", lambda: healthz(port),
                             lambda r: r[0] == 503 and r[1]["reason"] != "starting")
        assert doc["status"] == "unhealthy" and doc["reason"].startswith("unreachable: "), doc
        m = wait_for("spool rows", lambda: scrape(port),
                     lambda m: value(m, "gearsync_spool_rows", database=db.db_name) == 30)
        assert (value(m, "gearsync_relay_errors_total") or 0) >= 1
        g.start()
        m = wait_for("relayed", lambda: scrape(port),
                     lambda m: value(m, "gearsync_spool_rows", database=db.db_name) == 0
                     and value(m, "gearsync_relay_rows_total", database=db.db_name, table="a") == 10)
        assert value(m, "gearsync_relay_rows_total", database=db.db_name, table="b") == 10
        assert value(m, "gearsync_relay_rows_total", database=db.db_name, table="custom_fn") == 10
        code, doc = wait_for("200 once drained", lambda: healthz(port), lambda r: r[0] == 200)
        assert doc["command"] == "sync-relay" and doc["relayed"] == 30, doc
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
