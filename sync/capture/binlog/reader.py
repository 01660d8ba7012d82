"""The binlog source: mysql-replication's BinLogStreamReader → ChangeEvent chunks with commit positions.

    BinlogSource(...).run(emit, stop)      # blocking; runs in its own thread (sync.capture.binlog.service)

emit() receives `Chunk`s in binlog order: the ChangeEvents decoded so far, and — when the chunk ends
at a transaction commit — the `Position` after that commit. A position is only ever handed out at
a commit boundary (XID event, a COMMIT query, or the end of a standalone DDL statement), so saving
it and resuming from it never starts inside a transaction. Events of a transaction may be emitted
before its commit (in chunks with no position): the binlog only holds committed transactions, and
after a restart they are re-read from the previous commit and re-applied with the SAME versions,
which the applier's version fence turns into no-ops. With the quiet hook on (run() with `idle`),
commits read back to back are emitted together: at the latest when the server goes quiet, a chunk
is full, or COALESCE_S after the previous emit (and before a reconnect re-reads from the last commit).

With the C decoder (GEARSYNC_BINLOG_DECODER=c, the default when built), once the dump is connected
the reader reads the dump connection's bytes itself (sync.capture.binlog.loop: the C event loop of
_binloop.c): GTID, XID, TABLE_MAP events already seen, rows events (decoded in C; those of tables
not synced skipped there) come back as one item per transaction; everything else becomes the
library's event from its packet bytes and goes through the same handlers. The committed position
is built only when read (a chunk is emitted, a reconnect). With the Python decoder the library's
fetchone reads every event, as before.

Row values are decoded per table-map layout by sync.capture.binlog.decoders (RowPlan). The key
columns come from sync.rows.schema.load_table() and are re-read when a DDL statement names the
table (or a row lacks a key column). Server checks and start positions: sync.capture.binlog.preflight.

Versions (must grow along the binlog for every row, across the whole stream):

    GTID (MariaDB, or MySQL with gtid_mode=ON):
        version = (seq_no << 20) | i        i = index of the row change within the transaction
    MySQL file/position (no GTIDs):
        version = (file number << 44) | (end position of the rows event << 12) | i   (i within the event)

seq_no grows with every transaction of a GTID domain, and i with every row change inside it, so
two changes of one row always get increasing versions. A transaction with more than 2**20 - 1 row
changes (4095 per rows event in file/position mode) would overflow i: the changes past that point
all get the last index (the largest version of the transaction) and are collapsed per row key —
last change wins — and emitted at the commit. That is exactly the committed state of those rows;
MySQL never shows the intermediate states of a transaction either. Memory for that is one event per
distinct key beyond the first million changes of one transaction.

Limits: versions of different MariaDB GTID domains (or MySQL server UUIDs) are not comparable; a
stream is expected to carry one domain (a warning is logged otherwise). seq_no must stay below
2**44.

Table statements (QUERY events, sync.capture.binlog.statements), for a synced table:

    TRUNCATE [TABLE] t, DROP TABLE [IF EXISTS] ..., t, ...
        a TableTruncate(t, version) in the chunk's `statements`, alone in a chunk that ends at the
        statement's commit: version = gtid_version(seq, 0) of its GTID event group (MySQL without
        GTIDs: file number and end position of the event, index 0). The sink removes every row of
        t older than that (sync.apply.truncate) before it saves the position. DROP also forgets the
        table's row plans; a later CREATE TABLE t reloads its schema.
    RENAME TABLE x TO t / ALTER TABLE x RENAME TO t (something takes t's name; the gh-ost and
        pt-online-schema-change swap "RENAME TABLE t TO _t_old, _t_new TO t" too)
        follow t: its schema is reloaded and its later rows apply as usual (the new table is taken
        to hold the same rows).
    RENAME TABLE t TO y with nothing taking t's name: SourceError naming t, y and the statement's
        position; the saved position stays before the statement.

Foreign-key cascades (sync.rows.fkgraph; InnoDB writes no row event for the cascaded child rows):
the FK graph is loaded at start and again after every DDL statement in the database, restricted
to the FKs whose child is a chosen table (sync-binlog serves every table it reads). Rows of a child
carry "refs" (a delete: {} so the applier drops the row from its FK index); an update of a parent
that changes a referenced column, and a parent's delete, carry "cascade" (old/new from the before
and after images; when the key changes, the cascade rides on the upsert of the new key, never on
the delete of the old one). FK and referenced columns outside a --columns selection are read for
that and left out of the row. A parent that is not a chosen table is read too, in cascade-only
mode: its updates of referenced columns and its deletes become op "cascade" events, nothing else.
"""

from __future__ import annotations

import re
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from sync.capture.binlog.decoders import (
    RowPlan,
    compressed_query_event,
    compressed_row_events,
    install_decoders,
    select_decoder,
)
from sync.capture.binlog.fkrows import TableState, fk_row_events
from sync.capture.binlog.loop import DumpLoop
from sync.capture.binlog.preflight import ServerInfo, fatal_error
from sync.capture.binlog.statements import Name, parse_table_statement
from sync.errors import ConfigError, SourceError, short_error
from sync.events import ChangeEvent, JSONValue, Op, Source, TableTruncate
from sync.mysql import MySQLSettings
from sync.position import (
    FILE_ROW_BITS,
    FILE_ROW_MASK,
    ROW_MASK,
    Position,
    format_mariadb_gtids,
    gtid_version,
    parse_mariadb_gtids,
)
from sync.retry import Backoff
from sync.rows.fkgraph import EMPTY_GRAPH, FKGraph, load_foreign_keys
from sync.rows.schema import TableSchema, load_table

log = structlog.get_logger(__name__)

__all__ = ["Chunk", "BinlogSource"]


# -- the stream ------------------------------------------------------------------------------------

@dataclass(slots=True)
class Chunk:
    """ChangeEvents in binlog order; `position` is set when the chunk ends at a commit."""

    events: list[ChangeEvent]
    position: Position | None
    rows: int = 0            # binlog row changes read for the chosen tables (before filtering)
    t: float = 0.0           # time.monotonic() when handed over
    # TRUNCATE/DROP of chosen tables: applied after `events`, before `position` is saved
    statements: list[TableTruncate] = field(default_factory=list)


# With the quiet hook on, commits read back to back are emitted together, at most this long after
# the previous emit (the hook emits as soon as the server goes quiet; a full chunk goes at once).
COALESCE_S = 0.005

_DDL = re.compile(r"^\s*(?:/\*.*?\*/\s*)*(ALTER|RENAME|DROP|TRUNCATE|CREATE)\b", re.IGNORECASE | re.DOTALL)


class BinlogSource:
    """Reads the binlog of one server for some tables of one database; see the module docstring."""

    def __init__(
        self,
        mysql: MySQLSettings,
        database: str,
        schemas: Mapping[str, TableSchema],
        columns: Mapping[str, Sequence[str] | None],
        *,
        server: ServerInfo,
        start: Position,
        server_id: int,
        chunk_rows: int = 512,
        heartbeat_s: float = 1.0,
        position_every_s: float = 1.0,
        graph: FKGraph = EMPTY_GRAPH,
    ) -> None:
        install_decoders()
        self.decoder = select_decoder()   # "c" or "python" (GEARSYNC_BINLOG_DECODER)
        self._dump: DumpLoop | None = None   # the C event loop of the dump connection (decoder "c")
        self.mysql = mysql
        self.database = database
        self.server = server
        self.flavor = server.flavor
        self.server_id = server_id
        self.chunk_rows = chunk_rows
        self.heartbeat_s = heartbeat_s
        self.position_every_s = position_every_s
        self.tables = {
            name: TableState(schema, frozenset(columns.get(name) or ()) or None) for name, schema in schemas.items()
        }
        # The tables whose row events are parsed: a list the stream keeps (and filters with) by
        # reference, so the cascade-only parents of a reloaded FK graph join without a reconnect.
        self._only_tables: list[str] = list(self.tables)
        self.graph = EMPTY_GRAPH
        if graph:
            self._use_graph(graph)
        # Where the reader stands: the position after the last commit it has read (the property
        # `committed`; with MariaDB GTIDs built only when read: _commit_at keeps its parts).
        self._committed: Position | None = start
        self._commit_where: tuple[str | None, int | None] = (start.file, start.pos)
        self._gtid_state = parse_mariadb_gtids(start.gtid or "", "start GTID") if self.flavor == "mariadb" else {}
        self._mysql_gtids: Any = None
        if self.flavor == "mysql" and start.gtid is not None:
            from pymysqlreplication.gtid import GtidSet

            self._mysql_gtids = GtidSet(start.gtid)
        self._file = start.file
        self._domain_warned: int | None = None
        # per-transaction state
        self._in_trx = False
        self._trx_gtid: tuple[int, int, int] | None = None   # MariaDB (domain, server, seq)
        self._trx_mysql_gtid: str | None = None
        self._base = 0
        self._index = 0
        self._mask = ROW_MASK
        self._overflow: dict[tuple[str, str], ChangeEvent] = {}
        self._awaiting_begin = False
        # output state
        self._pending: list[ChangeEvent] = []
        self._statements: list[TableTruncate] = []
        self._pending_rows = 0
        self._last_emit = time.monotonic()
        self._emitted_position: Position | None = None
        self.stream: Any = None
        self.rows_read = 0
        self._idle_error: BaseException | None = None
        self._coalesce = False   # commits emitted together (the quiet hook is on: _hook_quiet)
        self._held = self._held_rows = 0   # ... the first of self._pending (and rows) are of commits held back
        # For sync-binlog's behind gauge and /healthz (read by another thread, written only here):
        self.commits = 0                      # commits read
        self.commit_ts = 0                    # the binlog timestamp (Unix s) of the last one
        self.quiet_at = 0.0                   # time.monotonic() when the server last had nothing more to send
        self.quiet_commits = -1               # ... and self.commits then
        self.stream_error: str | None = None  # why the dump connection is down (None: connected)

    @property
    def committed(self) -> Position:
        """The position after the last commit read."""
        c = self._committed
        if c is None:
            c = self._committed = Position("mariadb", format_mariadb_gtids(self._gtid_state), *self._commit_where)
        return c

    @committed.setter
    def committed(self, position: Position) -> None:
        self._committed = position

    # -- connection -------------------------------------------------------------------------------
    def _connection_settings(self) -> dict[str, Any]:
        m = self.mysql
        s: dict[str, Any] = {"user": m.user, "password": m.password, "charset": "utf8mb4",
                             "connect_timeout": 5, "read_timeout": max(10.0, 5 * self.heartbeat_s)}
        if m.unix_socket:
            s["unix_socket"] = m.unix_socket
        else:
            s["host"], s["port"] = m.host, m.port
        if m.ssl_ca:
            s["ssl"] = {"ca": m.ssl_ca, **({"cert": m.ssl_cert} if m.ssl_cert else {}),
                        **({"key": m.ssl_key} if m.ssl_key else {})}
        return s

    def open_stream(self, position: Position, *, blocking: bool = True) -> Any:
        from pymysqlreplication import BinLogStreamReader
        from pymysqlreplication.event import (
            GtidEvent,
            HeartbeatLogEvent,
            MariadbGtidEvent,
            QueryEvent,
            RotateEvent,
            XidEvent,
        )
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        kw: dict[str, Any] = dict(
            server_id=self.server_id,
            blocking=blocking,
            only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent, RotateEvent,
                         MariadbGtidEvent, GtidEvent, HeartbeatLogEvent, *compressed_row_events(),
                         compressed_query_event()],
            # Row events of other tables are skipped unparsed; every transaction's GTID/XID still
            # arrives, so the position follows the whole binlog.
            only_tables=self._only_tables,
            only_schemas=[self.database],
            slave_heartbeat=self.heartbeat_s,
            is_mariadb=self.flavor == "mariadb",
            enable_logging=False,
        )
        if position.gtid is not None:
            kw["auto_position"] = position.gtid
        else:
            kw.update(log_file=position.file, log_pos=position.pos, resume_stream=True)
        return BinLogStreamReader(self._connection_settings(), **kw)

    # -- main loop (its own thread) ---------------------------------------------------------------
    def run(self, emit: Callable[[Chunk], None], stop: threading.Event,
            idle: Callable[[], None] | None = None) -> None:
        """Read until `stop` is set; emit chunks. Reconnects on connection errors (from the last commit
        read); raises SourceError for what retrying cannot fix (privileges, purged position).

        `idle`, when given, is called (after the pending events are emitted) whenever the server
        has nothing more to send right now, i.e. a read of the dump connection would wait (see
        _hook_quiet). A caller that batches in this thread flushes there (sync.capture.binlog.service)."""
        import pymysql

        backoff = Backoff(initial_s=0.2, max_s=5.0, jitter=0.3)
        self._emit = emit
        while not stop.is_set():
            self._emit_held()       # read up to self.committed: not re-read
            self._reset_trx()
            self._pending.clear()   # emitted-or-not, these are re-read from self.committed
            self._statements.clear()
            self._pending_rows = 0
            try:
                self.stream = self.open_stream(self.committed)
                connected_logged = False
                hooked: Any = None
                while not stop.is_set():
                    if self._dump is not None:
                        # The C event loop: the dump connection's bytes, split and read in C.
                        items = self._dump.read()
                        if self._idle_error is not None:
                            exc, self._idle_error = self._idle_error, None
                            raise exc
                        self._items(items)
                        continue
                    ev = self.stream.fetchone()
                    if ev is None:
                        raise ConnectionError("binlog stream ended (server closed the dump)")
                    if not connected_logged:
                        log.info("binlog_connected", position=self.committed.describe())
                        connected_logged = True
                        self.stream_error = None
                        backoff.reset()
                    if idle is not None:
                        if self._idle_error is not None:
                            exc, self._idle_error = self._idle_error, None
                            raise exc
                        conn = self.stream._stream_connection  # the library reconnects by itself
                        if conn is not hooked:
                            hooked = self._hook_quiet(conn, idle)
                    self._handle(ev)
                    if self.decoder == "c":
                        # Connected: from here the reader reads the dump connection itself.
                        self._dump = DumpLoop(self.stream)
                        self._seed_tables()
            except pymysql.err.MySQLError as exc:
                fatal = fatal_error(exc, self.mysql, self.committed, list(self.tables))
                if fatal is not None:
                    raise fatal from None
                self._disconnected(exc, backoff, stop)
            except (OSError, EOFError, ConnectionError, struct.error) as exc:
                self._disconnected(exc, backoff, stop)
            finally:
                self._close_stream()
        if self._idle_error is not None:
            idle_error, self._idle_error = self._idle_error, None
            raise idle_error
        if self._in_trx:
            self._emit_held()
        self._flush(final=True)

    def _hook_quiet(self, conn: Any, idle: Callable[[], None]) -> Any:
        """Make pymysql's socket reads of the dump connection `conn` try without waiting first:
        when the server has nothing to send between transactions (it went quiet), emit the
        pending events, call `idle`, then wait as before. Under load the buffer refills find
        bytes at once, so this costs two cheap syscalls per refill (~8 KB) and nothing per
        event. Returns `conn`."""
        rfile = getattr(conn, "_rfile", None)
        raw = getattr(rfile, "raw", None)
        if raw is None or not hasattr(raw, "_sock"):
            return conn   # not pymysql's socket file: no hook (heartbeats still flush)
        blocking_read = raw.readinto

        def readinto(buf: Any) -> Any:
            sock = raw._sock
            if sock is not None:
                timeout = sock.gettimeout()
                sock.settimeout(0.0)
                try:
                    return sock.recv_into(buf)
                except (BlockingIOError, ssl.SSLWantReadError):
                    pass   # nothing there
                finally:
                    sock.settimeout(timeout)
                # Between transactions the server went quiet. Inside one, the rest of it is on its
                # way (a transaction is in the binlog whole before it is sent): wait for its commit,
                # so the batch carries that position, rather than send its first rows alone.
                if not self._in_trx:
                    try:
                        if self._pending:
                            self._flush(heartbeat=True)
                        idle()
                        self._quiet()   # all read so far is delivered
                    except BaseException as exc:  # raised by run() after this read, not into pymysql
                        self._idle_error = exc
            return blocking_read(buf)

        raw.readinto = readinto
        self._coalesce = True
        return conn

    def _quiet(self) -> None:
        """The server had nothing more to send and what was read is handed on (with --sink redis on a
        standalone Redis: delivered): the reader is caught up."""
        self.quiet_at = time.monotonic()
        self.quiet_commits = self.commits

    def behind_s(self) -> float:
        """Now minus the commit time of the last transaction read; 0 while caught up (no commit
        read since the server last went quiet)."""
        if self.quiet_commits == self.commits or not self.commit_ts:
            return 0.0
        return max(0.0, time.time() - self.commit_ts)

    def _disconnected(self, exc: BaseException, backoff: Backoff, stop: threading.Event) -> None:
        self.stream_error = short_error(exc)
        delay = backoff.next_delay()
        log.warning("binlog_disconnected", error=short_error(exc),
                    resume_from=self.committed.describe(), retry_in_s=round(delay, 3))
        stop.wait(delay)

    def _close_stream(self) -> None:
        self._dump = None
        if self.stream is not None:
            try:
                self.stream.close()
            except Exception as exc:  # closing a dead connection must not hide the real error
                log.debug("binlog_close_failed", error=str(exc))
            self.stream = None

    # -- events ------------------------------------------------------------------------------------
    def _reset_trx(self) -> None:
        self._in_trx = False
        self._trx_gtid = None
        self._trx_mysql_gtid = None
        self._index = 0
        self._overflow = {}
        self._awaiting_begin = False

    def _handle(self, ev: Any) -> None:
        name = type(ev).__name__
        if name == "UpdateRowsEvent" or name == "WriteRowsEvent" or name == "DeleteRowsEvent":
            self._rows(ev, name)
        elif name == "XidEvent":
            self._commit(ev)
        elif name == "MariadbGtidEvent":
            self._gtid(ev.domain_id, ev.server_id, ev.gtid_seq_no)
        elif name == "GtidEvent":
            self._reset_trx()
            self._trx_mysql_gtid = ev.gtid
            self._base = gtid_version(ev.gno)
            self._mask = ROW_MASK
            self._in_trx = True
            self._awaiting_begin = True
        elif name == "QueryEvent":
            self._query(ev)
        elif name == "RotateEvent":
            self._file = ev.next_binlog
            self._forget_plans(*self.tables.values())
            if self.committed.gtid is None and not self._in_trx and self.flavor == "mysql":
                self.committed = Position(self.flavor, None, ev.next_binlog, ev.position)
        elif name == "HeartbeatLogEvent":
            self._flush(heartbeat=True)
            self._quiet()

    def _gtid(self, domain: int, server: int, seq: int) -> None:
        """A MariaDB GTID event: a transaction (or a standalone statement) begins."""
        self._reset_trx()
        self._trx_gtid = (domain, server, seq)
        self._base = gtid_version(seq)
        self._mask = ROW_MASK
        self._in_trx = True
        self._awaiting_begin = True
        if self._domain_warned is None:
            self._domain_warned = domain
        elif self._domain_warned != domain and self._domain_warned >= 0:
            log.warning("binlog_several_gtid_domains", first=self._domain_warned, now=domain,
                        note="versions of different domains are not comparable")
            self._domain_warned = -1

    def _items(self, items: list[tuple[Any, ...]]) -> None:
        """The items of the C event loop (sync/capture/binlog/_binloop.c), in stream order."""
        rows_of = self._rows_of
        for item in items:
            code = item[0]
            if code == 0:   # a whole MariaDB transaction: GTID, its rows events, XID
                _, seq, domain, server, log_pos, ts, rows = item
                self._gtid(domain, server, seq)
                for tag, kind, decoded, pos in rows:
                    rows_of(tag, kind, decoded, pos)
                self._commit_at(log_pos, ts)
            elif code == 2:
                rows_of(item[1], item[2], item[3], item[4])
            elif code == 1:
                self._gtid(item[2], item[3], item[1])
            elif code == 3:
                self._commit_at(item[1], item[2])
            elif code == 4:
                self._library_packet(item[1])
            elif code == 5:
                self._flush(heartbeat=True)
                self._quiet()
            elif code == 6:
                import pymysql

                pymysql.err.raise_mysql_exception(item[1])
            elif code == 7:
                raise ConnectionError("binlog stream ended (server closed the dump)")
            else:
                raise SourceError(f"binlog stream read after {self.committed.describe()}: {item[1]}")

    def _library_packet(self, payload: bytes) -> None:
        """An event the C loop hands back: the library's event, handled as fetchone's would be; a
        TABLE_MAP is registered with the loop (a synced table's row plan, or: skip its rows)."""
        dump = self._dump
        assert dump is not None
        ev = dump.library_event(payload)
        if payload[5] != 19:   # not a TABLE_MAP event
            if ev is not None:
                self._handle(ev)
            return
        body = dump.body(payload)
        st = self.tables.get(ev.table) if ev is not None and ev.schema == self.database else None
        if st is None:
            dump.loop.table_map(body, int.from_bytes(body[:6], "little"), None, None)
            return
        plan = self._plan(st, ev)
        dump.loop.table_map(body, ev.table_id, plan.decoder, (ev.table, st, plan))

    def _seed_tables(self) -> None:
        """Register with the new C loop the tables whose TABLE_MAP the library read before it."""
        assert self._dump is not None
        for table_id, table in list(self.stream.table_map.items()):
            st = self.tables.get(table.table) if table.schema == self.database else None
            if st is not None:
                plan = self._plan(st, table)
                self._dump.loop.table_map(b"", table_id, plan.decoder, (table.table, st, plan))

    def _forget_plans(self, *states: TableState) -> None:
        """Rebuild the row plans of these tables from their next table map (DDL, rotation)."""
        for st in states:
            st.plans.clear()
        if self._dump is not None:
            self._dump.loop.clear()   # every TABLE_MAP goes through _library_packet again

    def _query(self, ev: Any) -> None:
        if getattr(ev, "inflate_error", None):
            raise SourceError(f"the compressed statement ending at binlog position {self._file}:{int(ev.packet.log_pos)} "
                              f"cannot be read: {ev.inflate_error}")
        q = ev.query if isinstance(ev.query, str) else bytes(ev.query).decode("utf-8", "replace")
        qs = q.strip().upper()
        if qs == "BEGIN" or qs.startswith("XA START"):
            self._awaiting_begin = False
            self._in_trx = True
            return
        if qs == "COMMIT" or qs.startswith("XA COMMIT"):
            self._commit(ev)
            return
        m = _DDL.match(q)
        if m:
            self._ddl(q, m.group(1).upper(), ev)
            self._reload_graph(ev)
        if self._awaiting_begin or not self._in_trx:
            # A statement right after the GTID event (no BEGIN), or outside any transaction: DDL
            # and other standalone statements commit by themselves.
            self._commit(ev)

    def _ddl(self, query: str, verb: str, ev: Any) -> None:
        schema = ev.schema.decode() if isinstance(ev.schema, bytes) else str(ev.schema or "")
        statement = parse_table_statement(query)
        if statement is not None:
            self._table_statement(statement.kind, statement.names, statement.renames, schema, ev)
            return
        for table, st in self.tables.items():
            if not re.search(r"(?<![\w$])`?" + re.escape(table) + r"`?(?![\w$])", query):
                continue
            if schema and schema != self.database and f"{self.database}" not in query:
                continue
            self._forget_plans(st)
            self._reload_key(table, st, why=f"{verb} statement")

    def _table_statement(self, kind: str, names: Sequence[Name], renames: Sequence[tuple[Name, Name]],
                         schema: str, ev: Any) -> None:
        """TRUNCATE / DROP / RENAME naming tables; see the module docstring."""
        def ours(name: Name) -> str | None:
            db, table = name
            st = self.tables.get(table)
            return table if (db or schema) == self.database and st is not None and not st.cascade_only else None

        if kind != "rename":
            hit = [t for t in dict.fromkeys(map(ours, names)) if t is not None]
            if not hit:
                return
            version = self._statement_version(ev)
            for table in hit:
                self._forget_plans(self.tables[table])
                self._statements.append(TableTruncate(table, version))
                log.info("binlog_table_statement", table=table, statement=kind, version=version)
            return
        taken = {t for _, new in renames if (t := ours(new)) is not None}
        for old, new in renames:
            moved = ours(old)
            if moved is not None and moved not in taken:
                where = f"{self._file}:{int(ev.packet.log_pos)}"
                if self._trx_gtid is not None:
                    where += " (GTID {}-{}-{})".format(*self._trx_gtid)
                elif self._trx_mysql_gtid is not None:
                    where += f" (GTID {self._trx_mysql_gtid})"
                raise SourceError(
                    f"table {self.database}.{moved} was renamed to {new[0] or schema}.{new[1]} at binlog position "
                    f"{where} and no table took its name; its rows are no longer in the binlog as {moved}. "
                    f"Rename it back and restart sync-binlog (it resumes before the RENAME), or sync the new "
                    f"name: sync-binlog --table {new[1]} --start current, then sync-snapshot --table {new[1]}"
                )
        for table in taken:
            self._reload_key(table, self.tables[table], why="RENAME statement")

    def _reload_graph(self, ev: Any) -> None:
        """After a DDL statement in the database: the FK graph again (FKs may have come or gone)."""
        schema = ev.schema.decode() if isinstance(ev.schema, bytes) else str(ev.schema or "")
        if schema and schema != self.database:
            return
        try:
            conn = self.mysql.connect(database=self.database)
            try:
                graph = load_foreign_keys(conn, self.database)
            finally:
                conn.close()
        except Exception as exc:  # pymysql errors too: keep the graph we have, say so
            log.warning("binlog_fk_graph_reload_failed", reason=short_error(exc))
            return
        self._use_graph(graph)

    def _use_graph(self, graph: FKGraph) -> None:
        """Take the FKs of `graph` whose child is a chosen table; read their parents that are not
        chosen in cascade-only mode (see the module docstring)."""
        chosen = {t for t, st in self.tables.items() if not st.cascade_only}
        graph = FKGraph([f for f in graph.fks if f.child in chosen])
        if graph == self.graph:
            return
        parents = {f.parent for f in graph.fks} - chosen
        for gone in [t for t, st in self.tables.items() if st.cascade_only and t not in parents]:
            del self.tables[gone]
        new = parents - self.tables.keys()
        if new:
            conn = self.mysql.connect(database=self.database)
            try:
                for parent in sorted(new):
                    try:
                        schema = load_table(conn, self.database, parent)
                    except ConfigError as exc:
                        log.warning("binlog_cascade_parent_skipped", table=parent, reason=str(exc)[:300])
                        continue
                    self.tables[parent] = TableState(schema, frozenset(graph.referenced_columns(parent)),
                                                      cascade_only=True)
            finally:
                conn.close()
        for table, st in self.tables.items():
            st.child = bool(graph.child_fks(table)) and not st.cascade_only
            st.parent = bool(graph.parent_fks(table))
            need = {c for f in graph.child_fks(table) for c in f.columns} if st.child else set()
            need.update(graph.referenced_columns(table))
            st.extra = () if st.wanted is None else tuple(sorted(need - st.wanted - set(st.schema.key)))
            self._forget_plans(st)
        self.graph = graph
        self._only_tables[:] = list(self.tables)
        log.info("binlog_fk_graph", fks=len(graph.fks),
                 cascade_only=sorted(t for t, st in self.tables.items() if st.cascade_only))

    def _statement_version(self, ev: Any) -> int:
        """The version of a table statement: index 0 of its GTID event group (gtid_version(seq, 0)),
        or, without GTIDs, of its event's file/position."""
        if self._trx_gtid is not None or self._trx_mysql_gtid is not None:
            return self._base
        fileno = int(self._file.rsplit(".", 1)[-1]) if self._file else 0
        return (fileno << 44) | (int(ev.packet.log_pos) << FILE_ROW_BITS)

    def _reload_key(self, table: str, st: TableState, why: str) -> None:
        try:
            conn = self.mysql.connect(database=self.database)
            try:
                schema = load_table(conn, self.database, table)
            finally:
                conn.close()
        except ConfigError as exc:
            log.warning("binlog_schema_reload_failed", table=table, reason=str(exc)[:300])
            return
        if schema.key != st.schema.key:
            log.info("binlog_key_changed", table=table, old=list(st.schema.key), new=list(schema.key))
        st.schema = schema
        self._forget_plans(st)
        log.info("binlog_schema_reloaded", table=table, why=why, key=list(schema.key))

    def _plan(self, st: TableState, ev: Any) -> RowPlan:
        # Cached per table id: the server gives a table a new id when its definition changes, a
        # DDL statement clears the cache anyway, and so does a binlog rotation (a server restart
        # rotates, and may reuse ids).
        plan = st.plans.get(ev.table_id)
        if plan is None:
            cols = ev.columns
            names = {c.name for c in cols}
            if any(k not in names for k in st.schema.key):
                self._reload_key(ev.table, st, why="key column missing from the row")
                if any(k not in names for k in st.schema.key):
                    raise SourceError(
                        f"table {self.database}.{ev.table}: the binlog row has no key column "
                        f"{', '.join(k for k in st.schema.key if k not in names)}; expected the key "
                        f"{', '.join(st.schema.key)} (columns: {', '.join(sorted(names))})"
                    )
            if any(not c.name or c.name.startswith("UNKNOWN_COL") for c in cols):
                raise SourceError(
                    f"table {self.database}.{ev.table}: the binlog has no column names; set "
                    "binlog_row_metadata=FULL on the server (SET GLOBAL binlog_row_metadata=FULL)"
                )
            plan = st.plans[ev.table_id] = RowPlan(cols, st.read(), st.schema.key, self.flavor, self.decoder)
        return plan

    def _next_version(self) -> int:
        """The version of the next row change; past the index range, the last one (overflow)."""
        i = self._index
        self._index = i + 1
        if i >= self._mask:
            return self._base | self._mask
        return self._base | i

    def _rows(self, ev: Any, kind: str) -> None:
        """A rows event of the library (the Python decoder, or one the C loop handed back)."""
        table = ev.table
        st = self.tables.get(table)
        if st is None or ev.schema != self.database:
            return
        plan = self._plan(st, ev)
        try:
            rows = plan.rows(ev)
        except ValueError as exc:  # a malformed rows event (the C decoder's DecodeError, a bad charset byte)
            raise SourceError(f"table {self.database}.{table}: cannot decode the rows event ending at binlog position "
                              f"{self._file}:{int(ev.packet.log_pos)}: {exc}") from None
        self._rows_of((table, st, plan), kind, rows, int(ev.packet.log_pos))

    def _rows_of(self, tag: tuple[str, TableState, RowPlan], kind: str, rows: list[dict[str, Any]],
                 log_pos: int) -> None:
        """The decoded rows of one rows event (ending at log_pos) of a synced table."""
        table, st, plan = tag
        if self._trx_gtid is None and self._trx_mysql_gtid is None:
            # MySQL without GTIDs: version from (file number, event end position, row index).
            fileno = int(self._file.rsplit(".", 1)[-1]) if self._file else 0
            self._base = (fileno << 44) | (log_pos << FILE_ROW_BITS)
            self._mask = FILE_ROW_MASK
            self._index = 0
        key = st.schema.key
        out = self._pending
        self.rows_read += len(rows)
        self._pending_rows += len(rows)
        src = Source.BINLOG
        if st.cascade_only or st.child or st.parent:
            fk_row_events(self.graph, st, table, plan, rows, kind, self._next_version, self._out)
        elif kind == "WriteRowsEvent":
            for r in rows:
                version = self._next_version()
                row = plan.row(r["values"], r.get("none_sources"))
                self._out(ChangeEvent(table, Op.INSERT, tuple((k, row[k]) for k in key), row, version, src), version)
        elif kind == "DeleteRowsEvent":
            for r in rows:
                version = self._next_version()
                row = plan.row(r["values"], r.get("none_sources"))
                self._out(ChangeEvent(table, Op.DELETE, tuple((k, row[k]) for k in key), None, version, src), version)
        else:
            names = plan.names if st.wanted is not None else None
            k0 = key[0] if len(key) == 1 else None
            for r in rows:
                before, after = r["before_values"], r["after_values"]
                if names is not None and all(before[n] == after[n] for n in names):
                    continue  # none of the chosen columns changed
                version = self._next_version()
                row = plan.row(after, r.get("after_none_sources"))
                if k0 is not None:  # a one-column key (the usual case): no generators per row
                    pk: tuple[tuple[str, JSONValue], ...] = ((k0, row[k0]),)
                    moved = before[k0] != after[k0]
                else:
                    pk = tuple((k, row[k]) for k in key)
                    moved = any(before[k] != after[k] for k in key)
                if moved:
                    old = plan.row(before, r.get("before_none_sources"))
                    old_pk = tuple((k, old[k]) for k in key)
                    if old_pk != pk:
                        self._out(ChangeEvent(table, Op.DELETE, old_pk, None, version, src), version)
                self._out(ChangeEvent(table, Op.UPDATE, pk, row, version, src), version)
        if len(out) >= self.chunk_rows:
            self._flush()

    def _emit_held(self) -> None:
        """Emit the events of the commits held back (see _commit) with the position after them."""
        if not self._held:
            return
        k, rows = self._held, self._held_rows
        chunk = Chunk(self._pending[:k], self.committed, rows, time.monotonic())
        del self._pending[:k]
        self._pending_rows -= rows
        self._held = self._held_rows = 0
        self._last_emit = chunk.t
        self._emitted_position = self.committed
        self._emit(chunk)

    def _out(self, ev: ChangeEvent, version: int) -> None:
        if version & self._mask == self._mask:
            # Past the index range of this transaction (rows event): collapse per key, emit at commit.
            self._overflow[(ev.table, repr(ev.pk) if ev.pk else repr(ev.cascade))] = ev
            return
        self._pending.append(ev)

    def _commit(self, ev: Any) -> None:
        # the header of every binlog event has a timestamp
        log_pos = int(ev.packet.log_pos) if getattr(ev, "packet", None) is not None else None
        self._commit_at(log_pos, getattr(ev, "timestamp", 0))

    def _commit_at(self, log_pos: int | None, ts: int) -> None:
        """A commit (XID, COMMIT, a standalone statement) whose event ends at log_pos."""
        self.commits += 1
        self.commit_ts = ts
        if self._overflow:
            self._pending.extend(self._overflow.values())
            log.info("binlog_large_transaction", collapsed=len(self._overflow), rows=self._index)
        if self.flavor == "mariadb":
            if self._trx_gtid is not None:
                d, s, n = self._trx_gtid
                self._gtid_state[d] = (s, n)
            self._committed = None   # built when read (the property `committed`)
            self._commit_where = (self._file, log_pos)
            if self.stream is not None and self._dump is None:
                # The library reconnects by itself after error 2013/2006 with auto_position: make
                # that resume from this commit, not from where we started.
                self.stream.auto_position = self.committed.gtid
        elif self._mysql_gtids is not None:
            if self._trx_mysql_gtid is not None:
                from pymysqlreplication.gtid import Gtid

                self._mysql_gtids.merge_gtid(Gtid(self._trx_mysql_gtid))
            gtid = str(self._mysql_gtids)
            self.committed = Position("mysql", gtid, self._file, log_pos)
            if self.stream is not None:
                self.stream.auto_position = gtid
        else:
            self.committed = Position("mysql", None, self._file, log_pos)
        self._reset_trx()
        if (self._coalesce and len(self._pending) < self.chunk_rows and not self._statements
                and time.monotonic() - self._last_emit < COALESCE_S):
            # The quiet hook is on: it emits what is pending, with this position, as soon as the
            # server has nothing more to send; so do a full chunk and the next commit past COALESCE_S.
            self._held, self._held_rows = len(self._pending), self._pending_rows
            return
        self._flush(commit=True)

    # -- output ------------------------------------------------------------------------------------
    def _flush(self, *, commit: bool = False, heartbeat: bool = False, final: bool = False) -> None:
        """Emit the pending events (and the last commit position when at a commit)."""
        pending = self._pending
        now = time.monotonic()
        at_commit = commit or heartbeat or final
        if pending or self._statements:
            full = len(pending) >= self.chunk_rows
            if not (full or final or heartbeat or commit):
                return
        else:
            if not at_commit or self.committed == self._emitted_position:
                return
            if not final and now - self._last_emit < self.position_every_s and not heartbeat:
                return
        position = self.committed if (at_commit and not self._in_trx) else None
        chunk = Chunk(list(pending), position, self._pending_rows, now)
        if self._statements:
            chunk.statements, self._statements = self._statements, []
        pending.clear()
        self._pending_rows = self._held = self._held_rows = 0
        self._last_emit = now
        if position is not None:
            self._emitted_position = position
        self._emit(chunk)

