"""Shared pieces of the trigger / relay end-to-end tests (no tests here).

Workers and relays run in-process, each on its own thread with its own event loop, so the tests
can drive MySQL with plain blocking pymysql calls while changes flow to Redis.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sync.apply.worker import SyncWorker
from sync.capture.relay import RelaySettings, SpoolRelay
from sync.capture.triggers import TriggerOptions, install_statements
from sync.config import worker_settings
from sync.mysql import MySQLSettings
from sync.rows.expected import expected_state as rows_expected_state
from sync.rows.schema import TableSchema, load_table
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer
from workers.sync_triggers import last_other_triggers

CLASSIC_TRIGGER_SQL = Path(__file__).resolve().parents[2] / "sql" / "classic-trigger.sql"


class LoopThread:
    """Runs `make()`'s object's `run()` coroutine on a thread; `stop()` asks it to stop."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self.obj: Any = None
        self.rc: Any = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.obj = self._make()
            self._ready.set()
            self.rc = await self.obj.run()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._ready.set()

    def start(self) -> LoopThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self, timeout_s: float = 20.0) -> Any:
        if self.loop is not None and self.obj is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.obj.request_stop)
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "did not stop in time"
        if self.error is not None:
            raise self.error
        return self.rc

    def __enter__(self) -> LoopThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_thread(g: GearmanServer, r: RedisServer, table: str, **kw: Any) -> LoopThread:
    settings = worker_settings(tables=[table], servers=g.address, redis_url=f"redis://{r.host}:{r.port}/0",
                               env={}, **kw)
    return LoopThread(lambda: SyncWorker(settings, idle_timeout_s=0.2))


def classic_worker_thread(g: GearmanServer, r: RedisServer) -> LoopThread:
    settings = worker_settings(tables=[], classic=True, servers=g.address,
                               redis_url=f"redis://{r.host}:{r.port}/0", env={})
    return LoopThread(lambda: SyncWorker(settings, idle_timeout_s=0.2))


def mysql_of(server: MariaDBServer, database: str | None = None) -> MySQLSettings:
    return MySQLSettings(host=server.host, port=server.port, user=server.user, password=server.password,
                         database=database)


def relay_settings(server: MariaDBServer, database: str, g: GearmanServer, **kw: Any) -> RelaySettings:
    kw.setdefault("stats_interval_s", 0)
    return RelaySettings(mysql=mysql_of(server), databases=(database,), servers=[(g.host, g.port)], **kw)


def relay_thread(server: MariaDBServer, database: str, g: GearmanServer, **kw: Any) -> LoopThread:
    settings = relay_settings(server, database, g, **kw)
    return LoopThread(lambda: SpoolRelay(settings))


def install(conn: Any, table: str, columns: list[str] | None = None, **options: str) -> TableSchema:
    """What `sync-triggers install` does, on the test's connection."""
    schema = load_table(conn, conn.db_name, table).select(columns)
    opts = TriggerOptions.for_table(table, options.pop("function", None), **options)
    with conn.cursor() as cur:
        for stmt in install_statements(schema, opts, last_other_triggers(conn, schema)):
            cur.execute(stmt)
    return schema


def expected_state(server: MariaDBServer, schema: TableSchema, spec: TableSpec) -> dict[str, Any]:
    """Redis key → value that MySQL's committed rows call for."""
    conn = server.connect(schema.database)
    try:
        return rows_expected_state(conn, schema, spec)
    finally:
        conn.close()


def redis_state(client: Any, spec: TableSpec) -> dict[str, Any]:
    """Every row key in Redis (gearsync's own keys left out) → its value."""
    out: dict[str, Any] = {}
    for raw in client.scan_iter(count=1000):
        key = raw.decode("utf-8", "surrogateescape")
        if key.startswith("gearsync:"):
            continue
        out[key] = client.hgetall(raw) if spec.format == "hash" else client.get(raw)
    return out


def diff(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    keys = set(expected) | set(actual)
    return {k: (expected.get(k), actual.get(k)) for k in keys if expected.get(k) != actual.get(k)}


def wait_converged(server: MariaDBServer, schema: TableSchema, client: Any, spec: TableSpec | None = None,
                   timeout_s: float = 30.0) -> dict[str, tuple[Any, Any]]:
    """Wait until Redis equals MySQL; returns the remaining differences (empty = converged)."""
    spec = spec or TableSpec(schema.name)
    deadline = time.monotonic() + timeout_s
    while True:
        d = diff(expected_state(server, schema, spec), redis_state(client, spec))
        if not d or time.monotonic() > deadline:
            return d
        time.sleep(0.05)


def spool_count(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM gearsync_spool")
        return int(cur.fetchone()[0])


def classic_setup(server: MariaDBServer, conn: Any, rows: int) -> None:
    """The classic recipe's table `data` (id, volume) with rows (i, 10 * i) for i = 1..rows and its
    trigger datatoredis, created by the mariadb client from sql/classic-trigger.sql as a user would."""
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
        cur.executemany("INSERT INTO data VALUES (%s, %s)", [(i, 10 * i) for i in range(1, rows + 1)])
    with CLASSIC_TRIGGER_SQL.open("rb") as sql:
        subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", str(server.port), "-u", "root", conn.db_name],
                       stdin=sql, check=True, capture_output=True)
