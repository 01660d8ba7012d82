"""From a decoded binlog row event to our values: mysql-replication decoding fixes, the binlog
field types, one converter per column and the per-table row plan (RowPlan).

Row values: the binlog's own table map (binlog_row_metadata=FULL) gives the column names and types
of every event, so ALTER TABLE (add/drop/rename column) mid-stream needs no schema reload for the
values; each value is mapped with sync.rows.schema.canonical_value to exactly what the triggers and the
snapshot produce. The key columns come from sync.rows.schema.load_table() (sync.capture.binlog.reader
re-reads them when a DDL statement names the table, or a row lacks a key column).
"""

from __future__ import annotations

import codecs
import datetime as dt
import json
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import structlog

from sync.errors import ConfigError, SourceError
from sync.rows.rowcodec import normalize_value
from sync.rows.schema import Column, canonical_value

__all__ = [
    "DECODER_ENV",
    "RowPlan",
    "binlog_column",
    "column_converter",
    "decode_date",
    "decode_datetime",
    "decode_datetime2",
    "decode_time2",
    "decoder_mode",
    "JsonNumber",
    "decode_json_opaque",
    "install_decoders",
    "native_spec",
    "select_decoder",
    "compressed_row_events",
    "compressed_query_event",
    "inflate",
    "inflate_compressed_rows",
]

log = structlog.get_logger(__name__)


# -- decoding fixes ------------------------------------------------------------------------------
# mysql-replication 1.0.17 decodes negative TIME(fsp>0) wrongly (it negates the integer part and
# the fraction separately; MySQL stores them as one signed packed number) and turns zero or
# partial-zero dates ('0000-00-00', '2024-00-00 …') into None, which is indistinguishable from
# NULL. These replacements decode the same bytes per MySQL's documented TIME2/DATE/DATETIME2
# formats and return zero dates as the text MySQL prints (what pymysql returns for them).

def decode_time2(self: Any, column: Any) -> dt.timedelta:
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


def decode_date(self: Any) -> dt.date | str:
    v = self.packet.read_uint24()
    y, m, d = v >> 9, (v >> 5) & 0xF, v & 0x1F
    try:
        return dt.date(y, m, d)
    except ValueError:
        return f"{y:04d}-{m:02d}-{d:02d}"


def decode_datetime(self: Any) -> dt.datetime | str:
    v = self.packet.read_uint64()
    d, t = divmod(v, 1000000)
    y, mo, day = d // 10000, (d // 100) % 100, d % 100
    h, mi, s = t // 10000, (t // 100) % 100, t % 100
    try:
        return dt.datetime(y, mo, day, h, mi, s)
    except ValueError:
        return f"{y:04d}-{mo:02d}-{day:02d} {h:02d}:{mi:02d}:{s:02d}"


def decode_datetime2(self: Any, column: Any) -> dt.datetime | str:
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


class JsonNumber(str):
    """An opaque DECIMAL inside MySQL's binary JSON: printed as the number it is (1.50), not quoted."""


_JSON_TEMPORAL = {7: "datetime", 10: "date", 11: "time", 12: "datetime", 17: "datetime", 18: "datetime", 19: "time"}
_JSON_DECIMAL = (0, 246)


def decode_json_opaque(data: bytes) -> Any:
    """An opaque value of MySQL's binary JSON (field type, variable-length size, bytes) as MySQL prints
    it: DECIMAL as its number (a JsonNumber), DATE 'YYYY-MM-DD', TIME '[-]HH:MM:SS.ffffff', DATETIME and
    TIMESTAMP 'YYYY-MM-DD HH:MM:SS.ffffff' (the 8-byte packed form); any other type: the bytes decoded
    with errors="ignore" (as mysql-replication does). Replaces json_binary.parse_opaque, which returned
    Decimal / datetime objects that json.dumps cannot print, dropped a TIME's sign and a DATE's type."""
    from pymysqlreplication.util.bytes import decode_variable_length, parse_decimal_from_bytes

    if not data:
        return None
    kind = data[0]
    length, n = decode_variable_length(data[1:])
    payload = data[1 + n:1 + n + length]
    if kind in _JSON_DECIMAL:
        p, s = (payload[0], payload[1]) if len(payload) >= 2 else (0, 0)
        intg, frac = p - s, s
        size = intg // 9 * 4 + _DIG2BYTES[intg % 9] + frac // 9 * 4 + _DIG2BYTES[frac % 9]
        if not (1 <= p <= 65 and s <= min(p, 38)) or len(payload) < 2 + size:
            raise ValueError("malformed JSON document (opaque DECIMAL without a valid precision and scale)")
        return JsonNumber(format(parse_decimal_from_bytes(payload[2:], p, s), "f"))
    what = _JSON_TEMPORAL.get(kind)
    if what is None:
        return payload.decode(errors="ignore")
    if len(payload) < 8:
        raise ValueError("malformed JSON document (opaque date/time shorter than 8 bytes)")
    v = int.from_bytes(payload[:8], "little", signed=True)
    m = abs(v)
    frac_us, ip = m & 0xFFFFFF, m >> 24
    if what == "time":
        sign = "-" if v < 0 else ""
        return f"{sign}{(ip >> 12) & 0x3FF:02d}:{(ip >> 6) & 0x3F:02d}:{ip & 0x3F:02d}.{frac_us:06d}"
    ymd, hms = ip >> 17, ip & 0x1FFFF
    ym = ymd >> 5
    date = f"{ym // 13:04d}-{ym % 13:02d}-{ymd & 0x1F:02d}"
    if what == "date":
        return date
    return f"{date} {hms >> 12:02d}:{(hms >> 6) & 0x3F:02d}:{hms & 0x3F:02d}.{frac_us:06d}"


_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def install_decoders() -> None:
    """Replace mysql-replication's TIME2/DATE/DATETIME/DATETIME2 readers and its JSON opaque-value
    parser (see above). Idempotent;
    refuses to run against a library version whose private reader names differ."""
    global _decoders_installed
    if _decoders_installed:
        return
    from pymysqlreplication.row_event import RowsEvent

    names = {
        "_RowsEvent__read_time2": decode_time2,
        "_RowsEvent__read_date": decode_date,
        "_RowsEvent__read_datetime": decode_datetime,
        "_RowsEvent__read_datetime2": decode_datetime2,
    }
    missing = [n for n in names if not hasattr(RowsEvent, n)]
    if missing:
        raise SourceError(
            f"mysql-replication: RowsEvent lacks {', '.join(missing)}; this gearsync was checked with 1.0.17 "
            "(pip install 'mysql-replication==1.0.17')"
        )
    for n, fn in names.items():
        setattr(RowsEvent, n, fn)
    from pymysqlreplication import json_binary

    if not hasattr(json_binary, "parse_opaque"):
        raise SourceError("mysql-replication: json_binary has no parse_opaque; this gearsync was checked with 1.0.17 "
                          "(pip install 'mysql-replication==1.0.17')")
    json_binary.parse_opaque = decode_json_opaque
    from pymysqlreplication.packet import BinLogPacketWrapper

    event_map = getattr(BinLogPacketWrapper, "_BinLogPacketWrapper__event_map", None)
    if not isinstance(event_map, dict):
        raise SourceError("mysql-replication: BinLogPacketWrapper has no event map; this gearsync was checked with "
                          "1.0.17 (pip install 'mysql-replication==1.0.17')")
    for code, cls in zip(_COMPRESSED_V1, compressed_row_events()):
        event_map[code] = cls
    event_map[_QUERY_COMPRESSED] = compressed_query_event()
    _decoders_installed = True


# -- MariaDB's compressed rows events (log_bin_compress=ON) ------------------------------------------
# WRITE/UPDATE/DELETE_ROWS_COMPRESSED_EVENT_V1 (166-168): a v1 rows event whose row data (after the
# columns-present bitmaps) is one byte 0x80 | n, the uncompressed length in n big-endian bytes, then
# a zlib stream. mysql-replication does not know them and drops them unseen; install_decoders()
# maps them to these classes, which inflate the row data and then read on as the plain events do
# (same class names: the reader handles them as WriteRowsEvent, ...).

_COMPRESSED_V1 = (166, 167, 168)
_QUERY_COMPRESSED = 165   # QUERY_COMPRESSED_EVENT: a QUERY event whose statement is compressed the same way
_compressed_classes: list[type] = []


def inflate(data: bytes, what: str) -> bytes:
    """MariaDB's compressed binlog data (one byte 0x80 | n, the length in n big-endian bytes, zlib)."""
    n = data[0] & 0x07 if data else 0
    if not data or data[0] & 0xE0 != 0x80 or not 1 <= n <= 4 or len(data) < 1 + n:
        raise ValueError(f"compressed {what}: bad header byte {data[:1].hex() or 'none'}")
    size = int.from_bytes(data[1:1 + n], "big")
    d = zlib.decompressobj()
    try:
        out = d.decompress(data[1 + n:], size + 1)
    except zlib.error as exc:
        raise ValueError(f"compressed {what}: {exc}") from None
    if len(out) != size or not d.eof:
        raise ValueError(f"compressed {what}: {len(out)} bytes inflated, the header says {size}")
    return out


def inflate_compressed_rows(ev: Any) -> None:
    """Replace the compressed row data of rows event `ev` (positioned after its bitmaps) by the inflated rows."""
    wrapper = ev.packet
    pkt = wrapper.packet
    rows = inflate(bytes(pkt._data[pkt._position:pkt._position + ev.event_size - wrapper.read_bytes]), "rows event")
    size = len(rows)
    from pymysql.protocol import MysqlPacket

    wrapper.packet = MysqlPacket(rows, "utf8")
    wrapper.read_bytes = 0
    ev.event_size = size


def compressed_row_events() -> list[type]:
    """The classes of MariaDB's compressed v1 rows events (write, update, delete): for only_events."""
    if not _compressed_classes:
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

        for base in (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent):
            def init(self: Any, *a: Any, _base: Any = base, **kw: Any) -> None:
                _base.__init__(self, *a, **kw)
                if self._processed:
                    self.inflate_error = None
                    try:
                        inflate_compressed_rows(self)
                    except (ValueError, zlib.error) as exc:   # raised where the rows are read (RowPlan.rows)
                        self.inflate_error = str(exc)

            _compressed_classes.append(type(base.__name__, (base,), {"__init__": init, "compressed": True}))
    return list(_compressed_classes)


_query_class: list[type] = []


def compressed_query_event() -> type:
    """The class of MariaDB's QUERY_COMPRESSED_EVENT (log_bin_compress=ON and a statement of at least
    log_bin_compress_min_len bytes): a QueryEvent (same class name, for the reader) whose `query` is
    the inflated statement; `inflate_error` says why it could not be inflated (else None). Without
    it the library drops these events unseen (a compressed TRUNCATE or ALTER would go unnoticed)."""
    if not _query_class:
        from pymysqlreplication.event import QueryEvent

        def init(self: Any, from_packet: Any, *a: Any, **kw: Any) -> None:
            reads: list[bytes] = []
            plain = from_packet.read

            def read(n: int) -> bytes:   # the last read of QueryEvent.__init__ is the statement's bytes
                b = plain(n)
                reads.append(b)
                return bytes(b)

            from_packet.read = read
            try:
                QueryEvent.__init__(self, from_packet, *a, **kw)
            finally:
                del from_packet.read
            self.inflate_error = None
            try:
                self.query = inflate(reads[-1] if reads else b"", "QUERY event").decode("utf-8", "backslashreplace")
            except ValueError as exc:
                self.inflate_error = str(exc)

        _query_class.append(type("QueryEvent", (QueryEvent,), {"__init__": init, "compressed": True}))
    return _query_class[0]


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


def column_converter(col: Column, bcol: Any, flavor: str) -> Callable[[Any], Any]:
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
                if isinstance(v, str):   # a string-like opaque value or date/time, a JsonNumber
                    return str(v)
                if isinstance(v, (bytes, bytearray)):
                    return canonical_value(col, v)
                # MySQL's binary JSON, decoded: print it the way MySQL prints JSON text.
                return _json_dump(v)
            return json_text
        if col.data_type in ("enum", "json", "varchar", "char", "text", "set") and bcol.character_set_name not in (None, "binary"):
            return _text
        return lambda v: v if type(v) is str else canonical_value(col, v)
    width = getattr(bcol, "max_length", None)
    if col.data_type == "binary" and width:
        # BINARY(n) travels in the row image without its trailing 0x00 pad bytes; MySQL returns all n.
        def binary_padded(v: Any) -> Any:
            raw = v.encode("utf-8", errors="surrogateescape") if isinstance(v, str) else bytes(v)
            return canonical_value(col, raw.ljust(width, b"\x00"))
        return binary_padded
    return lambda v: canonical_value(col, v)


def _json_dump(v: Any) -> str:
    """JSON text as json.dumps(v, ensure_ascii=False, separators=(", ", ": ")) prints it, bytes (keys
    strictly) decoded as UTF-8, a JsonNumber unquoted."""
    if isinstance(v, dict):
        return "{" + ", ".join(json.dumps(k.decode() if isinstance(k, bytes) else k, ensure_ascii=False) + ": "
                               + _json_dump(x) for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_json_dump(x) for x in v) + "]"
    if isinstance(v, JsonNumber):
        return str(v)
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    return json.dumps(v, ensure_ascii=False)


# -- the C decoder (sync/capture/binlog/_rowdecode.c) ----------------------------------------------
# It turns a rows event's bytes straight into what RowPlan.row() returns, for every column type
# below (MySQL's binary JSON too: _rowdecode_json.c prints what json_text prints); a table with any
# other column type (NEWDATE, a charset without table map metadata) is decoded by mysql-replication +
# the converters above, as before.

DECODER_ENV = "GEARSYNC_BINLOG_DECODER"
_DECODER_MODES = ("auto", "c", "python")
_NATIVE: Any = ("rows decoded by sync.capture.binlog._rowdecode",)   # the rows' *none_sources marker

_rowdecode: Any
_import_error: str | None = None
try:
    from sync.capture.binlog import _rowdecode
except ImportError as exc:  # not built (no compiler / Python headers at install time)
    _rowdecode = None
    _import_error = str(exc)

# the C decoder's ops (enum in _rowdecode.c)
(OP_INT, OP_YEAR, OP_FLOAT, OP_DOUBLE, OP_DECIMAL, OP_BIT, OP_ENUM, OP_SET, OP_DATE, OP_DATETIME, OP_DATETIME2,
 OP_TIMESTAMP, OP_TIMESTAMP2, OP_TIME, OP_TIME2, OP_STR, OP_ENUM_NONE, OP_JSON) = range(1, 19)


def decoder_mode() -> str:
    """"c" or "python": GEARSYNC_BINLOG_DECODER (auto: c when the extension is built, c: required,
    python: the pure-Python path, e.g. for a benchmark baseline)."""
    mode = os.environ.get(DECODER_ENV, "auto").strip().lower() or "auto"
    if mode not in _DECODER_MODES:
        raise ConfigError(f"{DECODER_ENV}={mode!r}: expected one of {', '.join(_DECODER_MODES)}")
    if mode == "python":
        return "python"
    if _rowdecode is None:
        if mode == "c":
            raise ConfigError(f"{DECODER_ENV}=c: the C row decoder is not built ({_import_error}); "
                              "reinstall with a C compiler and Python headers (pip install -e .)")
        return "python"
    return "c"


_warned = False


def select_decoder() -> str:
    """decoder_mode(), and once per process the one warning line when the C decoder is missing."""
    global _warned
    mode = decoder_mode()
    if mode == "python" and _rowdecode is None and not _warned:
        _warned = True
        log.warning("binlog_c_decoder_unavailable", reason=_import_error,
                    fallback="pure-Python row decoding (slower, same values)")
    return mode


def _str_encoding(charset: str) -> str | None:
    """The codec mysql-replication decodes a column of `charset` with, or None when it keeps the bytes."""
    from pymysqlreplication.row_event import RowsEvent

    enc = RowsEvent.charset_to_encoding(charset)
    try:
        if not codecs.lookup(enc)._is_text_encoding:
            return None
    except LookupError:
        return None
    return str(enc)


def native_spec(bcol: Any, name: str | None, conv: Callable[[Any], Any] | None) -> tuple[Any, ...] | None:
    """The C decoder's spec of one table-map column (name None: not wanted), or None when the
    column needs the Python path. `conv`: the column's converter (wanted columns)."""
    try:
        return _native_spec(bcol, name, conv)
    except AttributeError:  # a table-map column without the metadata its type needs: Python path
        return None


def _native_spec(bcol: Any, name: str | None, conv: Callable[[Any], Any] | None) -> tuple[Any, ...] | None:
    from pymysqlreplication.constants import FIELD_TYPE as F

    t = bcol.type
    ints = {F.TINY: 1, F.SHORT: 2, F.INT24: 3, F.LONG: 4, F.LONGLONG: 8}
    if t in ints:
        return (OP_INT, name, ints[t], int(bool(bcol.unsigned)), None)
    simple = {F.YEAR: OP_YEAR, F.FLOAT: OP_FLOAT, F.DOUBLE: OP_DOUBLE, F.DATE: OP_DATE, F.DATETIME: OP_DATETIME,
              F.TIMESTAMP: OP_TIMESTAMP, F.TIME: OP_TIME}
    if t in simple:
        return (simple[t], name, 0, 0, None)
    timed = {F.DATETIME2: OP_DATETIME2, F.TIMESTAMP2: OP_TIMESTAMP2, F.TIME2: OP_TIME2}
    if t in timed:
        fsp = bcol.fsp
        return (timed[t], name, fsp, 0, None) if isinstance(fsp, int) and 0 <= fsp <= 6 else None
    if t == F.NEWDECIMAL:
        p, d = bcol.precision, bcol.decimals
        return (OP_DECIMAL, name, p, d, None) if 1 <= p <= 65 and 0 <= d <= min(p, 38) else None
    if t == F.BIT:
        nbytes, bits = bcol.bytes, bcol.bits
        first = bits if nbytes == 1 else (bits % 8 or 8)
        return (OP_BIT, name, nbytes, first, None) if 1 <= nbytes <= 8 and 1 <= first <= 8 else None
    if t == F.ENUM:
        if not 1 <= bcol.size <= 8:
            return None
        if not bcol.enum_values:
            return (OP_ENUM_NONE, name, bcol.size, 0, None)
        values = tuple(bcol.enum_values)
        return (OP_ENUM, name, bcol.size, 0, tuple(conv(v) for v in values) if conv is not None else values)
    if t == F.SET:
        members = tuple(bcol.set_values or ())
        if not 1 <= bcol.size <= 8 or not all(type(m) is str for m in members):
            return None
        return (OP_SET, name, bcol.size, 0, members or None)
    if t == F.GEOMETRY:
        return (OP_STR, name, bcol.length_size, 0, None) if 1 <= bcol.length_size <= 4 else None
    if t == F.JSON:   # MySQL's binary JSON (MariaDB's JSON is LONGTEXT: a BLOB in the table map)
        return (OP_JSON, name, bcol.length_size, 0, None) if 1 <= bcol.length_size <= 4 else None
    if t in (F.VARCHAR, F.STRING, F.BLOB):
        charset = bcol.character_set_name
        if charset is None:
            return None
        width = bcol.length_size if t == F.BLOB else (2 if bcol.max_length > 255 else 1)
        if not 1 <= width <= 4:
            return None
        enc = _str_encoding(charset)
        pad = bcol.max_length if (t == F.STRING and enc is None and charset == "binary") else 0
        return (OP_STR, name, width, pad if 0 < pad <= 65535 else 0, enc)
    return None


class RowPlan:
    """How to turn one table's binlog rows (one table-map layout) into canonical rows.

    rows(ev) gives the event's rows: decoded by the C decoder when every column of the table map
    has a native spec (and the decoder is built and not switched off), else mysql-replication's
    ev.rows; row() turns either kind into the canonical row."""

    __slots__ = ("convs", "decoder", "names", "set_cols")

    def __init__(self, bcols: Sequence[Any], wanted: frozenset[str] | None, key: Sequence[str], flavor: str,
                 decoder: str | None = None) -> None:
        self.convs: list[tuple[str, Callable[[Any], Any]]] = []
        self.set_cols: set[str] = set()
        spec: list[tuple[Any, ...] | None] = []
        for bcol in bcols:
            name = bcol.name
            if wanted is not None and name not in wanted and name not in key:
                spec.append(native_spec(bcol, None, None))
                continue
            col = binlog_column(bcol)
            conv = column_converter(col, bcol, flavor)
            self.convs.append((name, conv))
            spec.append(native_spec(bcol, name, conv))
            if col.data_type == "set":
                self.set_cols.add(name)
        self.names = tuple(n for n, _ in self.convs)
        self.decoder: Any = None
        if (decoder or decoder_mode()) == "c" and _rowdecode is not None and all(x is not None for x in spec):
            self.decoder = _rowdecode.Decoder(tuple(spec), _NATIVE)

    def rows(self, ev: Any) -> list[dict[str, Any]]:
        """The rows of a WRITE/UPDATE/DELETE_ROWS event `ev` (mysql-replication's shape). A
        malformed event raises ValueError (the C decoder's DecodeError names the column)."""
        if getattr(ev, "inflate_error", None):
            raise ValueError(ev.inflate_error)
        dec = self.decoder
        wrapper = getattr(ev, "packet", None)
        if dec is None or wrapper is None or len(getattr(wrapper, "_BinLogPacketWrapper__data_buffer", b"")) \
                or not getattr(ev, "complete", False):
            return ev.rows
        pkt = wrapper.packet   # pymysql's packet: the event's bytes, read up to the first row
        start = pkt._position
        return dec.decode(pkt._data, start, start + ev.event_size - wrapper.read_bytes,
                          ev.columns_present_bitmap, getattr(ev, "columns_present_bitmap2", None))

    def row(self, values: Mapping[str, Any], none_sources: Any) -> dict[str, Any]:
        if none_sources is _NATIVE:
            return values  # type: ignore[return-value]  # decoded by _rowdecode: canonical already
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
