"""Helpers of the sync-binlog integration tests: run a BinlogService in a thread, wait for it to
catch up with the server, and compare Redis with the canonical rows MySQL holds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pymysql

from sync.capture.binlog.service import BinlogService, BinlogSettings
from sync.keys import row_key
from sync.mysql import from_url
from sync.redis_client import RedisSettings
from sync.rows.rowcodec import encode_json
from sync.rows.schema import READ_SESSION_SQL, load_table, quote_ident, read_sql
from sync.testing.servers import MariaDBServer, RedisServer


def settings(server: MariaDBServer, database: str, tables: Sequence[str], redis_server: RedisServer, **kw: Any) -> BinlogSettings:
    kw.setdefault("stats_interval_s", 0)
    kw.setdefault("heartbeat_s", 0.5)
    return BinlogSettings(
        mysql=from_url(server.url + database), database=database, tables=tuple(tables),
        redis=RedisSettings(url=f"redis://{redis_server.host}:{redis_server.port}/0"), **kw,
    )


class Running:
    """A BinlogService running in its own thread and event loop."""

    def __init__(self, settings: BinlogSettings) -> None:
        self.service = BinlogService(settings)
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            self.result = asyncio.run(self.service.run())
        except BaseException as exc:  # reported by stop()/wait_started()
            self.error = exc

    def wait_started(self, timeout_s: float = 30.0) -> Running:
        deadline = time.monotonic() + timeout_s
        while self.service.position is None:
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise TimeoutError("sync-binlog did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 30.0) -> Any:
        self.service.request_stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "sync-binlog did not stop"
        if self.error is not None:
            raise self.error
        return self.result

    def __enter__(self) -> Running:
        return self.wait_started()

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()


def update_until_retried(cur: Any, run: Running, retries: int = 2, updates: int = 200, rows: int = 50) -> None:
    """`updates` single-row UPDATEs of data(id, volume) over ids 0..rows-1 while the sink is away,
    then wait (30 s at most) until the service has failed `retries` deliveries."""
    for i in range(updates):
        cur.execute("UPDATE data SET volume = volume + 1 WHERE id = %s", (i % rows,))
    deadline = time.monotonic() + 30
    while run.service.stats.retries < retries and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.service.stats.retries >= retries


def binlog_pos(server: MariaDBServer) -> str:
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@global.gtid_binlog_pos")
            return str(cur.fetchone()[0])
    finally:
        conn.close()


def wait_caught_up(server: MariaDBServer, redis_client: Any, key: str, timeout_s: float = 30.0) -> str:
    """Wait until the position saved in Redis under `key` is the server's gtid_binlog_pos."""
    import orjson

    target = binlog_pos(server)
    deadline = time.monotonic() + timeout_s
    saved = None
    while time.monotonic() < deadline:
        raw = redis_client.get(key)
        saved = orjson.loads(raw)["gtid"] if raw else None
        if saved == target:
            return target
        time.sleep(0.05)
    raise AssertionError(f"position {saved!r} did not reach {target!r}")


def mysql_state(server: MariaDBServer, database: str, table: str, template: str = "{table}:{pk}") -> dict[str, bytes]:
    """Redis key → json value that MySQL's rows call for (canonical values from a pymysql read)."""
    plain = server.connect(database)
    try:
        schema = load_table(plain, database, table)
    finally:
        plain.close()
    conn = server.connect(database, cursorclass=pymysql.cursors.DictCursor)
    try:
        with conn.cursor() as cur:
            cur.execute(READ_SESSION_SQL)
            cols = ", ".join(f"{read_sql(c)} AS {quote_ident(c.name)}" for c in schema.columns)
            cur.execute(f"SELECT {cols} FROM {quote_ident(table)}")
            out = {}
            for row in cur.fetchall():
                canon = schema.canonical_row(row)
                out[row_key(template, table, schema.canonical_pk(row))] = encode_json(canon)
            return out
    finally:
        conn.close()


def redis_state(client: Any, table: str) -> dict[str, bytes]:
    prefix = table.encode() + b":"
    return {k.decode(): client.get(k) for k in client.scan_iter(match=prefix + b"*", count=1000)}


def diff(a: dict[str, bytes], b: dict[str, bytes]) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
