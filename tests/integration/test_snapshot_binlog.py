"""sync-snapshot --versions binlog, continued by sync-binlog, against real MariaDB + Redis."""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.capture.binlog.service import stream_name
from sync.keys import binlog_position_key, version_key
from sync.position import ROW_MASK, PositionStore, gtid_version
from sync.rows.reader import TableReader
from sync.testing.servers import MariaDBServer, RedisServer
from sync.tools.progress import ProgressStore
from sync.tools.snapshot import Snapshot, Versions, open_table

from .binlog_rig import Running, binlog_pos, diff, mysql_state, redis_state, settings, wait_caught_up

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT_BIN = str(REPO / ".venv" / "bin" / "sync-snapshot")


def make_data(db: Any, rows: int) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT, name VARCHAR(64))")
        cur.execute(f"INSERT INTO data SELECT seq, seq % 1000, CONCAT('row-', seq) FROM seq_1_to_{rows}")


class Writer:
    """Commits random updates (and some inserts/deletes) until stopped."""

    def __init__(self, server: MariaDBServer, database: str, rows: int, seed: int = 7) -> None:
        self.conn = server.connect(database)
        self.rows = rows
        self.rng = random.Random(seed)
        self.n = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        with self.conn.cursor() as cur:
            while not self._stop.is_set():
                i = self.rng.randint(1, self.rows + 200)
                r = self.rng.random()
                if r < 0.8:
                    cur.execute("UPDATE data SET volume = volume + 1, name = %s WHERE id = %s", (f"w{self.n}", i))
                elif r < 0.9:
                    cur.execute("INSERT INTO data VALUES (%s, 1, 'new') ON DUPLICATE KEY UPDATE volume = -1", (i,))
                else:
                    cur.execute("DELETE FROM data WHERE id = %s", (i,))
                self.n += 1

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.conn.close()

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop()


def _target(mariadb: MariaDBServer, db: Any, r: RedisServer, template: str):
    return open_table(table="data", database=db.db_name, mysql_url=f"mysql://root@127.0.0.1:{mariadb.port}/",
                      redis_url=f"redis://127.0.0.1:{r.port}/0", key_template=template, env={})


def test_cli_snapshot_under_writes_then_binlog_equals_mysql(mariadb: MariaDBServer, db: Any,
                                                            redis_server: RedisServer, redis_client: Any) -> None:
    """sync-snapshot --versions binlog while a writer commits, then sync-binlog from the position
    the snapshot stored (no --start): Redis equals MySQL."""
    make_data(db, 4000)
    name = db.db_name
    with Writer(mariadb, name, 4000) as w:
        time.sleep(0.2)
        out = subprocess.run(
            [SNAPSHOT_BIN, "--table", "data", "--database", name, "--mysql-url", f"mysql://root@127.0.0.1:{mariadb.port}/",
             "--redis-url", f"redis://127.0.0.1:{redis_server.port}/0", "--versions", "binlog", "--chunk", "200",
             "--progress", "log", "--log-format", "json"],
            capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        time.sleep(0.3)
        w.stop()
    assert w.n > 50, "the writer barely ran during the snapshot"
    # --log-format json: stderr is JSON events only, the binlog point and the saved position among them
    events = {e["event"]: e for e in map(orjson.loads, out.stderr.splitlines())}
    assert events["snapshot_binlog_start"]["gtid"], out.stderr
    assert " set to " + events["snapshot_binlog_start"]["gtid"] in events["snapshot_next_step"]["note"], out.stderr
    st = settings(mariadb, name, ["data"], redis_server)
    key = binlog_position_key(stream_name(st.mysql, name, ["data"]))
    saved = orjson.loads(redis_client.get(key))
    assert f"--start {saved['gtid']}" in out.stderr
    with Running(st) as run:
        assert run.service.position is not None
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
    assert diff(mysql_state(mariadb, name, "data"), redis_state(redis_client, "data")) == {}


def test_versions_order_changes_around_the_point(mariadb: MariaDBServer, db: Any, redis_server: RedisServer,
                                                 redis_client: Any) -> None:
    """A change before P: included in the snapshot row and STALE when replayed; a change after P,
    applied by sync-binlog BEFORE the snapshot writes that row: the snapshot row is STALE."""
    name = db.db_name
    make_data(db, 10)
    g0 = binlog_pos(mariadb)
    with db.cursor() as cur:
        cur.execute("UPDATE data SET name = 'before' WHERE id = 1")        # at or before P
    template = "bl:{table}:{pk}"

    state: dict[str, Any] = {}

    async def go() -> Any:
        target = _target(mariadb, db, redis_server, template)
        try:
            snap = Snapshot(TableReader(target.conn, target.schema), target.applier(),
                            ProgressStore(target.redis, "data"), target.spec, chunk=1, versions=Versions.BINLOG,
                            binlog_positions=PositionStore(target.redis, "after-p"))

            def on_progress(n: int, last: Any) -> None:
                if n == 1:  # row 1 applied; rows >= 3 not read yet
                    with db.cursor() as cur:
                        cur.execute("UPDATE data SET name = 'after' WHERE id = 5")   # after P
                    p = snap._point
                    assert p is not None
                    run = Running(settings(mariadb, name, ["data"], redis_server, key_template=template,
                                           name="after-p", start=p.gtid)).wait_started()
                    wait_caught_up(mariadb, redis_client, run.service.positions.key)
                    state["stats"] = run.service.stats.snapshot()
                    run.stop()
                    assert redis_client.get("bl:data:5") is not None

            return await snap.run(on_progress=on_progress)
        finally:
            await target.close()

    res = asyncio.run(go())
    p = res.binlog_start
    assert p is not None and p == res.binlog_read_at
    assert state["stats"]["applied"] == 1                       # only the change after P
    assert res.stale == 1                                        # row 5's snapshot row lost to it
    assert orjson.loads(redis_client.get("bl:data:5"))["name"] == "after"
    assert orjson.loads(redis_client.get("bl:data:1"))["name"] == "before"
    snap_v = gtid_version(p.seq, ROW_MASK)
    assert int(redis_client.get(version_key("bl:data:1"))) == snap_v
    assert int(redis_client.get(version_key("bl:data:5"))) > snap_v
    assert "already at or after" in (res.position_note or "")  # sync-binlog was already past P: kept
    # Replay everything from before the 'before' change: all of it is at/before P or already applied.
    with Running(settings(mariadb, name, ["data"], redis_server, key_template=template, name="replay",
                          start=g0)) as run:
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        stats = run.service.stats.snapshot()
    assert stats["applied"] == 0 and stats["stale"] == 2     # 'before' (<= P) and 'after' (same version)
    assert diff(mysql_state(mariadb, name, "data", template),
                {k: v for k, v in redis_state(redis_client, "bl:data").items()}) == {}


def test_interrupted_then_resumed_keeps_the_first_point(mariadb: MariaDBServer, db: Any,
                                                        redis_server: RedisServer, redis_client: Any) -> None:
    """Stopped after the first chunk, writes, resumed: the rows read after resuming get the new
    point's version, the start stays the first point, and sync-binlog from it converges."""
    name = db.db_name
    make_data(db, 300)

    async def snapshot(stop_after_first: bool) -> Any:
        target = _target(mariadb, db, redis_server, "{table}:{pk}")
        try:
            snap = Snapshot(TableReader(target.conn, target.schema), target.applier(),
                            ProgressStore(target.redis, "data"), target.spec, chunk=100, versions=Versions.BINLOG,
                            binlog_positions=PositionStore(target.redis, stream_name(target.mysql, name, ["data"])))
            return await snap.run(on_progress=(lambda n, last: snap.request_stop()) if stop_after_first else None)
        finally:
            await target.close()

    first = asyncio.run(snapshot(True))
    assert first.interrupted and first.total_rows == 100
    with db.cursor() as cur:
        cur.execute("UPDATE data SET name = 'moved-on' WHERE id IN (5, 150, 250)")
        cur.execute("DELETE FROM data WHERE id IN (6, 260)")
        cur.execute("INSERT INTO data VALUES (7000, 1, 'late')")
    second = asyncio.run(snapshot(False))
    assert not second.interrupted and second.resumed_after == [100] and second.total_rows == 300
    assert second.binlog_start == first.binlog_start
    assert second.binlog_read_at is not None and second.binlog_read_at.seq > first.binlog_start.seq
    assert int(redis_client.get(version_key("data:150"))) == second.binlog_read_at.version
    assert int(redis_client.get(version_key("data:5"))) == first.binlog_start.version
    # Row 5 is stale in Redis until sync-binlog (from the first point, stored) replays the update.
    assert orjson.loads(redis_client.get("data:5"))["name"] == "row-5"
    with Running(settings(mariadb, name, ["data"], redis_server)) as run:
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
    state = redis_state(redis_client, "data")
    assert diff(mysql_state(mariadb, name, "data"), state) == {}
