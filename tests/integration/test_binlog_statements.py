"""sync-binlog and table statements (QUERY events, no rows): TRUNCATE, DROP (+ CREATE), the gh-ost /
pt-osc RENAME swap, RENAME away (exit 3), and a restart that repeats a TRUNCATE; --sink redis and
--sink gearman (+ sync-worker)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.apply.worker import SyncWorker
from sync.capture.binlog.service import stream_name
from sync.config import WorkerSettings
from sync.keys import binlog_position_key, version_key
from sync.mysql import from_url
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .binlog_rig import Running, diff, mysql_state, redis_state, settings, wait_caught_up

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
SINKS = ["redis", "gearman"]


@contextlib.contextmanager
def sink(sink_name: str, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The BinlogSettings options of the sink; for gearman, a gearmand and a sync-worker running."""
    if sink_name == "redis":
        yield {}
        return
    gearmand: GearmanServer = request.getfixturevalue("gearmand")
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    ws = WorkerSettings(servers=[(gearmand.host, gearmand.port)],
                        redis=settings_redis(redis_server), tables={"data": TableSpec("data")}, stats_interval_s=0)
    worker = SyncWorker(ws, idle_timeout_s=0.2)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(worker.run()), daemon=True)
    thread.start()
    try:
        yield {"sink": "gearman", "servers": ((gearmand.host, gearmand.port),)}
    finally:
        loop.call_soon_threadsafe(worker.request_stop)
        thread.join(30)


def settings_redis(redis_server: RedisServer) -> Any:
    from sync.redis_client import RedisSettings

    return RedisSettings(url=f"redis://{redis_server.host}:{redis_server.port}/0")


@contextlib.contextmanager
def streaming(sink_name: str, request: pytest.FixtureRequest, mariadb: MariaDBServer, db: Any,
              redis_server: RedisServer) -> Iterator[Running]:
    """Table data (id, volume) created, and sync-binlog streaming it through the sink."""
    create_data(db)
    with sink(sink_name, request) as kw, Running(settings(mariadb, db.db_name, ["data"], redis_server, **kw)) as run:
        yield run


def create_data(db: Any) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")


def equal_soon(server: MariaDBServer, database: str, client: Any, timeout_s: float = 30.0) -> dict[str, Any]:
    """The differences between MySQL and Redis once they are equal or `timeout_s` passed (the
    gearman sink applies after the position is saved)."""
    deadline = time.monotonic() + timeout_s
    while True:
        d = diff(mysql_state(server, database, "data"), redis_state(client, "data"))
        if not d or time.monotonic() > deadline:
            return d
        time.sleep(0.1)


def writer(server: MariaDBServer, database: str, first: int, n: int, stop: threading.Event | None = None,
           done: list[int] | None = None) -> None:
    """Insert rows first.. (n of them, or until `stop`), every third one updated too; `done[0]`
    counts the rows written."""
    conn = server.connect(database)
    try:
        with conn.cursor() as cur:
            for i in range(first, first + n):
                if stop is not None and stop.is_set():
                    break
                cur.execute("INSERT INTO data VALUES (%s, %s)", (i, i))
                if i % 3 == 0:
                    cur.execute("UPDATE data SET volume = volume + 1 WHERE id = %s", (i,))
                if done is not None:
                    done[0] += 1
    finally:
        conn.close()


def wait_for(done: list[int], n: int) -> None:
    deadline = time.monotonic() + 60
    while done[0] < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done[0] >= n


@pytest.mark.parametrize("sink_name", SINKS)
def test_truncate_with_writers_before_and_after(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client,
                                               request: pytest.FixtureRequest, sink_name: str) -> None:
    name = db.db_name
    with streaming(sink_name, request, mariadb, db, redis_server) as run:
        stop, done = threading.Event(), [0]
        busy = threading.Thread(target=writer, args=(mariadb, name, 0, 100_000, stop, done))
        busy.start()
        try:
            wait_for(done, 200)
            with db.cursor() as cur:
                cur.execute("/* maintenance */ TRUNCATE TABLE `data`")  # while the writer goes on
            truncated_at = done[0]
            wait_for(done, truncated_at + 200)                          # it goes on after it
        finally:
            stop.set()
            busy.join(60)
        writer(mariadb, name, 1_000_000, 100)                             # and another one later
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        assert equal_soon(mariadb, name, redis_client) == {}
        # rows written before the TRUNCATE are gone, those after it are there
        keys = redis_state(redis_client, "data")
        assert "data:0" not in keys and "data:199" not in keys
        assert f"data:{done[0] - 1}" in keys and len(keys) >= 200 + 100
        assert redis_client.get("data:1000050") == b'{"id":1000050,"volume":1000051}'
        # a removed row leaves a tombstone (the TRUNCATE's version, with the tombstone TTL)
        assert redis_client.pttl(version_key("data:0")) > 0
    p = subprocess.run([str(BIN / "sync-verify"), "--table", "data", "--recheck-delay", "0"], capture_output=True,
                       timeout=60, env={**os.environ, "GEARSYNC_MYSQL_URL": mariadb.url + name,
                                        "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0"})
    assert p.returncode == 0 and b"equal" in p.stdout, (p.stdout, p.stderr)


@pytest.mark.parametrize("sink_name", SINKS)
def test_drop_create_insert(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client,
                            request: pytest.FixtureRequest, sink_name: str) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE other (id INT PRIMARY KEY)")
    with streaming(sink_name, request, mariadb, db, redis_server) as run:
        with db.cursor() as cur:
            cur.executemany("INSERT INTO data VALUES (%s, %s)", [(i, i) for i in range(50)])
            cur.execute(f"DROP TABLE IF EXISTS other, `{name}`.`data`")
            # a new table under the name, another key column type and layout
            cur.execute("CREATE TABLE data (id VARCHAR(10) PRIMARY KEY, name VARCHAR(20), volume INT)")
            cur.executemany("INSERT INTO data VALUES (%s, %s, %s)", [(f"k{i}", f"n{i}", i) for i in range(5)])
            cur.execute("INSERT INTO data VALUES ('7', 'seven', 7)")
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        assert equal_soon(mariadb, name, redis_client) == {}
    assert len(redis_state(redis_client, "data")) == 6
    assert redis_client.get("data:7") == b'{"id":"7","name":"seven","volume":7}'


@pytest.mark.parametrize("sink_name", SINKS)
def test_gh_ost_rename_swap_is_followed(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client,
                                        request: pytest.FixtureRequest, sink_name: str) -> None:
    name = db.db_name
    with streaming(sink_name, request, mariadb, db, redis_server) as run:
        with db.cursor() as cur:
            cur.executemany("INSERT INTO data VALUES (%s, %s)", [(i, i) for i in range(40)])
            cur.execute("CREATE TABLE _data_gho LIKE data")
            cur.execute("ALTER TABLE _data_gho ADD COLUMN extra INT NOT NULL DEFAULT 7")
            cur.execute("INSERT INTO _data_gho (id, volume) SELECT id, volume FROM data")
            cur.execute("RENAME TABLE data TO _data_del, _data_gho TO data")
            cur.execute("UPDATE data SET volume = volume + 1")         # every row: now with extra
            cur.execute("INSERT INTO data VALUES (100, 100, 1)")
            cur.execute("DELETE FROM data WHERE id = 3")
            cur.execute("DROP TABLE _data_del")                         # not a synced table any more
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        assert equal_soon(mariadb, name, redis_client) == {}
    assert orjson.loads(redis_client.get("data:100")) == {"id": 100, "volume": 100, "extra": 1}
    assert len(redis_state(redis_client, "data")) == 40


def test_rename_away_stops_with_exit_3(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client) -> None:
    name = db.db_name
    create_data(db)
    url = mariadb.url + name
    key = binlog_position_key(stream_name(from_url(url), name, ["data"]))
    proc = subprocess.Popen([str(BIN / "sync-binlog"), "--table", "data", "--mysql-url", url, "--redis-url",
                             f"redis://127.0.0.1:{redis_server.port}/0", "--start", "current", "--stats-interval", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while redis_client.get(key) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with db.cursor() as cur:
            cur.execute("INSERT INTO data VALUES (1, 1)")
            cur.execute("RENAME TABLE data TO data_old")
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    errors = [line for line in err.decode().splitlines() if line.startswith("sync-binlog: error:")]
    assert proc.returncode == 3, err.decode()[-2000:]
    assert len(errors) == 1 and f"{name}.data was renamed to {name}.data_old" in errors[0], errors
    assert "binlog position" in errors[0] and "GTID" in errors[0]
    assert redis_client.get("data:1") == b'{"id":1,"volume":1}'   # what came before it landed


def test_restart_repeats_the_truncate_harmlessly(mariadb: MariaDBServer, db, redis_server: RedisServer,
                                                 redis_client) -> None:
    name = db.db_name
    create_data(db)
    st = settings(mariadb, name, ["data"], redis_server)
    with Running(st) as run, db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, %s)", [(i, i) for i in range(100)])
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        key = run.service.positions.key
    before = redis_client.get(key)   # the position before the TRUNCATE
    with db.cursor() as cur:         # while sync-binlog is down
        cur.execute("TRUNCATE data")
        cur.executemany("INSERT INTO data VALUES (%s, %s)", [(i, -i) for i in range(90, 120)])
    with Running(st) as run:
        wait_caught_up(mariadb, redis_client, key)
    assert diff(mysql_state(mariadb, name, "data"), redis_state(redis_client, "data")) == {}
    # As if it had stopped right after the TRUNCATE, before saving its position: it runs again.
    redis_client.set(key, before)
    with Running(st) as run:
        wait_caught_up(mariadb, redis_client, key)
        stats = run.service.stats.snapshot()
    assert diff(mysql_state(mariadb, name, "data"), redis_state(redis_client, "data")) == {}
    assert len(redis_state(redis_client, "data")) == 30 and stats["applied"] == 0
