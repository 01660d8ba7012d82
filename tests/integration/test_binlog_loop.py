"""The binlog reader with the C event loop (GEARSYNC_BINLOG_DECODER=c) against a real MariaDB: rows of
tables not synced skipped below Python, heartbeats handled by the loop, a dump connection killed
mid-stream resumed from the last commit with the same versions, and a real dump connection's bytes
fed one byte per read."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sync.capture.binlog import decoders
from sync.capture.binlog.loop import DumpLoop
from sync.capture.binlog.reader import Chunk
from sync.events import Op
from sync.testing.servers import MariaDBServer
from tests.integration.binlog_rig import binlog_pos
from tests.integration.rowdecode_rig import source

pytestmark = pytest.mark.skipif(decoders._rowdecode is None, reason="the C extension is not built")


def _exec(conn: Any, *sql: str) -> None:
    with conn.cursor() as cur:
        for s in sql:
            cur.execute(s)


class Reader:
    """BinlogSource.run() in a thread, from `start`, collecting its chunks."""

    def __init__(self, server: MariaDBServer, database: str, tables: list[str], start: str) -> None:
        self.src = source(server, database, tables, start, server_id=4343, heartbeat_s=0.2)
        self.chunks: list[Chunk] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            self.src.run(self.chunks.append, self.stop)
        except BaseException as exc:  # reported by until()
            self.error = exc

    def until(self, what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.error is not None:
                raise self.error
            assert time.monotonic() < deadline, f"the reader did not get to: {what}"
            time.sleep(0.02)

    def events(self) -> list[Any]:
        return [e for c in list(self.chunks) for e in c.events]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def reader_of(mariadb: MariaDBServer, db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Reader]]:
    monkeypatch.setenv(decoders.DECODER_ENV, "c")
    made: list[Reader] = []

    def make(tables: list[str], start: str) -> Reader:
        made.append(Reader(mariadb, db.db_name, tables, start))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_other_tables_skipped_and_heartbeats(mariadb: MariaDBServer, db: Any, reader_of: Callable[..., Reader]) -> None:
    _exec(db, "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(10))", "CREATE TABLE b (id INT PRIMARY KEY, v VARCHAR(10))")
    start = binlog_pos(mariadb)
    r = reader_of(["a"], start)
    r.until("connected", lambda: r.src._dump is not None)
    _exec(db, "INSERT INTO b VALUES (1, 'x')", "BEGIN", "INSERT INTO b VALUES (2, 'y')", "INSERT INTO a VALUES (1, 'p')",
          "UPDATE b SET v = 'z'", "UPDATE a SET v = 'q'", "COMMIT", "INSERT INTO b VALUES (3, 'w')",
          "DELETE FROM a WHERE id = 1")
    end = binlog_pos(mariadb)
    r.until("the last commit", lambda: r.src._emitted_position is not None and r.src._emitted_position.gtid == end)
    assert [(e.table, e.op, e.row) for e in r.events()] == [
        ("a", Op.INSERT, {"id": 1, "v": "p"}), ("a", Op.UPDATE, {"id": 1, "v": "q"}), ("a", Op.DELETE, None)]
    assert r.src._dump is not None and r.src._dump.checksum   # binlog_checksum=CRC32: each event's CRC checked in C
    versions = [e.version for e in r.events()]
    assert versions == sorted(versions) and len(set(versions)) == 3
    # Nothing more to send: the server's heartbeats (every 0.2 s) reach the reader through the C loop.
    quiet = r.src.quiet_at
    r.until("a heartbeat", lambda: r.src.quiet_at > quiet, timeout_s=10)
    assert r.src._dump is not None


def test_killed_dump_connection_resumes_from_the_last_commit(mariadb: MariaDBServer, db: Any,
                                                             reader_of: Callable[..., Reader]) -> None:
    _exec(db, "CREATE TABLE a (id INT PRIMARY KEY, v INT)")
    start = binlog_pos(mariadb)
    r = reader_of(["a"], start)
    r.until("connected", lambda: r.src._dump is not None)
    _exec(db, *(f"INSERT INTO a VALUES ({i}, {i})" for i in range(50)))
    r.until("50 rows", lambda: len(r.events()) >= 50)
    first = r.src._dump
    with db.cursor() as cur:
        cur.execute("SELECT id FROM information_schema.processlist WHERE command LIKE 'Binlog Dump%'")
        for (pid,) in cur.fetchall():
            cur.execute(f"KILL {pid}")
    _exec(db, *(f"UPDATE a SET v = v + 1 WHERE id = {i}" for i in range(50)))
    end = binlog_pos(mariadb)
    r.until("the last commit", lambda: r.src._emitted_position is not None and r.src._emitted_position.gtid == end)
    assert r.src._dump is not None and r.src._dump is not first   # a new connection, read by a new loop
    last: dict[Any, Any] = {}
    for e in r.events():
        assert e.version >= last.get(e.pk, (0, None))[0]   # re-read changes come with the same versions
        last[e.pk] = (e.version, e.row)
    assert {pk: row for pk, (_, row) in last.items()} == {(("id", i),): {"id": i, "v": i + 1} for i in range(50)}


def _read_to(src: Any, end: str, feed: Callable[[Any], None]) -> list[Any]:
    """Read `src`'s binlog through the C loop until its committed position is the GTID `end`;
    `feed(dump)` may replace the loop's socket reads. The events emitted."""
    chunks: list[Chunk] = []
    src._emit = chunks.append
    src.stream = src.open_stream(src.committed)
    try:
        src._handle(src.stream.fetchone())
        src._dump = DumpLoop(src.stream)
        src._seed_tables()
        feed(src._dump)
        while src.committed.gtid != end:
            src._items(src._dump.read())
    finally:
        src._dump = None
        src.stream.close()
        src.stream = None
    src._flush(final=True)
    return [e for c in chunks for e in c.events]


def test_real_dump_bytes_fed_byte_by_byte_give_the_same_events(mariadb: MariaDBServer, db: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes one real dump connection delivered, fed to a second reader one byte per read
    (every packet and event header split at every byte): the same events and position."""
    monkeypatch.setenv(decoders.DECODER_ENV, "c")
    _exec(db, "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(300), n INT)", "CREATE TABLE b (id INT PRIMARY KEY)")
    start = binlog_pos(mariadb)
    _exec(db, *(f"INSERT INTO a VALUES ({i}, REPEAT('x', {i * 7}), {i})" for i in range(40)),
          "INSERT INTO b VALUES (1)", "UPDATE a SET n = n + 1 WHERE id < 20", "ALTER TABLE a ADD COLUMN w INT",
          "UPDATE a SET w = id, id = id + 100 WHERE id >= 30", "DELETE FROM a WHERE id < 5")
    end = binlog_pos(mariadb)
    recorded = bytearray()

    def record(dump: Any) -> None:
        read1 = dump._read1

        def read(n: int) -> bytes:
            data = read1(n)
            recorded.extend(data)
            return data
        dump._read1 = read

    first_src = source(mariadb, db.db_name, ["a"], start, server_id=4344)
    first = _read_to(first_src, end, record)
    replay = iter(bytes([b]) for b in bytes(recorded))

    def byte_by_byte(dump: Any) -> None:
        dump._read1 = lambda n: next(replay, b"")

    second_src = source(mariadb, db.db_name, ["a"], start, server_id=4345)
    second = _read_to(second_src, end, byte_by_byte)
    assert [e.op for e in first] == [Op.INSERT] * 40 + [Op.UPDATE] * 20 + [Op.DELETE, Op.UPDATE] * 10 + [Op.DELETE] * 5
    assert second == first
    assert second_src.committed == first_src.committed and len(recorded) > 5000
