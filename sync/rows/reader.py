"""The keyset reader that sync-snapshot and sync-verify share: one table read in primary-key order.

    reader = TableReader(conn, schema)                  # a pymysql connection (autocommit on)
    rows = reader.chunk(after, 5000, versioned=True)    # rows after the key `after`, key order
    events = row_events(schema, rows)                    # → ChangeEvent(op=insert, source=snapshot)

The SQL (keyset pagination, the shared row locks and the UUID_SHORT() version taken after them,
the consistent snapshot of binlog mode and its BinlogPoint) is explained in sync.tools.snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from sync.errors import ConfigError, SourceError, short_error
from sync.events import ChangeEvent, JSONValue, Op, Source
from sync.rows.fkgraph import FKGraph
from sync.rows.schema import READ_SESSION_SQL, TableSchema, canonical_value, quote_ident, read_columns_sql

log = structlog.get_logger(__name__)

__all__ = [
    "VERSION_ALIAS",
    "TableReader",
    "BinlogPoint",
    "row_events",
    "format_pk",
    "estimate_rows",
    "fast_conversions",
    "after_key_sql",
    "after_key_params",
    "key_in_sql",
    "sql_value",
]


VERSION_ALIAS = "__gearsync_version"


# -- SQL ------------------------------------------------------------------------------------------

def _select_list(schema: TableSchema, versioned: bool, version: int | None = None) -> str:
    """Columns; with `versioned`, led by the version: UUID_SHORT() (trigger mode) or, in binlog
    mode, the constant `version` of the consistent snapshot (an integer literal)."""
    cols = read_columns_sql(schema)
    if not versioned:
        return cols
    expr = "UUID_SHORT()" if version is None else str(int(version))
    return f"{expr} AS {quote_ident(VERSION_ALIAS)}, {cols}"


def after_key_sql(schema: TableSchema) -> str:
    """`(k1 > %s) OR (k1 = %s AND k2 > %s) …`: rows strictly after a key, in key order."""
    cols = [quote_ident(k) for k in schema.key]
    terms = []
    for i, col in enumerate(cols):
        terms.append("(" + " AND ".join([f"{c} = %s" for c in cols[:i]] + [f"{col} > %s"]) + ")")
    return " OR ".join(terms)


def after_key_params(after: Sequence[JSONValue]) -> list[Any]:
    values = [sql_value(v) for v in after]
    params: list[Any] = []
    for i in range(len(values)):
        params.extend(values[: i + 1])
    return params


def key_in_sql(schema: TableSchema, n: int) -> str:
    """`k IN (%s, …)` or `(k1, k2) IN ((%s, %s), …)` for n keys (MariaDB range-scans both)."""
    if len(schema.key) == 1:
        return f"{quote_ident(schema.key[0])} IN ({', '.join(['%s'] * n)})"
    one = "(" + ", ".join(["%s"] * len(schema.key)) + ")"
    return "(" + ", ".join(quote_ident(k) for k in schema.key) + f") IN ({', '.join([one] * n)})"


def sql_value(v: JSONValue) -> Any:
    """A canonical pk value as a query parameter ({"$b64"} → the bytes; the rest compare as is:
    dates, decimals and times as their text, timestamps in the session's UTC)."""
    if type(v) is dict:
        import base64

        return base64.b64decode(v["$b64"])
    return v


def format_pk(schema: TableSchema, pk: Sequence[JSONValue] | None) -> str:
    if pk is None:
        return "(start)"
    return ", ".join(f"{name}={orjson.dumps(v).decode()}" for name, v in zip(schema.key, pk))


def estimate_rows(conn: Any, schema: TableSchema) -> int | None:
    """InnoDB's row estimate (information_schema; no scan). None when unknown."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
            (schema.database, schema.name),
        )
        row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None


@dataclass(frozen=True)
class BinlogPoint:
    """The binlog point P of a consistent snapshot, and the version its rows get."""

    gtid: str                       # BINLOG_GTID_POS: the GTID state at P ("0-1-100[,…]")
    file: str
    pos: int
    domain: int                     # the server's gtid_domain_id: the domain versions come from
    seq: int                        # P's sequence number in that domain (0: none yet)

    @classmethod
    def at(cls, gtid: str, file: str, pos: int, domain: int) -> BinlogPoint:
        from sync.position import parse_mariadb_gtids

        state = parse_mariadb_gtids(gtid, "BINLOG_GTID_POS")
        return cls(gtid, file, pos, domain, state.get(domain, (0, 0))[1])

    @property
    def version(self) -> int:
        """gtid_version(P.seq, ROW_MASK): >= every change at or before P, < every later one."""
        from sync.position import ROW_MASK, gtid_version

        return gtid_version(self.seq, ROW_MASK)

    def position(self) -> Any:
        from sync.position import Position

        return Position("mariadb", self.gtid, self.file, self.pos)

    def to_json(self) -> bytes:
        return orjson.dumps({"gtid": self.gtid, "file": self.file, "pos": self.pos, "domain": self.domain,
                             "seq": self.seq})

    @classmethod
    def from_json(cls, raw: bytes | str) -> BinlogPoint:
        d = orjson.loads(raw)
        return cls(str(d["gtid"]), str(d["file"]), int(d["pos"]), int(d["domain"]), int(d["seq"]))


class TableReader:
    """Keyset-paginated reads of one table on one pymysql connection (autocommit on)."""

    def __init__(self, conn: Any, schema: TableSchema) -> None:
        self.conn = conn
        self.schema = schema
        self.names = [c.name for c in schema.columns]
        self._key_idx = [self.names.index(k) for k in schema.key]
        with conn.cursor() as cur:
            cur.execute(READ_SESSION_SQL)
            # Gap locks (REPEATABLE READ) matter for absent_version(): an INSERT of a key we
            # found absent must wait for our transaction, so its trigger version is larger.
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        self._ref = schema.ref
        self._order = ", ".join(quote_ident(k) for k in schema.key)
        self._after = after_key_sql(schema)

    def _query(self, sql: str, params: Sequence[Any], versioned: bool, *, locked: bool = True,
               binlog: bool = False) -> list[dict[str, Any]]:
        names = ([VERSION_ALIAS] if versioned else []) + self.names
        with self._mysql_errors("read"), self.conn.cursor() as cur:
            if versioned and locked:
                # A short transaction: the shared locks live only while this chunk is read.
                with self._transaction(cur):
                    cur.execute(sql + " LOCK IN SHARE MODE", params)
                    rows = cur.fetchall()
                    if binlog:  # `sql` selects no version: the binlog position, taken under the locks
                        version = binlog_version_now(cur)
                        rows = [(version, *r) for r in rows]
            else:
                cur.execute(sql, params)
                rows = cur.fetchall()
        return [dict(zip(names, r)) for r in rows]

    @contextmanager
    def _mysql_errors(self, what: str) -> Iterator[None]:
        """A MySQL error (or a lost connection) in the block → SourceError naming the table."""
        try:
            yield
        except Exception as exc:
            if _is_mysql_error(exc):
                raise SourceError(f"MySQL {what} of {self.schema.database}.{self.schema.name} failed: "
                                  f"{short_error(exc)}") from exc
            raise

    @contextmanager
    def _transaction(self, cur: Any) -> Iterator[None]:
        """START TRANSACTION … COMMIT around the block; ROLLBACK if anything in it (or the COMMIT) fails."""
        cur.execute("START TRANSACTION")
        try:
            yield
            cur.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception as exc:  # the connection may be gone; the original error matters
            log.debug("rollback_failed", error=short_error(exc))

    def chunk(self, after: Sequence[JSONValue] | None, limit: int, *, versioned: bool) -> list[dict[str, Any]]:
        """Up to `limit` rows after the key `after` (canonical values), in key order; with
        `versioned`, under shared row locks with a per-row UUID_SHORT() (sync.tools.snapshot)."""
        sql, params = self._keyset_sql(_select_list(self.schema, versioned), after, limit)
        return self._query(sql, params, versioned)

    def _keyset_sql(self, select: str, after: Sequence[JSONValue] | None, limit: int) -> tuple[str, list[Any]]:
        """The query of one chunk: up to `limit` rows after the key `after`, in key order."""
        sql = f"SELECT {select} FROM {self._ref}"
        params: list[Any] = []
        if after is not None:
            sql += f" WHERE {self._after}"
            params = after_key_params(after)
        sql += f" ORDER BY {self._order} LIMIT {int(limit)}"
        return sql, params

    # -- binlog mode: one consistent snapshot for the whole read (sync.tools.snapshot) ---------
    def begin_consistent(self) -> BinlogPoint:
        """Open the consistent-snapshot transaction and return its binlog point P (MariaDB)."""
        with self._mysql_errors("consistent snapshot"), self.conn.cursor() as cur:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            try:
                cur.execute("SHOW STATUS LIKE 'binlog_snapshot_file'")
                frow = cur.fetchone()
                cur.execute("SHOW STATUS LIKE 'binlog_snapshot_position'")
                prow = cur.fetchone()
                if frow is None or prow is None:
                    raise ConfigError("--versions binlog: this server has no binlog_snapshot_file status "
                                      "(MySQL); expected MariaDB, or --versions trigger")
                file, pos = str(frow[1] or ""), int(prow[1] or 0)
                if not file:
                    raise ConfigError("--versions binlog: binary logging is off on this server (empty "
                                      "binlog_snapshot_file); expected log_bin=ON and binlog_format=ROW")
                cur.execute("SELECT BINLOG_GTID_POS(%s, %s), @@global.gtid_domain_id", (file, pos))
                gtid, domain = cur.fetchone()
                if gtid is None:
                    raise SourceError(f"BINLOG_GTID_POS({file}, {pos}) is NULL: the snapshot's binlog "
                                      "point has no GTID position")
            except BaseException:
                self._rollback()
                raise
        return BinlogPoint.at(str(gtid), file, pos, int(domain))

    def chunk_consistent(self, after: Sequence[JSONValue] | None, limit: int, version: int) -> list[dict[str, Any]]:
        """chunk() inside the open consistent snapshot: no locks, every row versioned `version`."""
        sql, params = self._keyset_sql(_select_list(self.schema, True, version), after, limit)
        return self._query(sql, params, True, locked=False)

    def end_consistent(self) -> None:
        """Close the consistent-snapshot transaction (read-only: COMMIT and ROLLBACK are the same)."""
        self._rollback()

    def rows_by_key(self, pks: Sequence[Sequence[JSONValue]], *, versioned: bool,
                    binlog: bool = False) -> list[dict[str, Any]]:
        """The rows with these keys (canonical values) that exist; versioned as in chunk(), or with
        `binlog` (and versioned) by binlog_version_now() taken after the shared locks."""
        if not pks:
            return []
        sql = (f"SELECT {_select_list(self.schema, versioned and not binlog)} FROM {self._ref} "
               f"WHERE {key_in_sql(self.schema, len(pks))} ORDER BY {self._order}")
        return self._query(sql, [sql_value(v) for pk in pks for v in pk], versioned, binlog=binlog)

    def existing_keys(self, pks: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Which of these keys exist (raw key column values as MySQL returns them)."""
        if not pks:
            return []
        cols = ", ".join(quote_ident(k) for k in self.schema.key)
        sql = f"SELECT {cols} FROM {self._ref} WHERE {key_in_sql(self.schema, len(pks))}"
        with self._mysql_errors("read"), self.conn.cursor() as cur:
            cur.execute(sql, [sql_value(v) for pk in pks for v in pk])
            return [tuple(r) for r in cur.fetchall()]

    def absent_version(self, pks: Sequence[Sequence[JSONValue]], *, binlog: bool = False) -> tuple[list[tuple[Any, ...]], int]:
        """(keys that exist after all, a version for deleting the others).

        Same reasoning as the snapshot: the locking read waits for an uncommitted insert of a
        key and, under REPEATABLE READ, gap-locks the absent ones, so a later INSERT of such a key
        waits for our COMMIT and its AFTER trigger takes a larger UUID_SHORT() than ours (with
        `binlog`: commits after our read, so its GTID is after binlog_version_now()'s)."""
        cols = ", ".join(quote_ident(k) for k in self.schema.key)
        sql = f"SELECT {cols} FROM {self._ref} WHERE {key_in_sql(self.schema, len(pks))} LOCK IN SHARE MODE"
        with self._mysql_errors("read"), self.conn.cursor() as cur:
            with self._transaction(cur):
                cur.execute(sql, [sql_value(v) for pk in pks for v in pk])
                found = [tuple(r) for r in cur.fetchall()]
                if binlog:
                    version = binlog_version_now(cur)
                else:
                    cur.execute("SELECT UUID_SHORT()")
                    version = int(cur.fetchone()[0])
        return found, version

    def check_binlog_versions(self) -> int:
        """binlog_version_now() outside a transaction: ConfigError at once if the server cannot give one."""
        with self._mysql_errors("binlog position read"), self.conn.cursor() as cur:
            return binlog_version_now(cur)


def binlog_version_now(cur: Any) -> int:
    """gtid_version(seq, ROW_MASK) of the server's binlog GTID position now (MariaDB, log_bin on),
    seq in its gtid_domain_id: >= the version sync-binlog gives every transaction already in the
    binlog, < any committed later. Under a shared row lock, a change of that row committed before
    it was taken is in the binlog (MariaDB writes the binlog before the engine commit releases the
    locks), and one committed after waits for the lock: its GTID comes after this position."""
    cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'gtid_binlog_pos', 'gtid_domain_id')")
    found = {str(k): str(v) for k, v in cur.fetchall()}
    if "gtid_binlog_pos" not in found:
        raise ConfigError("--versions binlog: this server has no gtid_binlog_pos (MySQL?); expected MariaDB with "
                          "log_bin=ON, or --versions trigger")
    if found.get("log_bin", "OFF").upper() != "ON":
        raise ConfigError(f"--versions binlog: log_bin is {found.get('log_bin', 'OFF')} on this server (no binlog "
                          "positions); expected log_bin=ON, or --versions trigger")
    return BinlogPoint.at(found["gtid_binlog_pos"], "", 0, int(found.get("gtid_domain_id") or 0)).version


def row_events(schema: TableSchema, rows: Sequence[Mapping[str, Any]], op: Op = Op.INSERT,
               graph: FKGraph | None = None) -> list[ChangeEvent]:
    """Versioned rows (from TableReader with versioned=True) → snapshot change events; with the
    database's FK `graph`, a child table's rows carry their "refs" (the applier's FK index).

    Values go through `schema.canonical_value`, except those already in canonical form: None,
    an int in an integer column, a str in a text column (canonical_value returns exactly these
    unchanged; skipping the call saves a third of the per-row time)."""
    out = []
    name = schema.name
    key = schema.key
    plan = [(c.name, c, _IDENTITY.get(c.kind)) for c in schema.columns]
    fks = graph if graph is not None and graph.child_fks(name) else None
    for row in rows:
        canonical: dict[str, JSONValue] = {}
        for cname, col, same in plan:
            v = row[cname]
            canonical[cname] = v if v is None or type(v) is same else canonical_value(col, v)
        pk = tuple((k, canonical[k]) for k in key)
        refs = fks.refs(name, canonical) if fks is not None else None
        out.append(ChangeEvent(name, op, pk, canonical, int(row[VERSION_ALIAS]), Source.SNAPSHOT, refs))
    return out


# Column kind → the Python type whose values canonical_value returns unchanged. Temporal
# columns arrive as MySQL's text when read through `fast_conversions()` (connections made by
# open_table): exactly the canonical text (fsp digits, UTC for TIMESTAMP in the read session).
_IDENTITY: dict[str, Any] = {"int": int, "uint64": int, "text": str,
                              "datetime": str, "timestamp": str, "date": str, "time": str}


def fast_conversions() -> dict[Any, Any]:
    """pymysql decoders that leave DATE/TIME/DATETIME/TIMESTAMP as MySQL's text: it already is
    the canonical form (schema.canonical_value returns such text unchanged), and parsing it into
    datetime objects only to format them back costs ~1 us per value."""
    from pymysql.constants import FIELD_TYPE
    from pymysql.converters import conversions

    conv = dict(conversions)
    for t in (FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP, FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE, FIELD_TYPE.TIME):
        conv.pop(t, None)
    return conv


def _is_mysql_error(exc: BaseException) -> bool:
    import pymysql

    return isinstance(exc, (pymysql.err.MySQLError, OSError))
