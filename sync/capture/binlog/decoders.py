"""From a decoded binlog row event to our values: mysql-replication decoding fixes, the binlog
field types, one converter per column and the per-table row plan (RowPlan).

Row values: the binlog's own table map (binlog_row_metadata=FULL) gives the column names and types
of every event, so ALTER TABLE (add/drop/rename column) mid-stream needs no schema reload for the
values; each value is mapped with sync.rows.schema.canonical_value to exactly what the triggers and the
snapshot produce. The key columns come from sync.rows.schema.load_table() (sync.capture.binlog.reader
re-reads them when a DDL statement names the table, or a row lacks a key column).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from sync.errors import SourceError
from sync.rows.rowcodec import normalize_value
from sync.rows.schema import Column, canonical_value

__all__ = [
    "RowPlan",
    "binlog_column",
    "column_converter",
    "decode_date",
    "decode_datetime",
    "decode_datetime2",
    "decode_time2",
    "install_decoders",
]


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


def install_decoders() -> None:
    """Replace mysql-replication's TIME2/DATE/DATETIME/DATETIME2 readers (see above). Idempotent;
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
    width = getattr(bcol, "max_length", None)
    if col.data_type == "binary" and width:
        # BINARY(n) travels in the row image without its trailing 0x00 pad bytes; MySQL returns all n.
        def binary_padded(v: Any) -> Any:
            raw = v.encode("utf-8", errors="surrogateescape") if isinstance(v, str) else bytes(v)
            return canonical_value(col, raw.ljust(width, b"\x00"))
        return binary_padded
    return lambda v: canonical_value(col, v)


def _json_plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _json_plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_plain(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return v


class RowPlan:
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
            self.convs.append((name, column_converter(col, bcol, flavor)))
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
