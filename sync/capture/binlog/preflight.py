"""Server checks before reading a binlog, and where to start: what the server must provide
(check_server, check_replication), --start and saved positions (resolve_start,
check_position_available), and the errors retrying cannot fix (fatal_error)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sync.errors import ConfigError, SourceError
from sync.mysql import MySQLSettings
from sync.position import Position, format_mariadb_gtids, parse_mariadb_gtids
from sync.rows.schema import quote_ident

__all__ = [
    "FATAL_MYSQL_ERRORS",
    "ServerInfo",
    "check_position_available",
    "check_replication",
    "check_server",
    "fatal_error",
    "fatal_message",
    "resnapshot_hint",
    "resolve_start",
]


# MySQL server error codes (mysqld_error.h).
ER_DBACCESS_DENIED_ERROR = 1044
ER_ACCESS_DENIED_ERROR = 1045
ER_TABLEACCESS_DENIED_ERROR = 1142
ER_NO_SUCH_TABLE = 1146
ER_SPECIFIC_ACCESS_DENIED_ERROR = 1227
ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236
# Refused: retrying cannot help.
ACCESS_DENIED_ERRORS = (ER_SPECIFIC_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR, ER_ACCESS_DENIED_ERROR,
                        ER_TABLEACCESS_DENIED_ERROR)
FATAL_MYSQL_ERRORS = {*ACCESS_DENIED_ERRORS, ER_MASTER_FATAL_ERROR_READING_BINLOG}


@dataclass(frozen=True)
class ServerInfo:
    flavor: str              # "mariadb" | "mysql"
    version: str
    server_id: int
    gtid_mode: bool          # MySQL: gtid_mode=ON; MariaDB: always True
    binlog_files: tuple[str, ...] = ()


def fatal_error(exc: BaseException, mysql: MySQLSettings, position: Position, tables: Sequence[str]) -> SourceError | None:
    """The SourceError to raise for a pymysql error `exc` reading the binlog from `position` that
    retrying cannot fix (FATAL_MYSQL_ERRORS); None for any other error."""
    code = exc.args[0] if exc.args else None
    if code not in FATAL_MYSQL_ERRORS:
        return None
    return SourceError(fatal_message(code, str(exc.args[1] if len(exc.args) > 1 else exc), mysql, position, tables))


def fatal_message(code: int, text: str, mysql: MySQLSettings, position: Position, tables: Sequence[str]) -> str:
    """What to do about MySQL error `code` (one of FATAL_MYSQL_ERRORS) reading the binlog from `position`."""
    who = f"MySQL user {mysql.user!r}"
    if code in ACCESS_DENIED_ERRORS:
        if "REPLICATION SLAVE" in text.upper() or "REPLICATION" in text.upper():
            return (f"{who} lacks REPLICATION SLAVE: run GRANT REPLICATION SLAVE ON *.* TO the user "
                    f"(server said: {text})")
        return f"{who} was refused by {mysql.display}: {text}"
    return (f"the binlog cannot be read from {position.describe()}: {text}. If the position was "
            f"purged, {resnapshot_hint(tables)}")


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
        value_options = _var(cur, "binlog_row_value_options")   # MySQL 8 only
        if "PARTIAL_JSON" in (value_options or "").upper():
            # Partial JSON updates are logged as PARTIAL_UPDATE_ROWS events (type 39), which carry a diff
            # of the document rather than its value: the reader cannot turn them into rows.
            raise SourceError(f"{where}: binlog_row_value_options is {value_options}; expected '' (whole JSON "
                              "documents in the binlog): SET GLOBAL binlog_row_value_options='' and the same in "
                              "the server config")
        gtid_mode = True
        if flavor == "mysql":
            gm = _var(cur, "gtid_mode")
            gtid_mode = (gm or "OFF").upper() == "ON"
        try:
            cur.execute("SHOW BINARY LOGS")
            files = tuple(str(r[0]) for r in cur.fetchall())
        except pymysql.err.MySQLError as exc:
            if exc.args and exc.args[0] in (ER_SPECIFIC_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_ERROR,
                                            ER_DBACCESS_DENIED_ERROR):
                need = "BINLOG MONITOR (REPLICATION CLIENT)" if flavor == "mariadb" else "REPLICATION CLIENT"
                raise SourceError(f"{where}: user {mysql.user!r} lacks {need}: run GRANT {need.split(' (')[0]} "
                                  f"ON *.* TO the user (server said: {exc.args[1]})") from None
            raise
        for table in tables:
            try:
                cur.execute(f"SELECT 1 FROM {quote_ident(database)}.{quote_ident(table)} LIMIT 0")
                cur.fetchall()
            except pymysql.err.MySQLError as exc:
                if exc.args and exc.args[0] in ACCESS_DENIED_ERRORS:
                    raise SourceError(f"{where}: user {mysql.user!r} lacks SELECT on {database}.{table}: run GRANT "
                                      f"SELECT ON `{database}`.* TO the user") from None
                if exc.args and exc.args[0] == ER_NO_SUCH_TABLE:
                    raise ConfigError(f"table {database}.{table!r} does not exist") from None
                raise
    return ServerInfo(flavor, str(version), int(server_id), gtid_mode, files)


def check_replication(source: Any, timeout_s: float = 10.0) -> None:
    """Open a binlog dump at the start position of `source` (a sync.capture.binlog.reader.BinlogSource)
    and read one event: proves REPLICATION SLAVE and that the position is still in the binlog
    (SourceError otherwise)."""
    import pymysql

    stream = source.open_stream(source.committed, blocking=True)
    try:
        stream.fetchone()
    except pymysql.err.MySQLError as exc:
        fatal = fatal_error(exc, source.mysql, source.committed, list(source.tables))
        if fatal is not None:
            raise fatal from None
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
