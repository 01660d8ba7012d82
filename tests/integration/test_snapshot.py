"""sync-snapshot against real MariaDB + Redis (+ gearmand, triggers and a worker for the live test)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from sync.apply.worker import SyncWorker
from sync.capture.triggers import TriggerOptions, install_statements
from sync.config import worker_settings
from sync.rows.expected import expected_state as rows_expected_state
from sync.rows.reader import TableReader, fast_conversions
from sync.rows.schema import load_table
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer
from sync.tools.progress import ProgressStore
from sync.tools.snapshot import Snapshot, open_table
from tests.integration.udf_fixtures import point_at, udf_installed  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT_BIN = str(REPO / ".venv" / "bin" / "sync-snapshot")


def make_data(db: Any, rows: int) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT, name VARCHAR(64), updated_at DATETIME)")
        if rows:
            cur.execute("INSERT INTO data SELECT seq, seq % 1000, CONCAT('row-', seq), "
                        f"'2026-01-01' + INTERVAL seq SECOND FROM seq_1_to_{rows}")


def expected_state(db: Any, table: str, spec: TableSpec) -> dict[str, Any]:
    """key → value for every row, through the default pymysql conversions (not the snapshot's)."""
    return rows_expected_state(db, load_table(db, db.db_name, table), spec)


def redis_state(client: Any, pattern: str, fmt: str) -> dict[str, Any]:
    out = {}
    for k in client.scan_iter(match=pattern, count=1000):
        key = k.decode()
        if key.startswith("gearsync:"):
            continue
        out[key] = client.hgetall(k) if fmt == "hash" else client.get(k)
    return out


async def run_snapshot(mariadb: MariaDBServer, db: Any, r: RedisServer, table: str, *, chunk: int = 1000,
                       fmt: str = "json", template: str = "{table}:{pk}", restart: bool = False):
    target = open_table(table=table, database=db.db_name, mysql_url=f"mysql://root@127.0.0.1:{mariadb.port}/",
                        redis_url=f"redis://127.0.0.1:{r.port}/0", fmt=fmt, key_template=template, env={})
    try:
        snap = Snapshot(TableReader(target.conn, target.schema), target.applier(),
                        ProgressStore(target.redis, table), target.spec, chunk=chunk)
        return await snap.run(restart=restart)
    finally:
        await target.close()


def test_version_is_taken_after_the_row_lock(db: Any, mariadb: MariaDBServer) -> None:
    """The design's premise: with row 5 locked by an uncommitted UPDATE, the snapshot SELECT
    waits, and the UUID_SHORT() of row 5 is computed after the writer's (later) UUID_SHORT()."""
    make_data(db, 10)
    writer = mariadb.connect(db.db_name)
    reader_conn = mariadb.connect(db.db_name, conv=fast_conversions())
    try:
        schema = load_table(reader_conn, db.db_name, "data")
        reader = TableReader(reader_conn, schema)
        with writer.cursor() as cur:
            cur.execute("START TRANSACTION")
            cur.execute("UPDATE data SET volume = -1 WHERE id = 5")
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(rows=reader.chunk(None, 100, versioned=True)))
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), "the locking read did not wait for the uncommitted writer"
        with writer.cursor() as cur:
            cur.execute("SELECT UUID_SHORT()")
            writer_version = int(cur.fetchone()[0])
            cur.execute("COMMIT")
        t.join(10)
        rows = {r["id"]: r for r in result["rows"]}
        assert rows[5]["volume"] == -1                      # the committed value
        assert rows[5]["__gearsync_version"] > writer_version
        assert rows[4]["__gearsync_version"] < writer_version   # read before the wait
    finally:
        writer.close()
        reader_conn.close()


@pytest.mark.parametrize("fmt", ["json", "hash"])
async def test_snapshot_equals_mysql_for_every_type(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                                    redis_client: Any, fmt: str) -> None:
    with db.cursor() as cur:
        cur.execute(
            "CREATE TABLE t (tenant VARCHAR(20), id BIGINT UNSIGNED, d DATE, dt DATETIME(3), ts TIMESTAMP(6) NULL, "
            "tm TIME(2), dec1 DECIMAL(10,4), f FLOAT, b VARBINARY(8), txt TEXT CHARACTER SET latin1, "
            "PRIMARY KEY (tenant, id))"
        )
        cur.execute("SET time_zone = '+02:00'")
        cur.execute(
            "INSERT INTO t VALUES ('a:b', 18446744073709551615, '2026-02-03', '2026-02-03 04:05:06.789', "
            "'2026-02-03 04:05:06.000001', '-01:02:03.40', 12.5, 0.1, UNHEX('FFFE00'), 'caf\\xe9'), "
            "('a', 1, NULL, NULL, NULL, '838:59:59', -0.0001, NULL, 'ok', NULL), "
            "('', 2, '0000-00-00', '0000-00-00 00:00:00', NULL, '00:00:00', 0, 3, '', '')"
        )
    res = await run_snapshot(mariadb, db, redis_server, "t", chunk=2, fmt=fmt)
    assert res.rows == 3 and res.applied == 3 and not res.interrupted
    spec = TableSpec("t", format=fmt)
    assert redis_state(redis_client, "t:*", fmt) == expected_state(db, "t", spec)
    assert len(redis_client.keys("t:*")) == 3  # ('a:b', …) and ('a', …) do not collide


async def test_snapshot_resumes_after_the_saved_key(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                                    redis_client: Any) -> None:
    make_data(db, 2500)
    progress = ProgressStore(aioredis.Redis(port=redis_server.port), "data")
    try:
        # As if a first run had applied the rows up to id 1000 and died.
        await progress.save(state="running", last=[1000], rows=1000, started_ms=1,
                            settings={"database": db.db_name, "key_template": "{table}:{pk}", "format": "json",
                                      "columns": "id,volume,name,updated_at", "versions": "trigger"})
        res = await run_snapshot(mariadb, db, redis_server, "data", chunk=700)
        assert res.resumed_after == [1000]
        assert res.rows == 1500 and res.total_rows == 2500
        assert redis_client.get("data:1000") is None and redis_client.get("data:1001") is not None
        saved = await progress.load()
        assert saved is not None and saved.state == "done" and saved.rows == 2500 and saved.last == [2500]
        # Done: the next run starts over.
        res = await run_snapshot(mariadb, db, redis_server, "data", chunk=700)
        assert res.resumed_after is None and res.rows == 2500
    finally:
        await progress.redis.aclose()


def snapshot_process(mariadb: MariaDBServer, db: Any, r: RedisServer, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GEARSYNC_MYSQL_URL": f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}",
           "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{r.port}/0"}
    return subprocess.Popen([SNAPSHOT_BIN, "--table", "data", "--progress", "log", "--log-level", "warning", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_progress(client: Any, minimum: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = client.hget("gearsync:snapshot:data", "rows")
        if rows and int(rows) >= minimum:
            return
        time.sleep(0.01)
    raise AssertionError("snapshot made no progress")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_snapshot_process_interrupted_then_resumed(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                                   redis_client: Any, sig: int) -> None:
    make_data(db, 30000)
    proc = snapshot_process(mariadb, db, redis_server, "--chunk", "200")
    try:
        wait_progress(redis_client, 400)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved_rows = int(redis_client.hget("gearsync:snapshot:data", "rows"))
    assert redis_client.hget("gearsync:snapshot:data", "state") == b"running"
    assert 0 < saved_rows < 30000
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert b"interrupted after key id=" in err and b"run the same command to resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    last = orjson.loads(redis_client.hget("gearsync:snapshot:data", "last"))[0]
    proc = snapshot_process(mariadb, db, redis_server, "--chunk", "5000")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"data resuming after key id={last} ({saved_rows} rows done)".encode() in err
    assert b"30000 rows in total" in err
    assert redis_state(redis_client, "data:*", "json") == expected_state(db, "data", TableSpec("data"))
    # --restart ignores the saved point.
    proc = snapshot_process(mariadb, db, redis_server, "--restart")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"resuming" not in err and b"30000 rows copied" in err


def test_snapshot_cli_bad_input(db: Any, mariadb: MariaDBServer, redis_server: RedisServer) -> None:
    proc = snapshot_process(mariadb, db, redis_server, "--table", "nope")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and b"does not exist" in err and b"Traceback" not in err
    env = {**os.environ, "GEARSYNC_MYSQL_URL": f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}", "GEARSYNC_REDIS_URL": "redis://127.0.0.1:1/0"}
    make_data(db, 10)
    proc = subprocess.run([SNAPSHOT_BIN, "--table", "data"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 3 and b"redis" in proc.stderr.lower() and b"Traceback" not in proc.stderr


async def test_snapshot_with_live_triggers_and_worker(db: Any, mariadb: MariaDBServer, udf_installed: MariaDBServer,  # noqa: F811
                                                      gearmand: GearmanServer, redis_server: RedisServer,
                                                      redis_client: Any) -> None:
    """Random updates, deletes and inserts through the real capture triggers while the snapshot
    runs and a worker applies the changes: at the end Redis equals MySQL, row for row."""
    make_data(db, 20000)
    point_at(db, gearmand)
    schema = load_table(db, db.db_name, "data")
    with db.cursor() as cur:
        for stmt in install_statements(schema, TriggerOptions.for_table("data")):
            cur.execute(stmt)
    settings = worker_settings(tables=["data"], servers=gearmand.address,
                               redis_url=f"redis://127.0.0.1:{redis_server.port}/0", env={})
    worker = SyncWorker(settings)
    worker_task = asyncio.ensure_future(worker.run())
    stop = threading.Event()
    counts = {"writes": 0}

    def updater(seed: int) -> None:
        rng = random.Random(seed)
        conn = mariadb.connect(db.db_name)
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    rid = rng.randrange(1, 21000)
                    op = rng.random()
                    if op < 0.8:
                        cur.execute("UPDATE data SET volume = volume + 1, name = %s WHERE id = %s",
                                    (f"u{rng.randrange(10**6)}", rid))
                    elif op < 0.9:
                        cur.execute("DELETE FROM data WHERE id = %s", (rid,))
                    else:
                        cur.execute("INSERT IGNORE INTO data VALUES (%s, 1, 'new', NOW())", (rid,))
                    counts["writes"] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=updater, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        await asyncio.sleep(0.2)
        res = await run_snapshot(mariadb, db, redis_server, "data", chunk=500)
        assert res.rows > 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    # Let the worker drain what the triggers queued.
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            from sync.gearman import admin

            st = {s.name: s for s in await admin.status(gearmand.host, gearmand.port)}
            if "gearsync.data" not in st or st["gearsync.data"].queued == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(worker_task, 15) == 0
    assert counts["writes"] > 100, counts
    with db.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM gearsync_spool")
        assert cur.fetchone()[0] == 0  # every change went through gearmand
    assert redis_state(redis_client, "data:*", "json") == expected_state(db, "data", TableSpec("data"))
    assert worker.stats.applied > 0 and res.stale >= 0
