"""Column shaping, secondary indexes and change streams of one table (issue 17; docs/shaping.md).

    shape = build_shape("items", {"exclude": ["secret"], "rename": {"price": "cost"},
                                  "filter": "active = 1 AND price > 0",
                                  "indexes": [{"type": "zset", "column": "price"}],
                                  "stream": {"maxlen": 100000}}, "[tables.items]")
    shape.matches(row)          # the filter (no filter: True)
    shape.project(row)          # exclude and rename applied: what Redis stores
    shape.score(row, index)     # a zset index's score (None: not indexed)

The config keys of a [tables.NAME] section (checked when the file is read, ConfigError in one line
naming the key, the bad value or token, and what was expected):

    exclude = ["secret"]                 # never written
    rename  = { price = "cost" }         # column price is written as field "cost"
    filter  = "active = 1 AND price > 0" # only matching rows live in Redis
    [[tables.items.indexes]]  type = "zset" | "set", column = "...", key = "<template>" (optional)
    [tables.items.stream]     maxlen = N (default 100000), key = "<template>" (optional)

Filter grammar (keywords in any case): cond [AND cond]...; cond is `col OP literal` with OP one of
= != <> < <= > >=, `col IN (literal, ...)`, `col IS NULL`, `col IS NOT NULL`; a literal is a number
or a 'quoted string' ('' for a quote); a column is a name or `backquoted`. As in SQL, a comparison
with a NULL column is false. A number literal compares numerically (a DECIMAL column's text too;
a value that is no number does not match); a quoted literal compares as text (temporal columns
are text 'YYYY-MM-DD HH:MM:SS', which orders correctly).

Filter, index and stream columns are MySQL column names (before rename); an index column may be
excluded from the stored row. Scores: numbers as they are; DATE/DATETIME/TIMESTAMP text → epoch
seconds, read as UTC (fractions kept); other values (and NULL) leave the row out of that index.
The applier applies all of it (sync.apply.applier), so the trigger and binlog paths agree, and
snapshot/verify read the same TableSpec.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sync.errors import ConfigError, PayloadError
from sync.keys import (
    SET_INDEX_TEMPLATE,
    STREAM_TEMPLATE,
    ZSET_INDEX_TEMPLATE,
    check_shape_template,
    shape_key,
)

__all__ = ["SHAPE_KEYS", "Filter", "Index", "Shape", "Stream", "build_shape", "parse_filter", "score_of"]

# the keys of a [tables.NAME] section this module reads
SHAPE_KEYS = ("exclude", "rename", "filter", "indexes", "stream")
INDEX_TYPES = ("zset", "set")
DEFAULT_MAXLEN = 100_000
MAX_MAXLEN = 1_000_000_000
MAX_INDEXES = 9  # per table (apply.lua counts a row's index writes in one digit)

_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,63}")
_TOKEN = re.compile(r"""\s*(?:
    (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<str>'(?:[^']|'')*')
  | (?P<bq>`(?:[^`]|``)+`)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<bad>\S+)
)""", re.VERBOSE)
_KEYWORDS = {"AND", "IN", "IS", "NOT", "NULL", "OR"}
_TEMPORAL = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?)?")


def _label(where: str, key: str) -> str:
    return f"{where}.{key}"


# -- filter -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Cond:
    column: str
    op: str                       # = != < <= > >= IN NULL NOTNULL
    values: tuple[Any, ...]       # literals: Decimal (a number) or str

    def holds(self, row: Mapping[str, Any]) -> bool:
        v = row[self.column]
        if self.op == "NULL":
            return v is None
        if self.op == "NOTNULL":
            return v is not None
        if v is None:
            return False
        if self.op == "IN":
            return any(_compare(v, lit) == 0 for lit in self.values)
        c = _compare(v, self.values[0])
        if c is None:
            return False
        op = self.op
        return (c == 0 if op == "=" else c != 0 if op == "!=" else c < 0 if op == "<" else c <= 0 if op == "<="
                else c > 0 if op == ">" else c >= 0)


def _number(v: Any) -> Decimal | None:
    t = type(v)
    if t is int or t is float:
        return Decimal(v)
    if t is str:
        try:
            d = Decimal(v)
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    return None


def _compare(v: Any, lit: Any) -> int | None:
    """-1/0/1 of a row value against a literal; None when they do not compare (no match)."""
    if type(lit) is Decimal:
        if type(v) is int or type(v) is float:
            return (v > lit) - (v < lit)  # exact: Python compares int/float with Decimal by value
        n = _number(v)
        if n is None:
            return None
        return (n > lit) - (n < lit)
    text = v if type(v) is str else str(v) if type(v) in (int, float) else None
    if text is None:
        return None
    return (text > lit) - (text < lit)


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed row filter: every condition holds (AND)."""

    text: str
    conds: tuple[_Cond, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.column for c in self.conds))

    def matches(self, row: Mapping[str, Any]) -> bool:
        return all(c.holds(row) for c in self.conds)


def _tokens(text: str, where: str) -> list[tuple[str, str, int]]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m is not None and m.lastgroup is not None  # \S+ matches anything left
        kind, value = m.lastgroup, m.group(m.lastgroup)
        if kind == "bad":
            raise ConfigError(f"{where}: {value[:20]!r} at position {m.start(kind) + 1} of {text!r}; expected a column, "
                              "a number, a 'quoted string', an operator (= != < <= > >=), IN, IS, AND, ( , )")
        out.append((kind, value, m.start(kind) + 1))
        pos = m.end()
    return out


def parse_filter(text: Any, where: str = "filter") -> Filter:
    """The filter of a [tables.NAME] section; ConfigError (one line: the bad token, its position,
    what was expected) otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: {text!r}; expected a condition such as \"active = 1 AND price > 0\"")
    toks = _tokens(text, where)
    i = 0

    def fail(expected: str) -> ConfigError:
        if i >= len(toks):
            return ConfigError(f"{where}: {text!r} ends too early; expected {expected}")
        return ConfigError(f"{where}: {toks[i][1]!r} at position {toks[i][2]} of {text!r}; expected {expected}")

    def word(w: str) -> bool:
        return i < len(toks) and toks[i][0] == "word" and toks[i][1].upper() == w

    def literal() -> Any:
        nonlocal i
        if i < len(toks) and toks[i][0] == "num":
            i += 1
            return Decimal(toks[i - 1][1])
        if i < len(toks) and toks[i][0] == "str":
            i += 1
            return toks[i - 1][1][1:-1].replace("''", "'")
        raise fail("a number or a 'quoted string'" + (" (for NULL: IS NULL)" if word("NULL") else ""))

    conds = []
    while True:
        if i < len(toks) and toks[i][0] == "bq":
            column = toks[i][1][1:-1].replace("``", "`")
        elif i < len(toks) and toks[i][0] == "word" and toks[i][1].upper() not in _KEYWORDS:
            column = toks[i][1]
        else:
            raise fail("a column name")
        i += 1
        if i < len(toks) and toks[i][0] == "op":
            op = "!=" if toks[i][1] == "<>" else toks[i][1]
            i += 1
            conds.append(_Cond(column, op, (literal(),)))
        elif word("IN"):
            i += 1
            if not (i < len(toks) and toks[i][1] == "("):
                raise fail("( after IN")
            i += 1
            values = [literal()]
            while i < len(toks) and toks[i][1] == ",":
                i += 1
                values.append(literal())
            if not (i < len(toks) and toks[i][1] == ")"):
                raise fail(", or ) in the IN list")
            i += 1
            conds.append(_Cond(column, "IN", tuple(values)))
        elif word("IS"):
            i += 1
            negated = word("NOT")
            if negated:
                i += 1
            if not word("NULL"):
                raise fail("NULL after IS" + ("" if negated else " (or IS NOT NULL)"))
            i += 1
            conds.append(_Cond(column, "NOTNULL" if negated else "NULL", ()))
        else:
            raise fail("an operator (= != <> < <= > >=), IN or IS after the column")
        if i == len(toks):
            return Filter(text, tuple(conds))
        if not word("AND"):
            raise fail("AND or the end" + (" (OR is not supported)" if word("OR") else ""))
        i += 1


# -- indexes and the stream -----------------------------------------------------------------------

def score_of(value: Any) -> str | None:
    """A zset score (the text ZADD gets) of a row value: a number as it is, DATE/DATETIME text
    as epoch seconds read as UTC; None for NULL and anything else (then the row is not indexed)."""
    t = type(value)
    if t is int:
        return str(value)
    if t is float:
        return repr(value)
    if t is not str:
        return None
    try:
        f = float(value)
    except ValueError:
        m = _TEMPORAL.fullmatch(value)
        if m is None:
            return None
        y, mo, d, h, mi, s, frac = m.groups()
        try:
            secs = calendar.timegm((int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0)))
        except (ValueError, OverflowError):
            return None
        return f"{secs}{frac}" if frac else str(secs)
    return repr(f) if f == f and f not in (float("inf"), float("-inf")) else None


@dataclass(frozen=True, slots=True)
class Index:
    """One secondary index: zset (member = row key, score = column) or set (per column value)."""

    type: str
    column: str
    key: str      # its key template (keys.shape_key)
    table: str

    def zset_key(self) -> str:
        return shape_key(self.key, self.table, self.column)

    def set_key(self, value: Any) -> str:
        return shape_key(self.key, self.table, self.column, value)


@dataclass(frozen=True, slots=True)
class Stream:
    key: str      # the stream's key (rendered)
    maxlen: int


@dataclass(frozen=True, slots=True)
class Shape:
    """How one table's rows are shaped on their way to Redis (see the module docstring)."""

    table: str
    exclude: frozenset[str] = frozenset()
    rename: tuple[tuple[str, str], ...] = ()
    filter: Filter | None = None
    indexes: tuple[Index, ...] = ()
    stream: Stream | None = None

    @property
    def reshapes(self) -> bool:
        """exclude or rename: the stored row is not the MySQL row."""
        return bool(self.exclude or self.rename)

    @property
    def zsets(self) -> tuple[Index, ...]:
        return tuple(ix for ix in self.indexes if ix.type == "zset")

    @property
    def sets(self) -> tuple[Index, ...]:
        return tuple(ix for ix in self.indexes if ix.type == "set")

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns a row needs for the filter and the indexes."""
        cols = [*(self.filter.columns if self.filter else ()), *(ix.column for ix in self.indexes)]
        return tuple(dict.fromkeys(cols))

    def check_row(self, row: Mapping[str, Any]) -> None:
        """PayloadError when the row lacks a column the filter or an index reads."""
        for col in self.columns:
            if col not in row:
                raise PayloadError(f"row of {self.table!r}: no column {col!r}, which [tables.{self.table}] filters "
                                   "or indexes by; expected it in the row (check the table's columns setting)")

    def matches(self, row: Mapping[str, Any]) -> bool:
        return self.filter is None or self.filter.matches(row)

    def project(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row as Redis stores it: excluded columns dropped, renamed ones under their new name."""
        out = {col: v for col, v in row.items() if col not in self.exclude} if self.exclude else dict(row)
        for old, new in self.rename:
            if old in out:
                out[new] = out.pop(old)
        return out

    def owns(self, key: str) -> bool:
        """Is `key` one of this table's index or stream keys (sync-verify skips them among row keys)."""
        if self.stream is not None and key == self.stream.key:
            return True
        for ix in self.indexes:
            if ix.type == "zset" and key == ix.zset_key():
                return True
            if ix.type == "set":
                head, _, tail = ix.key.partition("{value}")
                head, tail = shape_key(head, self.table, ix.column), shape_key(tail, self.table, ix.column)
                if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
                    return True
        return False

    def set_keys(self, row: Mapping[str, Any]) -> list[str]:
        """The set-index keys the row belongs to, sorted."""
        return sorted(ix.set_key(row[ix.column]) for ix in self.sets if row.get(ix.column) is not None)


def _check_columns(value: Any, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) and _COLUMN.fullmatch(c) for c in value):
        raise ConfigError(f"{where}: {value!r}; expected a list of {what} (letters, digits, _ and $; up to 64)")
    return value


def _column(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _COLUMN.fullmatch(value):
        raise ConfigError(f"{where}: {value!r}; expected a column name (letters, digits, _ and $; up to 64)")
    return value


def _template(value: Any, where: str, fields: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r}; expected a key template string")
    try:
        return check_shape_template(value, fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _index(table: str, value: Any, where: str) -> Index:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {value!r}; expected a table with type and column ([[tables.{table}.indexes]])")
    unknown = sorted(set(value) - {"type", "column", "key"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected column, key, type")
    kind = value.get("type")
    if kind not in INDEX_TYPES:
        raise ConfigError(f"{where}.type: {kind!r}; expected zset or set")
    column = _column(value.get("column"), f"{where}.column")
    default = ZSET_INDEX_TEMPLATE if kind == "zset" else SET_INDEX_TEMPLATE
    fields = ("table", "column") if kind == "zset" else ("table", "column", "value")
    key = _template(value.get("key", default), f"{where}.key", fields)
    return Index(kind, column, key, table)


def _stream(table: str, value: Any, where: str) -> Stream:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {value!r}; expected a table [tables.{table}.stream] with maxlen and key")
    unknown = sorted(set(value) - {"maxlen", "key"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected key, maxlen")
    maxlen = value.get("maxlen", DEFAULT_MAXLEN)
    if type(maxlen) is not int or not 1 <= maxlen <= MAX_MAXLEN:
        raise ConfigError(f"{where}.maxlen: {maxlen!r}; expected an integer from 1 to {MAX_MAXLEN}")
    key = _template(value.get("key", STREAM_TEMPLATE), f"{where}.key", ("table",))
    return Stream(shape_key(key, table), maxlen)


def build_shape(table: str, values: Mapping[str, Any], where: str) -> Shape | None:
    """The Shape of a table from its [tables.NAME] values (None: no shaping key is set)."""
    if not any(values.get(k) is not None for k in SHAPE_KEYS):
        return None
    exclude = frozenset(_check_columns(values.get("exclude", []), _label(where, "exclude"), "column names"))
    rename_raw = values.get("rename", {})
    if not isinstance(rename_raw, Mapping):
        raise ConfigError(f"{_label(where, 'rename')}: {rename_raw!r}; expected a table {{ column = \"field\" }}")
    for col, new in rename_raw.items():
        _column(col, f"{_label(where, 'rename')}")
        if not isinstance(new, str) or not new or len(new) > 256 or not new.isprintable():
            raise ConfigError(f"{_label(where, 'rename')}.{col}: {new!r}; expected a field name (1-256 printable characters)")
        if col in exclude:
            raise ConfigError(f"{_label(where, 'rename')}.{col}: the column is also in exclude; expected one of the two")
    fields = list(rename_raw.values())
    if len(set(fields)) != len(fields):
        raise ConfigError(f"{_label(where, 'rename')}: {dict(rename_raw)!r} names one field twice; expected distinct names")
    flt = parse_filter(values["filter"], _label(where, "filter")) if values.get("filter") is not None else None
    raw_indexes = values.get("indexes", [])
    if not isinstance(raw_indexes, list):
        raise ConfigError(f"{_label(where, 'indexes')}: {raw_indexes!r}; expected [[tables.{table}.indexes]] entries")
    if len(raw_indexes) > MAX_INDEXES:
        raise ConfigError(f"{_label(where, 'indexes')}: {len(raw_indexes)} indexes; expected at most {MAX_INDEXES}")
    indexes = tuple(_index(table, v, f"{_label(where, 'indexes')}[{n}]") for n, v in enumerate(raw_indexes))
    keys = [ix.zset_key() for ix in indexes]  # a set's with {value} left in it
    twice = [k for n, k in enumerate(keys) if k in keys[:n]]
    if twice:
        raise ConfigError(f"{_label(where, 'indexes')}: two indexes share the key {twice[0]!r}; expected one key each")
    stream = _stream(table, values["stream"], _label(where, "stream")) if values.get("stream") is not None else None
    shape = Shape(table, exclude, tuple(rename_raw.items()), flt, indexes, stream)
    columns = values.get("columns")
    if isinstance(columns, list):  # `columns` limits what the capture sends: the filter and indexes need theirs
        lacking = [c for c in shape.columns if c not in columns]
        if lacking:
            raise ConfigError(f"{_label(where, 'columns')}: {columns!r} lacks {lacking[0]!r}, which the table's filter "
                              "or indexes read; expected it among the columns")
    return shape
