"""The binlog source: mysql-replication's BinLogStreamReader → ChangeEvent chunks with commit positions.

    BinlogSource(...).run(emit, stop)      # blocking; runs in its own thread (sync.capture.binlog.service)

emit() receives `Chunk`s in binlog order: the ChangeEvents decoded so far, and — when the chunk ends
at a transaction commit — the `Position` after that commit. A position is only ever handed out at
a commit boundary (XID event, a COMMIT query, or the end of a standalone DDL statement), so saving
it and resuming from it never starts inside a transaction. Events of a transaction may be emitted
before its commit (in chunks with no position): the binlog only holds committed transactions, and
after a restart they are re-read from the previous commit and re-applied with the SAME versions,
which the applier's version fence turns into no-ops.

Row values: the binlog's own table map (binlog_row_metadata=FULL) gives the column names and types
of every event, so ALTER TABLE (add/drop/rename column) mid-stream needs no schema reload for the
values; each value is mapped with sync.rows.schema.canonical_value to exactly what the triggers and the
snapshot produce. The key columns come from sync.rows.schema.load_table() and are re-read when a DDL
statement names the table (or a row lacks a key column).

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
2**44. TRUNCATE/DROP of a synced table is a statement, not rows: it is logged as a warning
(re-snapshot the table).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping, Sequence

import structlog

from sync.errors import ConfigError, SourceError, short_error
from sync.events import ChangeEvent, Op, Source
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
from sync.rows.rowcodec import normalize_value
from sync.rows.schema import Column, TableSchema, canonical_value, load_table, quote_ident

log = structlog.get_logger(__name__)

__all__ = [
    "Chunk",
    "BinlogSource",
    "ServerInfo",
    "binlog_column",
    "check_server",
    "resolve_start",
]


ER_ACCESS_DENIED = 1227
ER_MASTER_FATAL_READING_BINLOG = 1236
ER_DBACCESS_DENIED = 1044
ER_ACCESS_DENIED_USER = 1045
FATAL_MYSQL_ERRORS = {ER_ACCESS_DENIED, ER_MASTER_FATAL_READING_BINLOG, ER_DBACCESS_DENIED, ER_ACCESS_DENIED_USER, 1142}


# -- decoding fixes ------------------------------------------------------------------------------
# mysql-replication 1.0.17 decodes negative TIME(fsp>0) wrongly (it negates the integer part and
# the fraction separately; MySQL stores them as one signed packed number) and turns zero or
# partial-zero dates ('0000-00-00', '2024-00-00 …') into None, which is indistinguishable from
# NULL. These replacements decode the same bytes per MySQL's documented TIME2/DATE/DATETIME2
# formats and return zero dates as the text MySQL prints (what pymysql returns for them).

def _time2(self: Any, column: Any) -> dt.timedelta:
    fsp = column.fsp or 0
    raw = int.from_bytes(self.packet.read(3), "big")
    intpart = raw - 0x800000
    if fsp in (1, 2):
        frac = self.packet.read(1)[0]
        if intpart < 0 and frac:
            intpart += 1
            frac -= 0x100
        packed = (intpart << 24) + frac * 10000
    elif fsp in (3, 4):
        frac = int.from_bytes(self.packet.read(2), "big")
        if intpart < 0 and frac:
            intpart += 1
            frac -= 0x10000
        packed = (intpart << 24) + frac * 100
    elif fsp in (5, 6):
        low = int.from_bytes(self.packet.read(3), "big")
        packed = ((raw << 24) | low) - 0x800000000000
    else:
        packed = intpart << 24
    sign = -1 if packed < 0 else 1
    m = abs(packed)
    hms, micro = m >> 24, m & 0xFFFFFF
    hours, minutes, seconds = (hms >> 12) & 0x3FF, (hms >> 6) & 0x3F, hms & 0x3F
    return sign * dt.timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=micro)


def _frac_text(micro: int, fsp: int) -> str:
    return f".{micro:06d}"[: fsp + 1] if fsp else ""


def _date(self: Any) -> dt.date | str:
    v = self.packet.read_uint24()
    y, m, d = v >> 9, (v >> 5) & 0xF, v & 0x1F
    try:
        return dt.date(y, m, d)
    except ValueError:
        return f"{y:04d}-{m:02d}-{d:02d}"


def _datetime(self: Any) -> dt.datetime | str:
    v = self.packet.read_uint64()
    d, t = divmod(v, 1000000)
    y, mo, day = d // 10000, (d // 100) % 100, d % 100
    h, mi, s = t // 10000, (t // 100) % 100, t % 100
    try:
        return dt.datetime(y, mo, day, h, mi, s)
    except ValueError:
        return f"{y:04d}-{mo:02d}-{day:02d} {h:02d}:{mi:02d}:{s:02d}"


def _datetime2(self: Any, column: Any) -> dt.datetime | str:
    fsp = column.fsp or 0
    v = int.from_bytes(self.packet.read(5), "big") - 0x8000000000
    ym = (v >> 22) & 0x1FFFF
    y, mo = divmod(ym, 13)
    day, h, mi, s = (v >> 17) & 0x1F, (v >> 12) & 0x1F, (v >> 6) & 0x3F, v & 0x3F
    micro = 0
    nbytes = (fsp + 1) // 2
    if nbytes:
        f = int.from_bytes(self.packet.read(nbytes), "big")
        micro = f * 10 ** (6 - 2 * nbytes)
    try:
        return dt.datetime(y, mo, day, h, mi, s, micro)
    except ValueError:
        return f"{y:04d}-{mo:02d}-{day:02d} {h:02d}:{mi:02d}:{s:02d}" + _frac_text(micro, fsp)


_decoders_installed = False


def install_decoders() -> None:
    """Replace mysql-replication's TIME2/DATE/DATETIME/DATETIME2 readers (see above). Idempotent;
    refuses to run against a library version whose private reader names differ."""
    global _decoders_installed
    if _decoders_installed:
        return
    from pymysqlreplication.row_event import RowsEvent

    names = {
        "_RowsEvent__read_time2": _time2,
        "_RowsEvent__read_date": _date,
        "_RowsEvent__read_datetime": _datetime,
        "_RowsEvent__read_datetime2": _datetime2,
    }
    missing = [n for n in names if not hasattr(RowsEvent, n)]
    if missing:
        raise SourceError(
            f"mysql-replication: RowsEvent lacks {', '.join(missing)}; this gearsync was checked with 1.0.17 "
            "(pip install 'mysql-replication==1.0.17')"
        )
    for n, fn in names.items():
        setattr(RowsEvent, n, fn)
    _decoders_installed = True


# -- binlog columns → canonical values -------------------------------------------------------------

def _field_types() -> dict[int, str]:
    from pymysqlreplication.constants import FIELD_TYPE as F

    return {
        F.TINY: "tinyint", F.SHORT: "smallint", F.INT24: "mediumint", F.LONG: "int", F.LONGLONG: "bigint",
        F.YEAR: "year", F.FLOAT: "float", F.DOUBLE: "double", F.NEWDECIMAL: "decimal", F.DECIMAL: "decimal",
        F.BIT: "bit", F.DATE: "date", F.NEWDATE: "date", F.DATETIME: "datetime", F.DATETIME2: "datetime",
        F.TIMESTAMP: "timestamp", F.TIMESTAMP2: "timestamp", F.TIME: "time", F.TIME2: "time",
        F.VARCHAR: "varchar", F.VAR_STRING: "varchar", F.STRING: "char", F.BLOB: "text",
        F.TINY_BLOB: "text", F.MEDIUM_BLOB: "text", F.LONG_BLOB: "text",
        F.ENUM: "enum", F.SET: "set", F.JSON: "json", F.GEOMETRY: "geometry",
    }


_FIELD_TYPES: dict[int, str] = {}


def binlog_column(bcol: Any) -> Column:
    """A sync.rows.schema.Column from a mysql-replication table-map column (FULL metadata)."""
    if not _FIELD_TYPES:
        _FIELD_TYPES.update(_field_types())
    data_type = _FIELD_TYPES.get(bcol.type)
    if data_type is None:
        raise SourceError(f"column {bcol.name!r}: binlog field type {bcol.type} is not supported")
    charset = bcol.character_set_name
    if data_type in ("varchar", "char", "text") and charset in (None, "binary"):
        data_type = {"varchar": "varbinary", "char": "binary", "text": "blob"}[data_type]
        charset = "binary"
    unsigned = bool(getattr(bcol, "unsigned", False))
    return Column(
        name=bcol.name,
        data_type=data_type,
        column_type=data_type + (" unsigned" if unsigned else ""),
        nullable=True,
        fsp=getattr(bcol, "fsp", None) if data_type in ("datetime", "timestamp", "time") else None,
        charset=charset,
    )


_EPOCH = dt.datetime(1970, 1, 1)


def _identity(v: Any) -> Any:
    return v


def _text(v: Any) -> Any:
    return v if type(v) is str else normalize_value(v)


def _converter(col: Column, bcol: Any, flavor: str) -> Callable[[Any], Any]:
    """value (not None) → canonical value, for one binlog column."""
    kind = col.kind
    fsp = col.fsp or 0
    if kind in ("int", "uint64"):
        if col.data_type == "year":
            return lambda v: 0 if v == 1900 else v  # YEAR 0000 is stored as 0; the library adds 1900
        return _identity
    if kind == "bit":
        return lambda v: int(v, 2) if type(v) is str else canonical_value(col, v)
    if kind == "decimal":
        return lambda v: format(v, "f") if type(v) is Decimal else canonical_value(col, v)
    if kind == "double":
        return float
    if kind == "float":
        return lambda v: canonical_value(col, v)
    if kind == "timestamp":
        zero = "0000-00-00 00:00:00" + _frac_text(0, fsp)

        def ts(v: Any) -> Any:
            # The library returns UTC (utcfromtimestamp); epoch 0 is MySQL's zero TIMESTAMP
            # (1970-01-01 00:00:00 UTC is outside TIMESTAMP's range).
            if type(v) is dt.datetime:
                return zero if v == _EPOCH else normalize_value(v, fsp=fsp)
            return str(v)
        return ts
    if kind == "datetime":
        cut = 19 if fsp == 0 else 20 + fsp

        def datetime_text(v: Any) -> Any:
            # canonical_value's text from the C formatter: "YYYY-MM-DD HH:MM:SS.ffffff", cut to
            # fsp fraction digits (MySQL truncates the same way). Zero dates arrive as text.
            if type(v) is dt.datetime and v.tzinfo is None:
                return v.isoformat(" ", "microseconds")[:cut]
            return canonical_value(col, v)
        return datetime_text
    if kind in ("date", "time"):
        return lambda v: canonical_value(col, v)
    if kind == "text":
        if col.data_type == "set":
            order = list(bcol.set_values or ())

            def set_text(v: Any) -> Any:
                if isinstance(v, (set, frozenset)):
                    return ",".join(x for x in order if x in v)  # MySQL prints SET members in definition order
                return canonical_value(col, v)
            return set_text
        if col.data_type == "json" and flavor == "mysql":
            def json_text(v: Any) -> Any:
                if type(v) is str:
                    return v
                if isinstance(v, (bytes, bytearray)):
                    return canonical_value(col, v)
                # MySQL's binary JSON, decoded: print it the way MySQL prints JSON text.
                return json.dumps(_json_plain(v), ensure_ascii=False, separators=(", ", ": "))
            return json_text
        if col.data_type in ("enum", "json", "varchar", "char", "text", "set") and bcol.character_set_name not in (None, "binary"):
            return _text
        return lambda v: v if type(v) is str else canonical_value(col, v)
    return lambda v: canonical_value(col, v)


def _json_plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _json_plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_plain(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return v


class _Plan:
    """How to turn one table's binlog rows (one table-map layout) into canonical rows."""

    __slots__ = ("convs", "names", "set_cols")

    def __init__(self, bcols: Sequence[Any], wanted: frozenset[str] | None, key: Sequence[str], flavor: str) -> None:
        self.convs: list[tuple[str, Callable[[Any], Any]]] = []
        self.set_cols: set[str] = set()
        for bcol in bcols:
            name = bcol.name
            if wanted is not None and name not in wanted and name not in key:
                continue
            col = binlog_column(bcol)
            self.convs.append((name, _converter(col, bcol, flavor)))
            if col.data_type == "set":
                self.set_cols.add(name)
        self.names = tuple(n for n, _ in self.convs)

    def row(self, values: Mapping[str, Any], none_sources: Mapping[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, conv in self.convs:
            v = values[name]
            if v is None:
                # An empty SET comes back as None too; only its none_source tells it from NULL.
                if name in self.set_cols and none_sources and none_sources.get(name) == "empty set":
                    out[name] = ""
                else:
                    out[name] = None
            elif conv is _identity:
                out[name] = v
            else:
                out[name] = conv(v)
        return out


# -- the stream ------------------------------------------------------------------------------------

@dataclass(slots=True)
class Chunk:
    """ChangeEvents in binlog order; `position` is set when the chunk ends at a commit."""

    events: list[ChangeEvent]
    position: Position | None
    rows: int = 0            # binlog row changes read for the chosen tables (before filtering)
    t: float = 0.0           # time.monotonic() when handed over


@dataclass(frozen=True)
class ServerInfo:
    flavor: str              # "mariadb" | "mysql"
    version: str
    server_id: int
    gtid_mode: bool          # MySQL: gtid_mode=ON; MariaDB: always True
    binlog_files: tuple[str, ...] = ()


@dataclass
class _TableState:
    schema: TableSchema
    wanted: frozenset[str] | None
    plans: dict[int, _Plan] = field(default_factory=dict)   # table id → plan


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
    ) -> None:
        install_decoders()
        self.mysql = mysql
        self.database = database
        self.server = server
        self.flavor = server.flavor
        self.server_id = server_id
        self.chunk_rows = chunk_rows
        self.heartbeat_s = heartbeat_s
        self.position_every_s = position_every_s
        self.tables = {
            name: _TableState(schema, frozenset(columns.get(name) or ()) or None) for name, schema in schemas.items()
        }
        # Where the reader stands: the position after the last commit it has read.
        self.committed = start
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
        self._pending_rows = 0
        self._last_emit = time.monotonic()
        self._emitted_position: Position | None = None
        self.stream: Any = None
        self.rows_read = 0
        self._idle_error: BaseException | None = None

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
            GtidEvent, HeartbeatLogEvent, MariadbGtidEvent, QueryEvent, RotateEvent, XidEvent,
        )
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        kw: dict[str, Any] = dict(
            server_id=self.server_id,
            blocking=blocking,
            only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent, RotateEvent,
                         MariadbGtidEvent, GtidEvent, HeartbeatLogEvent],
            # Row events of other tables are skipped unparsed; every transaction's GTID/XID still
            # arrives, so the position follows the whole binlog.
            only_tables=list(self.tables),
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
            self._reset_trx()
            self._pending.clear()   # emitted-or-not, these are re-read from self.committed
            self._pending_rows = 0
            try:
                self.stream = self.open_stream(self.committed)
                connected_logged = False
                hooked: Any = None
                while not stop.is_set():
                    ev = self.stream.fetchone()
                    if ev is None:
                        raise ConnectionError("binlog stream ended (server closed the dump)")
                    if not connected_logged:
                        log.info("binlog_connected", position=self.committed.describe())
                        connected_logged = True
                        backoff.reset()
                    if idle is not None:
                        if self._idle_error is not None:
                            exc, self._idle_error = self._idle_error, None
                            raise exc
                        conn = self.stream._stream_connection  # the library reconnects by itself
                        if conn is not hooked:
                            hooked = self._hook_quiet(conn, idle)
                    self._handle(ev)
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args else None
                if code in FATAL_MYSQL_ERRORS:
                    raise SourceError(self._fatal_message(code, str(exc.args[1] if len(exc.args) > 1 else exc))) from None
                self._disconnected(exc, backoff, stop)
            except (OSError, EOFError, ConnectionError, struct.error) as exc:
                self._disconnected(exc, backoff, stop)
            finally:
                self._close_stream()
        if self._idle_error is not None:
            exc, self._idle_error = self._idle_error, None
            raise exc
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
                    except BaseException as exc:  # raised by run() after this read, not into pymysql
                        self._idle_error = exc
            return blocking_read(buf)

        raw.readinto = readinto
        return conn

    def _disconnected(self, exc: BaseException, backoff: Backoff, stop: threading.Event) -> None:
        delay = backoff.next_delay()
        log.warning("binlog_disconnected", error=short_error(exc),
                    resume_from=self.committed.describe(), retry_in_s=round(delay, 3))
        stop.wait(delay)

    def _close_stream(self) -> None:
        if self.stream is not None:
            try:
                self.stream.close()
            except Exception as exc:  # closing a dead connection must not hide the real error
                log.debug("binlog_close_failed", error=str(exc))
            self.stream = None

    def _fatal_message(self, code: int, text: str) -> str:
        who = f"MySQL user {self.mysql.user!r}"
        if code in (ER_ACCESS_DENIED, ER_DBACCESS_DENIED, ER_ACCESS_DENIED_USER, 1142):
            if "REPLICATION SLAVE" in text.upper() or "REPLICATION" in text.upper():
                return (f"{who} lacks REPLICATION SLAVE: run GRANT REPLICATION SLAVE ON *.* TO the user "
                        f"(server said: {text})")
            return f"{who} was refused by {self.mysql.display}: {text}"
        return (f"the binlog cannot be read from {self.committed.describe()}: {text}. If the position was "
                f"purged, {resnapshot_hint(self.tables)}")

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
        if name in ("WriteRowsEvent", "UpdateRowsEvent", "DeleteRowsEvent"):
            self._rows(ev, name)
        elif name == "XidEvent":
            self._commit(ev)
        elif name == "MariadbGtidEvent":
            self._reset_trx()
            self._trx_gtid = (ev.domain_id, ev.server_id, ev.gtid_seq_no)
            self._base = gtid_version(ev.gtid_seq_no)
            self._mask = ROW_MASK
            self._in_trx = True
            self._awaiting_begin = True
            if self._domain_warned is None:
                self._domain_warned = ev.domain_id
            elif self._domain_warned != ev.domain_id and self._domain_warned >= 0:
                log.warning("binlog_several_gtid_domains", first=self._domain_warned, now=ev.domain_id,
                            note="versions of different domains are not comparable")
                self._domain_warned = -1
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
            for st in self.tables.values():
                st.plans.clear()
            if self.committed.gtid is None and not self._in_trx and self.flavor == "mysql":
                self.committed = Position(self.flavor, None, ev.next_binlog, ev.position)
        elif name == "HeartbeatLogEvent":
            self._flush(heartbeat=True)

    def _query(self, ev: Any) -> None:
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
        if self._awaiting_begin or not self._in_trx:
            # A statement right after the GTID event (no BEGIN), or outside any transaction: DDL
            # and other standalone statements commit by themselves.
            self._commit(ev)

    def _ddl(self, query: str, verb: str, ev: Any) -> None:
        schema = ev.schema.decode() if isinstance(ev.schema, bytes) else str(ev.schema or "")
        for table, st in self.tables.items():
            if not re.search(r"(?<![\w$])`?" + re.escape(table) + r"`?(?![\w$])", query):
                continue
            if schema and schema != self.database and f"{self.database}" not in query:
                continue
            st.plans.clear()
            if verb in ("TRUNCATE", "DROP"):
                log.warning("binlog_table_statement", table=table, statement=verb,
                            note="rows removed by a statement are not in the row log; re-run sync-snapshot for this table")
            else:
                self._reload_key(table, st, why=f"{verb} statement")

    def _reload_key(self, table: str, st: _TableState, why: str) -> None:
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
        st.plans.clear()
        log.info("binlog_schema_reloaded", table=table, why=why, key=list(schema.key))

    def _plan(self, st: _TableState, ev: Any) -> _Plan:
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
            plan = st.plans[ev.table_id] = _Plan(cols, st.wanted, st.schema.key, self.flavor)
        return plan

    def _next_version(self) -> int:
        """The version of the next row change; past the index range, the last one (overflow)."""
        i = self._index
        self._index = i + 1
        if i >= self._mask:
            return self._base | self._mask
        return self._base | i

    def _rows(self, ev: Any, kind: str) -> None:
        table = ev.table
        st = self.tables.get(table)
        if st is None or ev.schema != self.database:
            return
        if self._trx_gtid is None and self._trx_mysql_gtid is None:
            # MySQL without GTIDs: version from (file number, event end position, row index).
            fileno = int(self._file.rsplit(".", 1)[-1]) if self._file else 0
            self._base = (fileno << 44) | (int(ev.packet.log_pos) << FILE_ROW_BITS)
            self._mask = FILE_ROW_MASK
            self._index = 0
        plan = self._plan(st, ev)
        key = st.schema.key
        out = self._pending
        rows = ev.rows
        self.rows_read += len(rows)
        self._pending_rows += len(rows)
        src = Source.BINLOG
        if kind == "WriteRowsEvent":
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
                    pk = ((k0, row[k0]),)
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

    def _out(self, ev: ChangeEvent, version: int) -> None:
        if version & self._mask == self._mask:
            # Past the index range of this transaction (rows event): collapse per key, emit at commit.
            self._overflow[(ev.table, repr(ev.pk))] = ev
            return
        self._pending.append(ev)

    def _commit(self, ev: Any) -> None:
        if self._overflow:
            self._pending.extend(self._overflow.values())
            log.info("binlog_large_transaction", collapsed=len(self._overflow), rows=self._index)
        log_pos = int(ev.packet.log_pos) if getattr(ev, "packet", None) is not None else None
        if self.flavor == "mariadb":
            if self._trx_gtid is not None:
                d, s, n = self._trx_gtid
                self._gtid_state[d] = (s, n)
            state = self._gtid_state
            if len(state) == 1:  # one domain (the usual case): what format_mariadb_gtids writes
                ((d, (s, n)),) = state.items()
                gtid = f"{d}-{s}-{n}"
            else:
                gtid = format_mariadb_gtids(state)
            self.committed = Position("mariadb", gtid, self._file, log_pos)
            if self.stream is not None:
                # The library reconnects by itself after error 2013/2006 with auto_position: make
                # that resume from this commit, not from where we started.
                self.stream.auto_position = gtid
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
        self._flush(commit=True)

    # -- output ------------------------------------------------------------------------------------
    def _flush(self, *, commit: bool = False, heartbeat: bool = False, final: bool = False) -> None:
        """Emit the pending events (and the last commit position when at a commit)."""
        pending = self._pending
        now = time.monotonic()
        at_commit = commit or heartbeat or final
        if pending:
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
        pending.clear()
        self._pending_rows = 0
        self._last_emit = now
        if position is not None:
            self._emitted_position = position
        self._emit(chunk)


# -- server checks and start positions -------------------------------------------------------------

def _var(cur: Any, name: str) -> str | None:
    cur.execute(f"SHOW GLOBAL VARIABLES LIKE '{name}'")
    row = cur.fetchone()
    return None if row is None else str(row[1])


def check_server(conn: Any, mysql: MySQLSettings, database: str, tables: Iterable[str]) -> ServerInfo:
    """Check the server can feed a binlog reader; SourceError with what to change when not."""
    import pymysql

    with conn.cursor() as cur:
        cur.execute("SELECT VERSION(), @@server_id")
        version, server_id = cur.fetchone()
        flavor = "mariadb" if "mariadb" in str(version).lower() else "mysql"
        where = f"MySQL server {mysql.display}"
        log_bin = _var(cur, "log_bin")
        if (log_bin or "").upper() not in ("ON", "1"):
            raise SourceError(f"{where}: binary logging is off; start the server with log_bin (--log-bin) and "
                              "binlog_format=ROW, binlog_row_image=FULL, binlog_row_metadata=FULL")
        fmt = _var(cur, "binlog_format")
        if (fmt or "").upper() != "ROW":
            raise SourceError(f"{where}: binlog_format is {fmt}; expected ROW: SET GLOBAL binlog_format=ROW "
                              "and binlog_format=ROW in the server config (sessions opened before keep the old format)")
        image = _var(cur, "binlog_row_image")
        if (image or "FULL").upper() != "FULL":
            raise SourceError(f"{where}: binlog_row_image is {image}; expected FULL: SET GLOBAL binlog_row_image=FULL "
                              "and binlog_row_image=FULL in the server config")
        meta = _var(cur, "binlog_row_metadata")
        if meta is None:
            raise SourceError(f"{where}: server {version} has no binlog_row_metadata; expected MariaDB >= 10.5 or "
                              "MySQL >= 8.0.14 with binlog_row_metadata=FULL")
        if meta.upper() != "FULL":
            raise SourceError(f"{where}: binlog_row_metadata is {meta}; expected FULL (column names in the binlog): "
                              "SET GLOBAL binlog_row_metadata=FULL and binlog_row_metadata=FULL in the server config")
        gtid_mode = True
        if flavor == "mysql":
            gm = _var(cur, "gtid_mode")
            gtid_mode = (gm or "OFF").upper() == "ON"
        try:
            cur.execute("SHOW BINARY LOGS")
            files = tuple(str(r[0]) for r in cur.fetchall())
        except pymysql.err.MySQLError as exc:
            if exc.args and exc.args[0] in (ER_ACCESS_DENIED, 1045, 1044):
                need = "BINLOG MONITOR (REPLICATION CLIENT)" if flavor == "mariadb" else "REPLICATION CLIENT"
                raise SourceError(f"{where}: user {mysql.user!r} lacks {need}: run GRANT {need.split(' (')[0]} "
                                  f"ON *.* TO the user (server said: {exc.args[1]})") from None
            raise
        for table in tables:
            try:
                cur.execute(f"SELECT 1 FROM {quote_ident(database)}.{quote_ident(table)} LIMIT 0")
                cur.fetchall()
            except pymysql.err.MySQLError as exc:
                if exc.args and exc.args[0] in (1142, 1044, 1045, ER_ACCESS_DENIED):
                    raise SourceError(f"{where}: user {mysql.user!r} lacks SELECT on {database}.{table}: run GRANT "
                                      f"SELECT ON `{database}`.* TO the user") from None
                if exc.args and exc.args[0] == 1146:
                    raise ConfigError(f"table {database}.{table!r} does not exist") from None
                raise
    return ServerInfo(flavor, str(version), int(server_id), gtid_mode, files)


def check_replication(source: BinlogSource, timeout_s: float = 10.0) -> None:
    """Open a binlog dump at the start position and read one event: proves REPLICATION SLAVE and
    that the position is still in the binlog (SourceError otherwise)."""
    import pymysql

    stream = source.open_stream(source.committed, blocking=True)
    try:
        stream.fetchone()
    except pymysql.err.MySQLError as exc:
        code = exc.args[0] if exc.args else None
        if code in FATAL_MYSQL_ERRORS:
            raise SourceError(source._fatal_message(code, str(exc.args[1] if len(exc.args) > 1 else exc))) from None
        raise SourceError(f"MySQL server {source.mysql.display}: binlog dump failed: {exc}") from None
    finally:
        stream.close()


def resolve_start(conn: Any, server: ServerInfo, start: str, tables: Sequence[str]) -> Position:
    """--start current|earliest|GTID|FILE:POS → a Position (SourceError/ConfigError when impossible)."""
    flavor = server.flavor
    with conn.cursor() as cur:
        if start == "current":
            if flavor == "mariadb":
                cur.execute("SELECT @@global.gtid_binlog_pos")
                return Position("mariadb", str(cur.fetchone()[0] or ""))
            cur.execute("SHOW MASTER STATUS")
            row = cur.fetchone()
            if row is None:
                raise SourceError("SHOW MASTER STATUS is empty: binary logging is off")
            if server.gtid_mode:
                return Position("mysql", str(row[4] or ""), str(row[0]), int(row[1]))
            return Position("mysql", None, str(row[0]), int(row[1]))
        if start == "earliest":
            first = server.binlog_files[0] if server.binlog_files else None
            if first is None:
                raise SourceError("SHOW BINARY LOGS is empty; expected at least one binlog file")
            if flavor == "mariadb":
                cur.execute("SELECT BINLOG_GTID_POS(%s, 4)", (first,))
                return Position("mariadb", str(cur.fetchone()[0] or ""), first, 4)
            if server.gtid_mode:
                cur.execute("SELECT @@global.gtid_purged")
                return Position("mysql", str(cur.fetchone()[0] or ""))
            return Position("mysql", None, first, 4)
        m = re.fullmatch(r"(.+):(\d+)", start)
        if m and not re.fullmatch(r"[0-9a-fA-F-]{36}:.*", start):
            file, pos = m.group(1), int(m.group(2))
            if file not in server.binlog_files:
                raise ConfigError(f"--start: binlog file {file!r} is not on the server; expected one of "
                                  f"{', '.join(server.binlog_files[-5:]) or '(none)'}")
            if flavor == "mariadb":
                cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
                gtid = cur.fetchone()[0]
                if gtid is None:
                    raise ConfigError(f"--start: {start!r} is not a transaction boundary in {file}; expected "
                                      "a position from SHOW BINLOG EVENTS / SHOW MASTER STATUS")
                return Position("mariadb", str(gtid), file, pos)
            return Position("mysql", None, file, pos)
        if flavor == "mariadb":
            parse_mariadb_gtids(start, "--start")
            return Position("mariadb", start)
        if re.fullmatch(r"[0-9a-fA-F-]{36}:[0-9:,\s\-a-fA-F]*", start):
            return Position("mysql", start)
        raise ConfigError(f"--start: {start!r}; expected current, earliest, a GTID (MariaDB 0-1-100, MySQL "
                          "uuid:1-100) or FILE:POS")


def resnapshot_hint(tables: Sequence[str]) -> str:
    """How to recover from a purged position: snapshot rows with binlog-comparable versions (trigger
    versions would never compare with this stream's); the snapshot saves the point to resume from."""
    return (f"re-run sync-snapshot --table {','.join(tables)} --versions binlog (with this stream's "
            "--key-template): it saves the position to start from, then start sync-binlog again")


def check_position_available(conn: Any, server: ServerInfo, position: Position, tables: Sequence[str]) -> None:
    """SourceError when the binlog no longer holds what follows `position` (purged), or the server
    is behind it (a different or reset server)."""
    hint = resnapshot_hint(tables)
    with conn.cursor() as cur:
        if server.flavor == "mariadb" and position.gtid is not None:
            saved = parse_mariadb_gtids(position.gtid, "saved position")
            first = server.binlog_files[0] if server.binlog_files else None
            earliest: dict[int, tuple[int, int]] = {}
            if first is not None:
                cur.execute("SELECT BINLOG_GTID_POS(%s, 4)", (first,))
                earliest = parse_mariadb_gtids(str(cur.fetchone()[0] or ""), "earliest binlog GTID")
            cur.execute("SELECT @@global.gtid_binlog_pos")
            current = parse_mariadb_gtids(str(cur.fetchone()[0] or ""), "gtid_binlog_pos")
            for domain, (_, seq) in earliest.items():
                if seq > saved.get(domain, (0, 0))[1]:
                    raise SourceError(
                        f"the saved position {position.describe()} was purged from the binlog (the oldest "
                        f"binlog {first} starts after {domain}-{earliest[domain][0]}-{seq}); {hint}")
            for domain, (_, seq) in saved.items():
                if seq > current.get(domain, (0, 0))[1]:
                    raise SourceError(
                        f"the saved position {position.describe()} is ahead of the server "
                        f"(gtid_binlog_pos {format_mariadb_gtids(current) or 'empty'}): a reset or different server? {hint}")
        elif position.gtid is None and position.file is not None:
            if position.file not in server.binlog_files:
                raise SourceError(f"the saved position {position.describe()} was purged from the binlog "
                                  f"(oldest: {server.binlog_files[0] if server.binlog_files else 'none'}); {hint}")
        elif position.gtid:
            cur.execute("SELECT GTID_SUBSET(@@global.gtid_purged, %s)", (position.gtid,))
            if not cur.fetchone()[0]:
                raise SourceError(f"the saved position {position.describe()} was purged from the binlog; {hint}")
