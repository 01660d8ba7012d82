"""A MySQL table as gearsync sees it, and the ONE mapping from its column values to the canonical
JSON values that end up in Redis.

Every capture path must produce the same value for the same row, or verify would report
differences that are not there.  So, per column kind, this module holds both sides:

- `trigger_sql(column, ref)`: the SQL expression a trigger passes to gman_json_object for
  NEW.col / OLD.col, so the UDF emits the canonical JSON value;
- `read_sql(column)`: the expression a snapshot/verify SELECT reads, and `canonical_value()`
  turning what pymysql (or mysql-replication) returns into the same canonical value.

Canonical values, per kind:

  int        TINYINT..BIGINT (signed), INT UNSIGNED and smaller, YEAR  → JSON integer
  uint64     BIGINT UNSIGNED  → JSON integer up to 2**64-1 (the UDF has no unsigned flag, so the
             trigger passes CAST(x AS DECIMAL(20,0)), which it writes as a number)
  bit        BIT(n)           → JSON integer (the bits as an unsigned number)
  decimal    DECIMAL(p,s)     → JSON string with exactly s decimals ("12.5000"): a JSON number
             would lose digits in every float-based JSON reader
  float      FLOAT            → JSON number of the single-precision value widened to double
             (0.1 → 0.10000000149011612), the value MySQL really stores; read as CAST(x AS DOUBLE)
             because the text protocol rounds FLOAT to 6 digits
  double     DOUBLE           → JSON number, shortest round-trip form
  date       DATE             → "YYYY-MM-DD"
  datetime   DATETIME(fsp)    → "YYYY-MM-DD HH:MM:SS[.f…]" with exactly fsp fraction digits
  timestamp  TIMESTAMP(fsp)   → like datetime, in UTC (whatever the session time zone)
  time       TIME(fsp)        → "[-]HH:MM:SS[.f…]" (hours may exceed 24)
  text       CHAR/VARCHAR/TEXT/ENUM/SET/JSON in any character set → JSON string (converted to
             utf8mb4 in the trigger when the column uses another character set)
  binary     BINARY/VARBINARY/BLOB and spatial types → JSON string when the bytes are valid UTF-8,
             else {"$b64": "<base64>"} (the UDF's reversible form for binary data)

NULL is JSON null everywhere.  Floats that are integral (3.0) travel as 3.0, never as 3.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sync.errors import ConfigError, SourceError
from sync.events import JSONValue
from sync.rows.rowcodec import normalize_value

INT_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"}
TEXT_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "json"}
BINARY_TYPES = {
    "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob",
    "geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
    "geometrycollection",
}
UTF8_CHARSETS = {"utf8mb4", "utf8mb3", "utf8"}


def quote_ident(name: str) -> str:
    """`name` as a MySQL identifier: backquoted, backquotes doubled. NUL is refused."""
    if "\x00" in name:
        raise ConfigError(f"identifier {name!r} contains a NUL byte; MySQL identifiers cannot")
    return "`" + name.replace("`", "``") + "`"


def quote_string(text: str) -> str:
    """`text` as a MySQL string literal that means the same under any sql_mode
    (NO_BACKSLASH_ESCAPES or not): backslashes and quotes are escaped by doubling/CHAR()."""
    if "\\" in text or "\x00" in text:
        parts = []
        for ch in text:
            if ch in "\\\x00":
                parts.append(f"CHAR({ord(ch)} USING utf8mb4)")
            else:
                parts.append("'" + ch.replace("'", "''") + "'")
        return "CONCAT(" + ",".join(parts) + ")"
    return "'" + text.replace("'", "''") + "'"


NO_KEY = "neither a primary key nor a unique key over NOT NULL columns"


class UnusableTable(ConfigError):
    """A table gearsync cannot sync (a view, no usable key, an unsupported column type);
    `reason` says why in a few words, without the table's name."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str          # information_schema DATA_TYPE, lower case
    column_type: str        # full COLUMN_TYPE, e.g. "bigint(20) unsigned"
    nullable: bool
    fsp: int | None         # DATETIME_PRECISION for temporal types
    charset: str | None     # CHARACTER_SET_NAME, None for non-text
    generated: bool = False

    @property
    def unsigned(self) -> bool:
        return "unsigned" in self.column_type.lower()

    @property
    def kind(self) -> str:
        t = self.data_type
        if t in INT_TYPES:
            return "uint64" if t == "bigint" and self.unsigned else "int"
        if t in ("decimal", "numeric"):
            return "decimal"
        if t == "float":
            return "float"
        if t in ("double", "real", "double precision"):
            return "double"
        if t == "bit":
            return "bit"
        if t in ("date", "datetime", "timestamp", "time"):
            return t
        if t in TEXT_TYPES:
            return "binary" if self.charset in (None, "binary") and t not in ("enum", "set", "json") else "text"
        if t in BINARY_TYPES:
            return "binary"
        raise ConfigError(
            f"column {self.name!r}: type {self.column_type!r} is not supported; expected a number, "
            "date/time, text or binary type (leave the column out with --columns)"
        )


@dataclass(frozen=True)
class TableSchema:
    database: str
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]            # primary key, or the NOT NULL unique key used instead
    key_name: str                   # "PRIMARY" or the unique index name

    @property
    def ref(self) -> str:
        """`database`.`table`, quoted for SQL."""
        return f"{quote_ident(self.database)}.{quote_ident(self.name)}"

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise ConfigError(f"column {name!r} is not in table {self.name!r}; expected one of "
                          + ", ".join(c.name for c in self.columns))

    def select(self, names: Sequence[str] | None) -> TableSchema:
        """The same table restricted to `names` (the key columns are always kept, first)."""
        if not names:
            return self
        wanted = list(dict.fromkeys(names))
        for n in wanted:
            self.column(n)
        keep = [c for c in self.columns if c.name in wanted or c.name in self.key]
        return TableSchema(self.database, self.name, tuple(keep), self.key, self.key_name)

    @property
    def key_columns(self) -> tuple[Column, ...]:
        return tuple(self.column(n) for n in self.key)

    # -- canonical values ------------------------------------------------------------------
    def canonical_row(self, row: Mapping[str, Any]) -> dict[str, JSONValue]:
        """A row as pymysql returns it (read with `read_sql` expressions) → canonical values."""
        return {c.name: canonical_value(c, row[c.name]) for c in self.columns}

    def canonical_pk(self, row: Mapping[str, Any]) -> tuple[tuple[str, JSONValue], ...]:
        return tuple((c.name, canonical_value(c, row[c.name])) for c in self.key_columns)


def canonical_value(col: Column, v: Any) -> JSONValue:
    """One column value from pymysql / mysql-replication → its canonical JSON value."""
    if v is None:
        return None
    kind = col.kind
    if kind in ("int", "uint64"):
        return int(v)
    if kind == "bit":
        return int.from_bytes(v, "big") if isinstance(v, (bytes, bytearray)) else int(v)
    if kind == "decimal":
        return format(v if isinstance(v, Decimal) else Decimal(str(v)), "f")
    if kind == "float":
        # The single-precision value, widened exactly (what the trigger sees).
        f = float(v)
        return struct.unpack("<f", struct.pack("<f", f))[0] if abs(f) <= 3.4028234663852886e38 else f
    if kind == "double":
        return float(v)
    if kind == "datetime" or kind == "timestamp":
        if isinstance(v, dt.datetime):
            return normalize_value(v, fsp=col.fsp or 0)
        return str(v)  # zero dates come back as text
    if kind == "date":
        return normalize_value(v) if isinstance(v, dt.date) else str(v)
    if kind == "time":
        return normalize_value(v, fsp=col.fsp or 0) if isinstance(v, (dt.timedelta, dt.time)) else str(v)
    if kind == "text":
        if isinstance(v, (bytes, bytearray)):
            return bytes(v).decode("utf-8", errors="surrogateescape") if _utf8(v) else normalize_value(bytes(v))
        if isinstance(v, (set, frozenset)):  # pymysql may return SET columns as a set
            return ",".join(sorted(v))
        return str(v)
    # binary
    if isinstance(v, str):
        v = v.encode("utf-8", errors="surrogateescape")
    return normalize_value(bytes(v))


def _utf8(b: bytes | bytearray) -> bool:
    try:
        bytes(b).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def trigger_sql(col: Column, ref: str) -> str:
    """The expression a trigger passes to gman_json_object for `ref`.`col` (ref: NEW or OLD)."""
    x = f"{ref}.{quote_ident(col.name)}"
    kind = col.kind
    if kind in ("uint64", "bit"):
        return f"CAST({x} AS DECIMAL(20,0))"
    if kind == "decimal":
        return f"CAST({x} AS CHAR)"
    if kind == "timestamp":
        return f"CONVERT_TZ({x}, @@session.time_zone, '+00:00')"
    if kind == "text" and (col.charset or "").lower() not in UTF8_CHARSETS:
        return f"CONVERT({x} USING utf8mb4)"
    return x


def read_sql(col: Column) -> str:
    """The expression a snapshot/verify SELECT uses for `col` (session time_zone '+00:00')."""
    x = quote_ident(col.name)
    if col.kind == "float":
        return f"CAST({x} AS DOUBLE)"
    return x


def read_columns_sql(schema: TableSchema) -> str:
    """The column list of a snapshot/verify SELECT: read_sql(c) AS `c` for every column."""
    return ", ".join(f"{read_sql(c)} AS {quote_ident(c.name)}" for c in schema.columns)


READ_SESSION_SQL = "SET SESSION time_zone = '+00:00'"


def load_table(conn: Any, database: str, table: str) -> TableSchema:
    """Read a base table's columns and key from information_schema.

    Raises ConfigError naming the table when it does not exist, is a view, or has neither a
    primary key nor a unique key over NOT NULL columns."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
            (database, table),
        )
        found = cur.fetchone()
        if found is None:
            cur.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s ORDER BY TABLE_NAME LIMIT 20",
                (database,),
            )
            names = [r[0] for r in cur.fetchall()]
            hint = f"; tables there: {', '.join(names)}" if names else "; that database has no tables"
            raise ConfigError(f"table {database}.{table!r} does not exist{hint}")
        if found[0] != "BASE TABLE":
            raise UnusableTable(f"table {database}.{table!r} is a {found[0].lower()}; expected a base table",
                                f"a {found[0].lower()}")
        cur.execute(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE, IS_NULLABLE, DATETIME_PRECISION, "
            "CHARACTER_SET_NAME, EXTRA FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION",
            (database, table),
        )
        columns = tuple(
            Column(
                name=r[0],
                data_type=r[1],
                column_type=r[2],
                nullable=r[3] == "YES",
                fsp=int(r[4]) if r[4] is not None else None,
                charset=r[5],
                generated="GENERATED" in (r[6] or "").upper() or "VIRTUAL" in (r[6] or "").upper()
                or "PERSISTENT" in (r[6] or "").upper() or "STORED" in (r[6] or "").upper(),
            )
            for r in cur.fetchall()
        )
        cur.execute(
            "SELECT INDEX_NAME, COLUMN_NAME, NON_UNIQUE, NULLABLE FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY INDEX_NAME='PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX",
            (database, table),
        )
        indexes: dict[str, list[tuple[str, bool, bool]]] = {}
        for name, column, non_unique, nullable in cur.fetchall():
            indexes.setdefault(name, []).append((column, int(non_unique) == 0, nullable == "YES"))
    key: tuple[str, ...] | None = None
    key_name = ""
    for name, cols in indexes.items():
        if all(unique for _, unique, _ in cols) and not any(nullable for _, _, nullable in cols):
            if any(c is None for c, _, _ in cols):
                continue  # an index over an expression
            key, key_name = tuple(c for c, _, _ in cols), name
            break
    if key is None:
        raise UnusableTable(
            f"table {database}.{table!r} has {NO_KEY}; expected one, so each row maps to one Redis key", NO_KEY)
    schema = TableSchema(database, table, columns, key, key_name)
    for c in schema.columns:
        try:
            _ = c.kind  # raises ConfigError for unsupported types
        except ConfigError as exc:
            raise UnusableTable(str(exc), f"column {c.name!r} has the unsupported type {c.column_type!r}") from None
    return schema


def list_tables(conn: Any, database: str,
                exclude: Mapping[str, str] | None = None) -> tuple[list[TableSchema], list[tuple[str, str]]]:
    """Every table of `database` in name order: (the usable ones' schemas, [(name, why skipped)]).

    Usable = what `load_table` accepts (a base table with a primary key or a NOT NULL unique key,
    supported column types); views are skipped too. `exclude` maps names to skip to the reason
    (e.g. gearsync's own spool table)."""
    exclude = exclude or {}
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s ORDER BY TABLE_NAME",
                    (database,))
        names = [str(r[0]) for r in cur.fetchall()]
    usable: list[TableSchema] = []
    skipped: list[tuple[str, str]] = []
    for name in names:
        if name in exclude:
            skipped.append((name, exclude[name]))
            continue
        try:
            usable.append(load_table(conn, database, name))
        except UnusableTable as exc:
            skipped.append((name, exc.reason))
    return usable, skipped


def current_database(conn: Any) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        row = cur.fetchone()
    if not row or row[0] is None:
        raise SourceError("no database selected; expected GEARSYNC_MYSQL_DATABASE, a /db path in --mysql-url, or db.table")
    return str(row[0])
