"""The one mapping from a row to its Redis value, shared by the applier, verify and the tests.

Row values are in the canonical JSON-compatible form of `sync.events` (str, int, float, None, or
{"$b64": "<base64>"} for bytes that are not UTF-8). Two Redis formats:

- json: `encode_json(row)`: orjson with sorted keys, compact, deterministic. {"$b64": ...} values
  stay as they are; floats print as orjson prints them (shortest round-trip form, e.g. 1e+16).
- hash: `encode_hash(row)`: one field per non-NULL column (NULL -> field absent); str -> UTF-8,
  int -> decimal, float -> the same text as in json, {"$b64": ...} -> the raw decoded bytes.

`normalize_value(v)` turns Python values read from the database (PyMySQL, mysql-replication) into
the form the triggers send, so snapshot/binlog/verify produce byte-identical Redis values.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from sync.events import JSONValue

__all__ = ["encode_json", "encode_hash", "decode_json", "normalize_value", "normalize_row"]

_OPT = orjson.OPT_SORT_KEYS


def encode_json(row: Mapping[str, JSONValue]) -> bytes:
    """The json-format Redis value of a row: sorted keys, compact."""
    return orjson.dumps(row, option=_OPT)


def decode_json(value: bytes) -> dict[str, JSONValue]:
    """Inverse of encode_json (for verify and tests)."""
    return orjson.loads(value)


def encode_hash(row: Mapping[str, JSONValue]) -> dict[bytes, bytes]:
    """The hash-format Redis value of a row: field -> bytes, NULL columns omitted."""
    out: dict[bytes, bytes] = {}
    v: Any  # narrowed by hand through `t` below (mypy narrows on type(v), not on a saved type(v))
    for col, v in row.items():
        t = type(v)
        if t is str:
            out[col.encode()] = v.encode()
        elif t is int:
            out[col.encode()] = str(v).encode()
        elif v is None:
            continue
        elif t is float:
            out[col.encode()] = orjson.dumps(v)
        elif t is dict and len(v) == 1 and "$b64" in v:
            out[col.encode()] = base64.b64decode(v["$b64"], validate=True)
        else:
            raise TypeError(f"row.{col}: cannot encode {t.__name__} for a Redis hash")
    return out


def _frac(micro: int, fsp: int | None) -> str:
    if fsp is None:
        return f".{micro:06d}" if micro else ""
    if not 0 <= fsp <= 6:
        raise ValueError(f"fsp: expected 0..6, got {fsp}")
    return f".{micro:06d}"[: fsp + 1] if fsp else ""


def normalize_value(v: Any, *, fsp: int | None = None) -> JSONValue:
    """A database value in the form the triggers send.

    int/str -> unchanged; bool -> int; float -> unchanged (finite only); Decimal -> str keeping
    its scale ('12.50', never exponent form); bytes -> str if valid UTF-8 else {"$b64": ...};
    datetime -> 'YYYY-MM-DD HH:MM:SS[.ffffff]'; date -> 'YYYY-MM-DD'; time -> 'HH:MM:SS[.ffffff]';
    timedelta (MySQL TIME) -> '[-]HH:MM:SS[.ffffff]' (hours may exceed 24); None -> None.

    Fractional seconds: with `fsp` (the column's fractional-second precision, 0..6) exactly that
    many digits, as MySQL prints them; without it, 6 digits when non-zero, else none. Timezone-
    aware datetimes are rejected (MySQL values are naive; convert in the caller).
    """
    t = type(v)
    if t is int or t is str or v is None:
        return v
    if t is bool:
        return int(v)
    if t is float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite float, got {v!r}")
        return v
    if t is Decimal:
        if not v.is_finite():
            raise ValueError(f"expected a finite Decimal, got {v!r}")
        return format(v, "f")
    if isinstance(v, (bytes, bytearray, memoryview)):
        data = bytes(v)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return {"$b64": base64.b64encode(data).decode("ascii")}
    if t is dt.datetime:
        if v.tzinfo is not None:
            raise ValueError(f"expected a naive datetime (as MySQL returns), got {v!r}")
        return f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}" + _frac(
            v.microsecond, fsp
        )
    if t is dt.date:
        return f"{v.year:04d}-{v.month:02d}-{v.day:02d}"
    if t is dt.time:
        if v.tzinfo is not None:
            raise ValueError(f"expected a naive time, got {v!r}")
        return f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}" + _frac(v.microsecond, fsp)
    if t is dt.timedelta:
        total_us = (v.days * 86400 + v.seconds) * 1_000_000 + v.microseconds
        sign = "-" if total_us < 0 else ""
        total_us = abs(total_us)
        secs, micro = divmod(total_us, 1_000_000)
        hours, rem = divmod(secs, 3600)
        minutes, seconds = divmod(rem, 60)
        return f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}" + _frac(micro, fsp)
    if isinstance(v, int):  # int subclasses (e.g. IntEnum)
        return int(v)
    if isinstance(v, str):
        return str(v)
    raise TypeError(f"cannot normalize a {t.__name__} value ({v!r:.60}) for Redis")


def normalize_row(row: Mapping[str, Any], fsp: Mapping[str, int] | None = None) -> dict[str, JSONValue]:
    """normalize_value over a row; `fsp` maps temporal columns to their fractional precision."""
    if not fsp:
        return {col: normalize_value(v) for col, v in row.items()}
    return {col: normalize_value(v, fsp=fsp.get(col)) for col, v in row.items()}
