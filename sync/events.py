"""Row changes: the `ChangeEvent` type, its wire format v1, and the classic bare payload.

Wire format v1 (one gearman job payload, UTF-8 JSON, at most MAX_PAYLOAD_BYTES):

    {"v":1,"table":"data","op":"update","pk":{"id":5},
     "row":{"id":5,"volume":3,"name":"x"},"version":123456789012345678,"source":"trigger"}

- "v": the integer 1.
- "table": the table name; 1..64 characters, no control characters.
- "op": "insert", "update" or "delete".
- "pk": an object of primary-key column -> value, in primary-key column order (composite keys have
  several members). Values are scalars: string, integer, float or {"$b64": ...}; never null or
  true/false.
- "row": the whole row after the change, column -> value, for insert and update; absent or null for
  delete. It contains every pk column with the same value as in "pk".
- "version": a JSON integer, 0 <= version < 2**64, that orders the changes of one row (a newer
  change has a larger version). The triggers use UUID_SHORT(), which exceeds 2**53, so the version
  must never pass through a float: it is compared as a 20-digit decimal string in Redis.
- "source": "trigger", "binlog", "snapshot" or "seed".
- "refs" (optional; events of a CHILD table of a cascading foreign key): {"<fk name>": [v1, ...]},
  the row's FK column values (in FK column order) per cascading FK; an FK whose columns are all or
  partly NULL is left out (no parent). The applier keeps its FK index from it (sync.apply.applier).
  An empty object marks a child table row without any parent. A delete carries the deleted row's
  (the applier drops it from its index, and moves a late delete as a newer cascade moved the row).
- "cascade" (optional; update or delete of a PARENT table, or op "cascade"):
      {"old": {col: val, ...}, "new": {col: val, ...} (absent for a delete),
       "fks": [{"table": child, "fk": name, "columns": [child cols], "ref": [parent cols],
                "on_update": "cascade"|"set_null"|"none", "on_delete": "cascade"|"set_null"|"none",
                "children": [descriptors of the child's own cascading FKs]}, ...]}
  "old"/"new" hold the parent's referenced columns before/after the change. The applier performs
  the cascade InnoDB did without a trigger or a row event (sync.apply.applier). A descriptor that
  was already given earlier in the payload has "children": [] (the applier follows the first).
- op "cascade": a change of a parent table that is not synced itself: no "pk" (or {}), no "row",
  only "cascade" (and version, source); nothing is written for the parent.
- Unknown members are rejected.

Row values: string, integer (64-bit), float, null, or {"$b64": "<standard base64>"} for bytes that
are not valid UTF-8 (what the UDF's JSON builder emits for binary columns). Nested objects or
arrays are rejected: JSON columns travel as strings. DECIMAL values and integers beyond 64 bits
must travel as strings (a JSON number that big is silently read as a float by orjson). NaN and
Infinity are not JSON and are rejected.

A {"$b64": ...} whose bytes are valid UTF-8 is read as the equivalent string, so that every source
produces one canonical form (`sync.rows.rowcodec.normalize_value` does the same for Python bytes).

Table-wide statement (op "truncate"): a TRUNCATE or DROP TABLE read from the binlog, applied as "remove
every row key of the table whose version is older than this one" (sync.apply.truncate):

    {"v":1,"table":"data","op":"truncate","version":123456789012345678,"source":"binlog"}

- "v", "table", "version", "source" as above; no "pk" and no "row". Unknown members are rejected.

Batch payload (sync-binlog --sink gearman --job-changes N > 1): several changes of one function
in one job, in the order they were read:

    {"v":1,"changes":[{"v":1,"table":"data","op":"update",...},{"v":1,"table":"data",...}]}

- "v": the integer 1; "changes": a list of 1..MAX_BATCH_CHANGES v1 change objects as above (no
  "truncate": a table-wide statement is always a job of its own). No other members.
- Each change is parsed and applied as if it were a job of its own (sync.apply.worker): a bad change
  is dead-lettered alone, as its JSON, with a reason naming its index ("changes[3]: ..."); the rest
  apply. A payload that is bad as a whole (invalid JSON, other members, no list) is one dead letter.
- sync-binlog builds it by joining encode_change() payloads (encode_batch), so a change costs the
  producer no more than a single-change job; the worker decodes the whole job with one orjson call.
- A batch job's unique id is derived from the stream and its first and last versions
  (sync.capture.binlog.writer): a resubmission of the same batch merges into a still-queued copy; a
  resubmitted batch with other boundaries (the changes read again after a restart, batched
  differently) is another job, and its changes that were already applied are STALE no-ops (the
  version fence).

Classic payload (the classic recipe, plain function name `syncToRedis`): a JSON object with an
"id" (integer or non-empty string) such as {"id": 5, "volume": 3}. It is applied exactly as the
classic worker did: `SET <id> <payload bytes unchanged>`, with no versioning.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

import orjson

from sync.errors import PayloadError

__all__ = [
    "WIRE_VERSION",
    "MAX_PAYLOAD_BYTES",
    "MAX_NAME_CHARS",
    "MAX_VERSION",
    "JSONValue",
    "Op",
    "Source",
    "ChangeEvent",
    "ClassicSet",
    "parse_change",
    "parse_classic",
    "encode_change",
    "check_value",
    "FKRule",
    "Cascade",
    "TRUNCATE_OP",
    "TableTruncate",
    "encode_truncate",
    "parse_truncate",
    "MAX_BATCH_CHANGES",
    "BadChange",
    "encode_batch",
    "parse_batch",
]

WIRE_VERSION = 1
MAX_PAYLOAD_BYTES = 1 << 30  # MariaDB's largest max_allowed_packet and the UDF's max_payload cap
MAX_NAME_CHARS = 64  # MySQL/MariaDB identifier limit
MAX_PK_COLUMNS = 32
MAX_VERSION = 2**64 - 1
MAX_FK_DESCRIPTORS = 1000  # per cascade, over the whole nested tree
MAX_REFS = 64              # cascading FKs of one child table
MAX_CASCADE_DEPTH = 15     # MySQL stops cascading at depth 15

# What a row or pk value may be: a scalar, or {"$b64": "<base64>"} for non-UTF-8 bytes.
JSONValue: TypeAlias = str | int | float | None | dict[str, str]


class Op(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    CASCADE = "cascade"


class Source(StrEnum):
    TRIGGER = "trigger"
    BINLOG = "binlog"
    SNAPSHOT = "snapshot"
    SEED = "seed"


_OPS = {op.value: op for op in Op}
_SOURCES = {s.value: s for s in Source}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REQUIRED = frozenset({"v", "table", "op", "pk", "version", "source"})
_ALLOWED = _REQUIRED | {"row", "refs", "cascade"}
_RULES = ("cascade", "set_null", "none")

# Names already checked (table and column names repeat in every event); bounded.
_good_names: set[str] = set()
_GOOD_NAMES_MAX = 65536


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_name(name: Any, what: str) -> str:
    if name in _good_names:
        return name
    if not isinstance(name, str):
        raise PayloadError(f"{what}: expected a string, got {type(name).__name__} {_show(name)}")
    if not name:
        raise PayloadError(f"{what}: expected a non-empty name")
    if len(name) > MAX_NAME_CHARS:
        raise PayloadError(f"{what}: expected at most {MAX_NAME_CHARS} characters, got {len(name)}: {_show(name)}")
    if _CONTROL.search(name):
        raise PayloadError(f"{what}: expected no control characters, got {_show(name)}")
    if len(_good_names) >= _GOOD_NAMES_MAX:
        _good_names.clear()
    _good_names.add(name)
    return name


def _check_b64(value: dict[Any, Any], where: str) -> JSONValue:
    """A {"$b64": ...} value: strict, canonical base64; returned as str if the bytes are UTF-8."""
    if len(value) != 1 or "$b64" not in value:
        raise PayloadError(
            f"{where}: expected a scalar or {{\"$b64\": ...}}, got an object with keys {_show(sorted(map(str, value)))}"
        )
    text = value["$b64"]
    if not isinstance(text, str):
        raise PayloadError(f"{where}: $b64 expected a base64 string, got {type(text).__name__}")
    try:
        data = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise PayloadError(f"{where}: $b64 expected standard padded base64, got {_show(text)} ({exc})") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise PayloadError(f"{where}: $b64 expected canonical base64, got {_show(text)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return value


def check_value(value: Any, where: str, *, nullable: bool = True) -> JSONValue:
    """Validate one row/pk value; returns its canonical form. Raises PayloadError."""
    t = type(value)
    if t is str or t is int:
        return value
    if t is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise PayloadError(f"{where}: expected a finite number, got {value!r} (NaN/Infinity are not JSON)")
        return value
    if value is None:
        if nullable:
            return None
        raise PayloadError(f"{where}: expected a non-null scalar, got null")
    if t is dict:
        return _check_b64(value, where)
    if t is bool:
        raise PayloadError(f"{where}: expected a string, number or null, got {str(value).lower()}")
    if t is list:
        raise PayloadError(f"{where}: expected a scalar, got an array (JSON columns travel as strings)")
    raise PayloadError(f"{where}: expected a string, number, null or {{\"$b64\": ...}}, got {t.__name__}")


@dataclass(frozen=True, slots=True)
class FKRule:
    """One cascading foreign key as the applier follows it: `table` (the child) . `columns` reference
    the parent's `ref` columns (same order); rules "cascade", "set_null" or "none"; `children`: the
    child's own cascading FKs (for chains A -> B -> C)."""

    table: str
    fk: str
    columns: tuple[str, ...]
    ref: tuple[str, ...]
    on_update: str
    on_delete: str
    children: tuple[FKRule, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "fk": self.fk, "columns": list(self.columns), "ref": list(self.ref),
                "on_update": self.on_update, "on_delete": self.on_delete,
                "children": [c.to_json() for c in self.children]}


@dataclass(frozen=True, slots=True)
class Cascade:
    """The "cascade" member: the parent's referenced columns before (`old`) and after (`new`, None
    for a delete) the change, and the cascading FKs that reference them."""

    old: dict[str, JSONValue] = field(hash=False)
    new: dict[str, JSONValue] | None = field(hash=False)
    fks: tuple[FKRule, ...]

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"old": self.old}
        if self.new is not None:
            obj["new"] = self.new
        obj["fks"] = [f.to_json() for f in self.fks]
        return obj


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row change. Construction checks the invariants (raises PayloadError)."""

    table: str
    op: Op
    pk: tuple[tuple[str, JSONValue], ...] = field(hash=False)
    row: dict[str, JSONValue] | None = field(hash=False)
    version: int
    source: Source
    # FK name -> the row's FK column values (child tables of cascading FKs; see the module doc).
    refs: dict[str, tuple[JSONValue, ...]] | None = field(default=None, hash=False)
    cascade: Cascade | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        _check_name(self.table, "table")
        if type(self.op) is not Op:
            raise PayloadError(f"op: expected an Op, got {_show(self.op)}")
        if type(self.source) is not Source:
            raise PayloadError(f"source: expected a Source, got {_show(self.source)}")
        v = self.version
        if type(v) is not int or v < 0 or v > MAX_VERSION:
            raise PayloadError(f"version: expected an integer 0 <= version < 2**64, got {_show(v)}")
        if self.cascade is not None and not isinstance(self.cascade, Cascade):  # the applier's MovedCascade too
            raise PayloadError(f"cascade: expected a Cascade, got {_show(self.cascade)}")
        if self.op is Op.CASCADE:
            if self.pk or self.row is not None or self.cascade is None or self.refs is not None:
                raise PayloadError("op cascade: expected only a cascade (no pk, row or refs)")
            return
        pk = self.pk
        if type(pk) is not tuple or not pk:
            raise PayloadError(f"pk: expected a non-empty tuple of (column, value) pairs, got {_show(pk)}")
        row = self.row
        if self.op is Op.DELETE:
            if row is not None:
                raise PayloadError("row: expected null for a delete")
            return
        if type(row) is not dict:
            raise PayloadError(f"row: expected an object for {self.op.value}, got {_show(row)}")
        for col, val in pk:
            if col not in row:
                raise PayloadError(f"row: expected pk column {col!r}, missing")
            got = row[col]
            if got != val or type(got) is not type(val):
                raise PayloadError(f"row.{col}: expected the pk value {_show(val)}, got {_show(got)}")

    @property
    def pk_dict(self) -> dict[str, JSONValue]:
        return dict(self.pk)


@dataclass(frozen=True, slots=True)
class ClassicSet:
    """A classic-recipe change: `SET key payload`, unversioned."""

    key: bytes
    payload: bytes


def _loads_object(raw: bytes, what: str) -> dict[str, Any]:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise PayloadError(f"{what}: expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"{what}: payload of {len(raw)} bytes exceeds the limit of {MAX_PAYLOAD_BYTES} bytes")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        hint = ""
        pos = exc.pos
        head = bytes(raw[pos : pos + 9]) if isinstance(pos, int) else b""
        if head.startswith((b"NaN", b"Infinity", b"-Infinity", b"-NaN")):
            hint = " (NaN/Infinity are not JSON; send null or a string)"
        elif "infinity" in exc.msg:
            hint = " (number out of float range)"
        raise PayloadError(f"{what}: invalid JSON at byte {pos}: {exc.msg}{hint}") from None
    if type(obj) is not dict:
        raise PayloadError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_change(raw: bytes) -> ChangeEvent:
    """Parse and validate one wire-format-v1 payload. Raises PayloadError with a one-line reason."""
    return _change_from(_loads_object(raw, "payload"))


def _change_from(obj: dict[str, Any]) -> ChangeEvent:
    """The ChangeEvent of a decoded v1 change object (parse_change; each change of a batch)."""
    if type(obj.get("error")) is str:  # a change the capture could not send (sync.capture.triggers)
        raise PayloadError(f"capture: {_show(obj['error'], 300)}")
    keys: Any = obj.keys()
    if "pk" not in keys and obj.get("op") == "cascade":
        keys = keys | {"pk"}  # op cascade has no pk
    if not (_REQUIRED <= keys <= _ALLOWED):
        missing = sorted(_REQUIRED - keys)
        unknown = sorted(keys - _ALLOWED)
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(_show(k, 30) for k in unknown)}")
        raise PayloadError(f"payload: {'; '.join(parts)} (expected keys v, table, op, pk, row, version, source)")

    v = obj["v"]
    if type(v) is not int or v != WIRE_VERSION:
        raise PayloadError(f"v: expected {WIRE_VERSION}, got {_show(v)}")
    table = _check_name(obj["table"], "table")
    op = _OPS.get(obj["op"]) if type(obj["op"]) is str else None
    if op is None:
        raise PayloadError(f"op: expected one of insert, update, delete, cascade, got {_show(obj['op'])}")
    source = _SOURCES.get(obj["source"]) if type(obj["source"]) is str else None
    if source is None:
        raise PayloadError(f"source: expected one of trigger, binlog, snapshot, seed, got {_show(obj['source'])}")
    version = obj["version"]
    if type(version) is not int or version < 0:
        extra = " (too large for 64 bits?)" if type(version) is float and version >= 2**63 else ""
        raise PayloadError(f"version: expected a non-negative integer < 2**64, got {_show(version)}{extra}")

    refs = _parse_refs(obj["refs"]) if "refs" in obj else None
    cascade = _parse_cascade(obj["cascade"]) if "cascade" in obj else None
    if op is Op.CASCADE:
        if obj.get("pk") or obj.get("row") is not None or cascade is None or refs is not None:
            raise PayloadError("op cascade: expected a cascade member and no pk, row or refs")
        return ChangeEvent(table, op, (), None, version, source, None, cascade)
    if cascade is not None and (op is Op.INSERT or (op is Op.UPDATE and cascade.new is None)):
        raise PayloadError(f"cascade: expected on an update (with new) or a delete, got op {op.value}")
    pk_obj = obj["pk"]
    if type(pk_obj) is not dict or not pk_obj:
        raise PayloadError(f"pk: expected a non-empty object of column -> value, got {_show(pk_obj)}")
    if len(pk_obj) > MAX_PK_COLUMNS:
        raise PayloadError(f"pk: expected at most {MAX_PK_COLUMNS} columns, got {len(pk_obj)}")
    pk = []
    for col, val in pk_obj.items():
        _check_name(col, "pk column")
        t = type(val)
        if t is not int and t is not str:
            val = check_value(val, f"pk.{col}", nullable=False)
        pk.append((col, val))

    row = obj.get("row")
    if op is Op.DELETE:
        if row is not None:
            raise PayloadError("row: expected absent or null for a delete")
    else:
        if type(row) is not dict:
            got = "absent" if "row" not in obj else _show(row)
            raise PayloadError(f"row: expected an object for {op.value}, got {got}")
        for col, val in row.items():
            if col not in _good_names:
                _check_name(col, "row column")
            t = type(val)
            if t is str or t is int or val is None:
                continue
            fixed = check_value(val, f"row.{col}")
            if fixed is not val:
                row[col] = fixed
    return ChangeEvent(table, op, tuple(pk), row, version, source, refs, cascade)


def _parse_refs(obj: Any) -> dict[str, tuple[JSONValue, ...]]:
    if type(obj) is dict and len(obj) == 1:
        # the common case (one FK of one column, a name seen before): nothing to check or convert
        ((name, values),) = obj.items()
        if name in _good_names and type(values) is list and len(values) == 1:
            value = values[0]
            if type(value) is int or type(value) is str:
                obj[name] = (value,)  # the parsed payload's own dict, reused
                return obj
    if type(obj) is not dict:
        raise PayloadError(f"refs: expected an object of fk name -> [values], got {_show(obj)}")
    if len(obj) > MAX_REFS:
        raise PayloadError(f"refs: expected at most {MAX_REFS} foreign keys, got {len(obj)}")
    out: dict[str, tuple[JSONValue, ...]] = {}
    for name, values in obj.items():
        _check_name(name, "refs fk name")
        if type(values) is not list or not values or len(values) > MAX_PK_COLUMNS:
            raise PayloadError(f"refs.{name}: expected a list of 1..{MAX_PK_COLUMNS} values, got {_show(values)}")
        if all(type(v) is int or type(v) is str for v in values):
            out[name] = tuple(values)  # the common case: nothing to check or convert
        else:
            out[name] = tuple(check_value(v, f"refs.{name}", nullable=False) for v in values)
    return out


def _parse_columns(obj: Any, what: str) -> dict[str, JSONValue]:
    if type(obj) is not dict or not obj or len(obj) > MAX_PK_COLUMNS:
        raise PayloadError(f"{what}: expected an object of 1..{MAX_PK_COLUMNS} column -> value, got {_show(obj)}")
    for col, val in obj.items():
        _check_name(col, f"{what} column")
        fixed = check_value(val, f"{what}.{col}")
        if fixed is not val:
            obj[col] = fixed
    return obj


def _parse_cascade(obj: Any) -> Cascade:
    if type(obj) is not dict or not {"old", "fks"} <= obj.keys() <= {"old", "new", "fks"}:
        raise PayloadError(f"cascade: expected an object with old, fks and optional new, got {_show(obj)}")
    old = _parse_columns(obj["old"], "cascade.old")
    new = _parse_columns(obj["new"], "cascade.new") if "new" in obj else None
    if new is not None and new.keys() != old.keys():
        raise PayloadError(f"cascade.new: expected the columns of cascade.old ({', '.join(old)}), got {_show(list(new))}")
    count = [0]
    fks = _parse_fks(obj["fks"], "cascade.fks", count, 0)
    for fk in fks:
        missing = [c for c in fk.ref if c not in old]
        if missing:
            raise PayloadError(f"cascade.fks: {fk.fk!r} references {', '.join(missing)}, not in cascade.old")
    return Cascade(old, new, fks)


_FK_KEYS = frozenset({"table", "fk", "columns", "ref", "on_update", "on_delete", "children"})


def _parse_fks(obj: Any, where: str, count: list[int], depth: int) -> tuple[FKRule, ...]:
    if type(obj) is not list:
        raise PayloadError(f"{where}: expected a list of fk descriptors, got {_show(obj)}")
    if depth > MAX_CASCADE_DEPTH:
        raise PayloadError(f"{where}: expected descriptors nested at most {MAX_CASCADE_DEPTH} deep")
    out = []
    for d in obj:
        count[0] += 1
        if count[0] > MAX_FK_DESCRIPTORS:
            raise PayloadError(f"{where}: expected at most {MAX_FK_DESCRIPTORS} fk descriptors in all")
        if type(d) is not dict or d.keys() != _FK_KEYS:
            raise PayloadError(f"{where}: expected a descriptor with keys {', '.join(sorted(_FK_KEYS))}, got {_show(d)}")
        table = _check_name(d["table"], f"{where}.table")
        name = _check_name(d["fk"], f"{where}.fk")
        cols, ref = d["columns"], d["ref"]
        for what, names in (("columns", cols), ("ref", ref)):
            if type(names) is not list or not names or len(names) > MAX_PK_COLUMNS:
                raise PayloadError(f"{where}.{what}: expected a list of 1..{MAX_PK_COLUMNS} column names, got {_show(names)}")
            for n in names:
                _check_name(n, f"{where}.{what}")
        if len(cols) != len(ref):
            raise PayloadError(f"{where}: fk {name!r} has {len(cols)} columns but {len(ref)} ref columns; expected the same")
        for what in ("on_update", "on_delete"):
            if d[what] not in _RULES:
                raise PayloadError(f"{where}.{what}: expected one of {', '.join(_RULES)}, got {_show(d[what])}")
        children = _parse_fks(d["children"], f"{where}.children", count, depth + 1)
        out.append(FKRule(table, name, tuple(cols), tuple(ref), d["on_update"], d["on_delete"], children))
    return tuple(out)


def parse_classic(raw: bytes) -> ClassicSet:
    """Parse a classic-recipe payload (a JSON object with "id"); the payload bytes stay unchanged."""
    obj = _loads_object(raw, "classic payload")
    if "id" not in obj:
        raise PayloadError('classic payload: expected an "id" member, missing')
    ident = obj["id"]
    t = type(ident)
    if t is int:
        key = str(ident).encode("ascii")
    elif t is str and ident:
        key = ident.encode("utf-8")
    else:
        raise PayloadError(f"id: expected an integer or a non-empty string, got {_show(ident)}")
    return ClassicSet(key, bytes(raw))


def encode_change(ev: ChangeEvent) -> bytes:
    """The wire-format-v1 payload of `ev` (the inverse of parse_change)."""
    obj: dict[str, Any] = {
        "v": WIRE_VERSION,
        "table": ev.table,
        "op": ev.op.value,
    }
    if ev.op is not Op.CASCADE:
        obj["pk"] = dict(ev.pk)
    if ev.row is not None:
        obj["row"] = ev.row
    obj["version"] = ev.version
    obj["source"] = ev.source.value
    if ev.refs is not None:
        obj["refs"] = {name: list(values) for name, values in ev.refs.items()}
    if ev.cascade is not None:
        obj["cascade"] = ev.cascade.to_json()
    return orjson.dumps(obj)


# -- table-wide statements ---------------------------------------------------------------------

TRUNCATE_OP = "truncate"
_TRUNCATE_KEYS = frozenset({"v", "table", "op", "version", "source"})


@dataclass(frozen=True, slots=True)
class TableTruncate:
    """TRUNCATE/DROP of a table at `version`: every row of it with an older version is gone.
    Construction checks the invariants (raises PayloadError)."""

    table: str
    version: int
    source: Source = Source.BINLOG

    def __post_init__(self) -> None:
        _check_name(self.table, "table")
        v = self.version
        if type(v) is not int or v < 0 or v > MAX_VERSION:
            raise PayloadError(f"version: expected an integer 0 <= version < 2**64, got {_show(v)}")
        if type(self.source) is not Source:
            raise PayloadError(f"source: expected a Source, got {_show(self.source)}")


def encode_truncate(ev: TableTruncate) -> bytes:
    """The wire payload of a table-wide statement (the inverse of parse_truncate)."""
    return orjson.dumps({"v": WIRE_VERSION, "table": ev.table, "op": TRUNCATE_OP, "version": ev.version,
                         "source": ev.source.value})


def parse_truncate(raw: bytes) -> TableTruncate | None:
    """The table-wide statement a payload carries; None when its op is not "truncate" (a row
    change: parse it with parse_change). Raises PayloadError for a bad truncate payload."""
    if b'"truncate"' not in raw:
        return None
    obj = _loads_object(raw, "payload")
    if obj.get("op") != TRUNCATE_OP:
        return None
    if obj.keys() != _TRUNCATE_KEYS:
        raise PayloadError(f"payload: truncate with keys {', '.join(sorted(map(str, obj)))}; expected "
                           "v, table, op, version, source")
    if type(obj["v"]) is not int or obj["v"] != WIRE_VERSION:
        raise PayloadError(f"v: expected {WIRE_VERSION}, got {_show(obj['v'])}")
    source = _SOURCES.get(obj["source"]) if type(obj["source"]) is str else None
    if source is None:
        raise PayloadError(f"source: expected one of trigger, binlog, snapshot, seed, got {_show(obj['source'])}")
    return TableTruncate(obj["table"], obj["version"], source)


# -- batch jobs ----------------------------------------------------------------------------------

MAX_BATCH_CHANGES = 10000
_BATCH_KEYS = frozenset({"v", "changes"})
_BATCH_HEAD = b'{"v":%d,"changes":[' % WIRE_VERSION


@dataclass(frozen=True, slots=True)
class BadChange:
    """A change of a batch payload that can never be applied: its JSON and the one-line reason."""

    raw: bytes
    reason: str


def encode_batch(payloads: Sequence[bytes]) -> bytes:
    """The batch payload of already encoded v1 changes (encode_change), in their order."""
    return _BATCH_HEAD + b",".join(payloads) + b"]}"


def parse_batch(raw: bytes) -> list[ChangeEvent | BadChange] | None:
    """The changes of a batch payload, each parsed on its own (a bad one is a BadChange, the others
    still count); None when `raw` is not a batch (no "changes" member: a single change or a
    statement). Raises PayloadError for a payload that is bad as a whole."""
    if b'"changes"' not in raw:
        return None
    obj = _loads_object(raw, "batch payload")
    if "changes" not in obj:
        return None
    if obj.keys() != _BATCH_KEYS:
        raise PayloadError(f"batch payload: keys {', '.join(sorted(map(_show, obj)))}; expected v, changes")
    if type(obj["v"]) is not int or obj["v"] != WIRE_VERSION:
        raise PayloadError(f"v: expected {WIRE_VERSION}, got {_show(obj['v'])}")
    changes = obj["changes"]
    if type(changes) is not list or not 0 < len(changes) <= MAX_BATCH_CHANGES:
        got = f"{len(changes)} items" if type(changes) is list else _show(changes)
        raise PayloadError(f"changes: expected a list of 1..{MAX_BATCH_CHANGES} change objects, got {got}")
    out: list[ChangeEvent | BadChange] = []
    for i, item in enumerate(changes):
        try:
            if type(item) is not dict:
                raise PayloadError(f"expected a change object, got {type(item).__name__} {_show(item)}")
            out.append(_change_from(item))
        except PayloadError as exc:
            out.append(BadChange(orjson.dumps(item), f"changes[{i}]: {exc}"))
    return out
