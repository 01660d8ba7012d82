"""The capture triggers on a live server: install, check, alter, and which tables can have them.

`sync-triggers install|check|uninstall|alter`, sync-relay's trigger watcher and sync-status all
use these functions; the SQL itself comes from sync.capture.triggers.

- check: what `install` would create now (`install_statements` for the table's current shape and
  the options recorded in the triggers' marker comment) against information_schema.TRIGGERS —
  same names, table, timing, event, and body (whitespace normalised). Whatever install creates
  is compared, so triggers install adds for other tables are covered as well.
- install: drops a trigger of ours that sits on another table first (a table swapped by RENAME
  keeps its triggers: CREATE OR REPLACE of that name on the new table fails with 1360), then runs
  the install statements (CREATE OR REPLACE: atomic per trigger).
- alter: under LOCK TABLES <table> WRITE (other sessions' reads and writes of the table wait,
  none fails): triggers for the columns that survive the ALTER, the ALTER, triggers for the new
  shape, UNLOCK. No statement of another session runs in between, so no change is missed; if
  this session dies midway, the triggers in place only name columns that exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync.capture.spool import SPOOL_TABLE
from sync.capture.triggers import EVENTS, TriggerOptions, install_statements, read_marker, trigger_names
from sync.errors import ConfigError, SourceError
from sync.rows.fkgraph import load_foreign_keys
from sync.rows.schema import TableSchema, list_tables, load_table, quote_ident

__all__ = [
    "InstalledTrigger",
    "TableCheck",
    "alter_table",
    "check_table",
    "check_tables",
    "dropped_columns",
    "eligible_tables",
    "execute_all",
    "install_table",
    "installed_triggers",
    "last_other_triggers",
    "marked_tables",
    "resolve_schema",
    "trigger_states",
]

_IDENT = r"`(?:[^`]|``)*`"
_CREATE = re.compile(
    rf"^CREATE\s+(?:OR\s+REPLACE\s+)?TRIGGER\s+(?:{_IDENT}\.)?({_IDENT})\s+(BEFORE|AFTER)\s+(INSERT|UPDATE|DELETE)\s+"
    rf"ON\s+(?:{_IDENT}\.)?({_IDENT})\s+FOR\s+EACH\s+ROW\s+(?:(?:FOLLOWS|PRECEDES)\s+{_IDENT}\s+)?(.*)$",
    re.DOTALL,
)
_COLUMN_REF = re.compile(rf"\b(?:NEW|OLD)\.({_IDENT})")


def _unquote(ident: str) -> str:
    return ident[1:-1].replace("``", "`")


def _text(v: Any) -> str:
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes | bytearray) else str(v)


def _normal(body: str) -> str:
    return " ".join(body.split())


@dataclass(frozen=True)
class InstalledTrigger:
    name: str
    table: str
    timing: str
    event: str
    body: str

    @property
    def marker(self) -> tuple[str, TriggerOptions] | None:
        return read_marker(self.body)


@dataclass
class TableCheck:
    """The result of checking one table: no problems = exactly what install would create."""

    database: str
    table: str
    options: TriggerOptions | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def installed(self) -> bool:
        """Some trigger of this table's install exists (possibly stale or elsewhere)."""
        return self.options is not None

    def summary(self) -> str:
        return "ok" if self.ok else "stale: " + "; ".join(self.problems)


def execute_all(conn: Any, statements: Sequence[str], display: str) -> None:
    """Run `statements`; a failure is one line naming the statement (SourceError)."""
    import pymysql

    with conn.cursor() as cur:
        for stmt in statements:
            try:
                cur.execute(stmt)
            except pymysql.MySQLError as exc:
                first = stmt.splitlines()[0]
                raise SourceError(f"MySQL {display}: {first[:120]!r} failed: {exc.args[-1] if exc.args else exc}") from None


def installed_triggers(conn: Any, database: str) -> list[InstalledTrigger]:
    """Every trigger of `database` whose name starts with gearsync_."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_STATEMENT "
            "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s AND TRIGGER_NAME LIKE 'gearsync\\_%%'",
            (database,),
        )
        return [InstalledTrigger(*(_text(v) for v in row)) for row in cur.fetchall()]


def last_other_triggers(conn: Any, schema: TableSchema) -> dict[str, str | None]:
    """event → the table's last AFTER trigger of that event that is not gearsync's (ours must
    follow it), or None."""
    ours = set(trigger_names(schema.name).values())
    out: dict[str, str | None] = {e: None for e in EVENTS}
    with conn.cursor() as cur:
        cur.execute(
            "SELECT EVENT_MANIPULATION, TRIGGER_NAME FROM information_schema.TRIGGERS "
            "WHERE EVENT_OBJECT_SCHEMA=%s AND EVENT_OBJECT_TABLE=%s AND ACTION_TIMING='AFTER' "
            "ORDER BY EVENT_MANIPULATION, ACTION_ORDER",
            (schema.database, schema.name),
        )
        for event, name in cur.fetchall():
            if name not in ours and event in out:
                out[event] = name
    return out


def resolve_schema(conn: Any, database: str, table: str, options: TriggerOptions) -> TableSchema:
    """The table's current shape restricted to the options' columns that still exist."""
    schema = load_table(conn, database, table)
    if options.columns is None:
        return schema
    present = {c.name for c in schema.columns}
    return schema.select([c for c in options.columns if c in present] or list(schema.key))


def _expected(conn: Any, schema: TableSchema, options: TriggerOptions) -> tuple[list[str], list[InstalledTrigger]]:
    """The statements install would run now, and the triggers they create (body as generated)."""
    graph = load_foreign_keys(conn, schema.database)
    statements = install_statements(schema, options, last_other_triggers(conn, schema), graph)
    triggers = []
    for stmt in statements:
        m = _CREATE.match(stmt)
        if m:
            name, timing, event, table, body = m.groups()
            triggers.append(InstalledTrigger(_unquote(name), _unquote(table), timing, event, body))
    return statements, triggers


def _options_for(table: str, installed: Iterable[InstalledTrigger]) -> tuple[TriggerOptions | None, bool]:
    """The install options recorded for `table` (by any trigger carrying its marker), and
    whether a trigger of its default names exists without a marker."""
    names = set(trigger_names(table).values())
    unmarked = False
    for t in installed:
        marker = t.marker
        if marker is not None and marker[0] == table:
            return marker[1], False
        if marker is None and t.name in names:
            unmarked = True
    return None, unmarked


def _column_hint(found: str, wanted: str) -> str:
    have = {_unquote(c) for c in _COLUMN_REF.findall(found)}
    want = {_unquote(c) for c in _COLUMN_REF.findall(wanted)}
    parts = [f"column {c} added" for c in sorted(want - have)] + [f"column {c} dropped" for c in sorted(have - want)]
    return ", ".join(parts) or "body differs from what install generates now"


def check_table(conn: Any, database: str, table: str, installed: Sequence[InstalledTrigger] | None = None,
                options: TriggerOptions | None = None) -> TableCheck:
    """Compare `table`'s triggers with what install would create now. `options` (e.g. remembered
    by the watcher) is used when no trigger carries the marker any more."""
    if installed is None:
        installed = installed_triggers(conn, database)
    found_options, unmarked = _options_for(table, installed)
    result = TableCheck(database, table, found_options or options)
    if result.options is None:
        result.problems.append(
            "installed without the gearsync marker (an older gearsync, or a script applied without --comments): "
            "re-run install" if unmarked else "no gearsync triggers (not installed, dropped, or the table was "
            "swapped by RENAME and the old one dropped)")
        return result
    schema = resolve_schema(conn, database, table, result.options)
    _, expected = _expected(conn, schema, result.options)
    by_name = {t.name: t for t in installed}
    for want in expected:
        have = by_name.get(want.name)
        if have is None:
            result.problems.append(f"{want.name} missing")
        elif have.table != want.table:
            result.problems.append(f"{want.name} is on table {have.table}, not {want.table} (table swapped by RENAME?)")
        elif (have.timing, have.event) != (want.timing, want.event):
            result.problems.append(f"{want.name} is {have.timing} {have.event}, expected {want.timing} {want.event}")
        elif _normal(have.body) != _normal(want.body):
            result.problems.append(f"{want.name}: {_column_hint(have.body, want.body)}")
    return result


def marked_tables(installed: Iterable[InstalledTrigger]) -> list[str]:
    """The tables that some installed trigger's marker names (wherever the trigger now is)."""
    return sorted({m[0] for m in (t.marker for t in installed) if m is not None})


def check_tables(conn: Any, database: str, tables: Sequence[str] | None) -> list[TableCheck]:
    """check_table for each of `tables`; None: every table some gearsync trigger is installed for."""
    installed = installed_triggers(conn, database)
    names = list(tables) if tables is not None else marked_tables(installed)
    return [check_table(conn, database, t, installed) for t in names]


def trigger_states(settings: Any, databases: Sequence[str] | None = None) -> dict[str, str]:
    """"db.table" -> "ok" | "stale: …" for every table with gearsync triggers in `databases`
    (default: every database holding gearsync_spool); {"error": …} when MySQL fails."""
    from sync.errors import short_error

    try:
        conn = settings.connect(connect_timeout=3, read_timeout=10)
    except Exception as exc:
        return {"error": short_error(exc, 200)}
    try:
        if databases is None:
            with conn.cursor() as cur:
                cur.execute("SELECT TABLE_SCHEMA FROM information_schema.TABLES WHERE TABLE_NAME=%s", (SPOOL_TABLE,))
                databases = sorted(_text(r[0]) for r in cur.fetchall())
        return {f"{db}.{r.table}": r.summary() for db in databases for r in check_tables(conn, db, None)}
    except Exception as exc:
        return {"error": short_error(exc, 200)}
    finally:
        conn.close()


def install_table(conn: Any, schema: TableSchema, options: TriggerOptions, display: str,
                  triggers_only: bool = False) -> list[str]:
    """Install the triggers for `schema` (with `triggers_only`, not the spool table: under LOCK
    TABLES); returns the names of the triggers created."""
    statements, expected = _expected(conn, schema, options)
    if triggers_only:
        statements = [s for s in statements if _CREATE.match(s)]
    wanted = {t.name: t.table for t in expected}
    misplaced = [t.name for t in installed_triggers(conn, schema.database)
                 if t.name in wanted and t.table != wanted[t.name]]
    drops = [f"DROP TRIGGER IF EXISTS {quote_ident(schema.database)}.{quote_ident(n)}" for n in misplaced]
    execute_all(conn, drops + statements, display)
    return [t.name for t in expected]


# -- many tables ---------------------------------------------------------------------------------

def eligible_tables(conn: Any, database: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(tables that can have capture triggers, [(table, why not)]) in `database`: what load_table
    accepts (rows.schema.list_tables); gearsync_spool is gearsync's own."""
    usable, skipped = list_tables(conn, database, exclude={SPOOL_TABLE: "gearsync's own spool table"})
    return [t.name for t in usable], skipped


# -- alter ---------------------------------------------------------------------------------------

_NOT_COLUMN = {"PRIMARY", "INDEX", "KEY", "FOREIGN", "CONSTRAINT", "CHECK", "PARTITION", "UNIQUE", "FULLTEXT",
               "SPATIAL", "SYSTEM", "PERIOD"}
_TOKEN = re.compile(rf"\s*({_IDENT}|[A-Za-z0-9_$]+|.)", re.DOTALL)


def _clauses(spec: str) -> list[str]:
    """`spec` split at its top-level commas (not inside parentheses, quotes or backquotes)."""
    out, depth, quote, start = [], 0, "", 0
    i = 0
    while i < len(spec):
        ch = spec[i]
        if quote:
            if ch == "\\" and quote != "`":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(spec[start:i])
            start = i + 1
        i += 1
    out.append(spec[start:])
    return [c.strip() for c in out if c.strip()]


def _words(clause: str, n: int) -> list[str]:
    return [m.group(1) for m in _TOKEN.finditer(clause)][:n]


def _name(token: str) -> str:
    return _unquote(token) if token.startswith("`") else token


def dropped_columns(spec: str) -> set[str]:
    """Columns the ALTER specification removes under their current name: DROP [COLUMN] c,
    CHANGE [COLUMN] c d …, RENAME COLUMN c TO d. Anything else keeps the columns' names.
    RENAME TO (the table) is refused: rename the table on its own, then re-run install."""
    gone: set[str] = set()
    for clause in _clauses(spec):
        words = _words(clause, 6)
        upper = [w.upper() for w in words]
        if not upper:
            continue
        rest = words[1:]
        if upper[0] == "RENAME" and len(upper) > 1 and upper[1] in ("TO", "AS"):
            raise ConfigError(f"alter specification {clause!r} renames the table; expected column changes only "
                              "(RENAME TABLE it on its own, then run sync-triggers install for the new name)")
        if upper[0] == "RENAME" and len(upper) > 1 and upper[1] == "COLUMN":
            rest = words[2:]
        elif upper[0] in ("DROP", "CHANGE"):
            if rest and rest[0].upper() in _NOT_COLUMN:
                continue
            if rest and rest[0].upper() == "COLUMN":
                rest = rest[1:]
        else:
            continue
        if len(rest) >= 2 and rest[0].upper() == "IF" and rest[1].upper() == "EXISTS":
            rest = rest[2:]
        if not rest:
            continue
        old = _name(rest[0])
        if upper[0] == "CHANGE" and len(rest) > 1 and _name(rest[1]).lower() == old.lower():
            continue  # CHANGE c c …: only the type
        gone.add(old)
    return gone


@dataclass(frozen=True)
class AlterResult:
    before: TableSchema
    after: TableSchema
    triggers: list[str]


def alter_table(conn: Any, database: str, table: str, spec: str, display: str) -> AlterResult:
    """Run `ALTER TABLE table <spec>` without a failed statement or a missed change on the trigger
    path (see the module docstring). Raises ConfigError when the table has no gearsync triggers
    or MySQL rejects the specification (the triggers are then as they were), SourceError when
    MySQL fails otherwise."""
    import pymysql

    if not spec.strip():
        raise ConfigError("alter: the specification is empty; expected e.g. \"DROP COLUMN w\" or \"ADD COLUMN z INT\"")
    gone = {c.lower() for c in dropped_columns(spec)}
    check = check_table(conn, database, table)
    options = check.options
    if options is None:
        raise ConfigError(f"--table: {database}.{table} has no gearsync triggers ({check.problems[0]}); "
                          "expected a table set up with sync-triggers install (or use a plain ALTER TABLE)")
    before = resolve_schema(conn, database, table, options)
    survivors = before.select([c.name for c in before.columns if c.name.lower() not in gone]) \
        if not any(k.lower() in gone for k in before.key) else None
    ref = f"{quote_ident(database)}.{quote_ident(table)}"
    with conn.cursor() as cur:
        cur.execute(f"LOCK TABLES {ref} WRITE")
        try:
            if survivors is not None and survivors.columns != before.columns:
                install_table(conn, survivors, options, display, triggers_only=True)
            try:
                cur.execute(f"ALTER TABLE {ref} {spec}")
            except pymysql.MySQLError as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                try:
                    install_table(conn, before, options, display, triggers_only=True)  # as they were
                except SourceError:
                    pass  # the connection is gone: the survivors' triggers stay, valid either way
                message = f"ALTER TABLE {table} {spec[:200]}: MySQL error {code}: {exc.args[-1] if exc.args else exc}"
                if 1000 <= code < 2000:
                    raise ConfigError(message + "; the triggers are as they were") from None
                raise SourceError(message) from None
            after = resolve_schema(conn, database, table, options)
            names = install_table(conn, after, options, display, triggers_only=True)
        finally:
            try:
                cur.execute("UNLOCK TABLES")
            except pymysql.MySQLError:
                pass  # the connection is gone: its locks went with it
    return AlterResult(before, after, names)
