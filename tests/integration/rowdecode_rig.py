"""Helpers of the row-decoder differential tests: read a stretch of a real MariaDB binlog with the
binlog reader (sync.capture.binlog.reader.BinlogSource) twice, once per row decoder (the C
extension and the pure-Python path), and return the change events each produced."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sync.capture.binlog import decoders
from sync.capture.binlog.loop import DumpLoop
from sync.capture.binlog.preflight import check_server
from sync.capture.binlog.reader import BinlogSource, Chunk
from sync.events import ChangeEvent
from sync.mysql import from_url
from sync.position import Position
from sync.rows.schema import load_table
from sync.testing.servers import MariaDBServer


def source(server: MariaDBServer, database: str, tables: Sequence[str], start_gtid: str, *,
           columns: dict[str, Sequence[str] | None] | None = None, **kw: Any) -> BinlogSource:
    """A BinlogSource of `tables` from `start_gtid` (after the server checks), not started."""
    mysql = from_url(server.url + database)
    conn = server.connect(database)
    try:
        info = check_server(conn, mysql, database, tables)
        schemas = {t: load_table(conn, database, t) for t in tables}
    finally:
        conn.close()
    return BinlogSource(mysql, database, schemas, dict(columns or {}), server=info,
                        start=Position("mariadb", start_gtid), **kw)


def read_events(server: MariaDBServer, database: str, tables: Sequence[str], start_gtid: str, decoder: str,
                columns: dict[str, Sequence[str] | None] | None = None,
                loop: bool | None = None, chunks: list[Chunk] | None = None) -> tuple[list[ChangeEvent], BinlogSource]:
    """Every ChangeEvent of `tables` from `start_gtid` to the end of the binlog now, decoded by
    `decoder` ("c" or "python"); `loop`: read by the C event loop after the first event (default:
    what run() does, i.e. with the C decoder) or by the library's fetchone. Returns the events and
    the source (its plans tell which decoder ran). `chunks`: gets the chunks emitted."""
    src = source(server, database, tables, start_gtid, columns=dict(columns or {}), server_id=4242)
    src.decoder = decoder
    out: list[Chunk] = [] if chunks is None else chunks
    src._emit = out.append
    use_loop = decoder == "c" if loop is None else loop
    while True:
        stream = src.open_stream(src.committed, blocking=False)
        src.stream = stream
        try:
            ev = stream.fetchone()
            if ev is None or not use_loop:
                while ev is not None:
                    src._handle(ev)
                    ev = stream.fetchone()
                break
            src._handle(ev)
            src._dump = DumpLoop(stream)   # what run() does once connected
            src._seed_tables()
            try:
                while True:
                    src._items(src._dump.read())
            except ConnectionResetError:
                # The server may reset a non-blocking dump at its end before all was read (the
                # library reconnects by itself then): read on from the last commit, as run() does.
                src._reset_trx()
                src._pending.clear()
                continue
            except ConnectionError:   # the EOF packet: the end of the binlog
                break
        finally:
            src._dump = None
            stream.close()
            src.stream = None
    src._flush(final=True)
    return [e for c in out for e in c.events], src


def both(server: MariaDBServer, database: str, tables: Sequence[str], start_gtid: str,
         **kw: Any) -> tuple[list[ChangeEvent], list[ChangeEvent]]:
    """(C events, Python events); asserts the C decoder really decoded every table's rows."""
    if decoders.decoder_mode() != "c":
        raise AssertionError("the C row decoder is not built (pip install -e . with gcc and Python headers)")
    c_events, c_src = read_events(server, database, tables, start_gtid, "c", **kw)
    py_events, py_src = read_events(server, database, tables, start_gtid, "python", **kw)
    for t in tables:
        plans = c_src.tables[t].plans.values()
        assert plans and all(p.decoder is not None for p in plans), f"table {t}: rows not decoded by the C decoder"
        assert all(p.decoder is None for p in py_src.tables[t].plans.values())
    return c_events, py_events
