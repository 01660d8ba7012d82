"""Capture triggers for any table: the SQL, generated from a `TableSchema` (no server needed).

Three AFTER triggers per table (`gearsync_<table>_ai`, `_au`, `_ad`) turn each row change into
one wire-format-v1 change (sync.events) and hand it to gearmand with the UDF:

    CONCAT('{"v":1,"table":"data","op":"update","pk":', gman_json_object(NEW.`id` AS `id`),
           ',"row":', gman_json_object(NEW.`id` AS `id`, NEW.`volume` AS `volume`),
           ',"version":', UUID_SHORT(), ',"source":"trigger"}')

- The constant fragments (table name JSON-encoded by orjson) are built here and embedded as SQL
  string literals (`schema.quote_string`); the value expressions come only from
  `schema.trigger_sql()`, the JSON keys from the `AS` aliases (`schema.quote_ident`), which
  MariaDB hands to the UDF byte for byte. One exception, the UDF's "json_" marker: an alias
  `json_<name>` makes gman_json_object insert the value as raw JSON under key `<name>`. A column
  whose name starts with "json_" is therefore passed as alias `json_<its name>` with a value that
  is already its JSON text: SUBSTRING(gman_json_array(v), 2, LENGTH(…) - 2).
- INSERT sends op "insert" with the NEW row, DELETE sends op "delete" with the OLD key. UPDATE
  sends nothing when no synced column changed (NULL-safe `<=>`, byte-wise for text and binary
  columns so 'a' → 'A' or 'a' → 'a ' under a _ci / PAD SPACE collation still counts), and when a
  key column changed it first sends a delete of the OLD key, then the NEW row: two jobs, two
  versions.
- Triggers run last among the table's AFTER triggers of that event (FOLLOWS the last other one):
  a user trigger that fails the statement then fails it before gearsync has sent anything.

Enqueue modes (`TriggerOptions`):

    udf + spool (default)  gman_do_background(); when it returns NULL (not handed to any job
                           server), INSERT the change into `gearsync_spool` in the same
                           transaction; `sync-relay` drains it into gearmand later. A job that
                           was handed over is the UDF library's until gearmand acknowledges it
                           (resent, kept past the session, spilled at unload: udf/README.md)
    udf + fail             … SIGNAL SQLSTATE '45000' instead: the write fails
    udf + ignore           … drop it; counted in the session variable @gearsync_not_queued
    outbox                 always INSERT into the spool, never call gearmand inside the
                           transaction: nothing is sent before COMMIT, nothing of a ROLLBACK

udf mode is pre-commit: a change whose transaction rolls back has already been queued (a
"phantom" job), and a worker may apply a change before its COMMIT. outbox mode (or the binlog
source) is transactional.

Versions: UUID_SHORT() (see `VERSION_SQL`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sync.capture.spool import SPOOL_TABLE, spool_ddl
from sync.errors import ConfigError
from sync.rows.fkgraph import FKGraph
from sync.rows.schema import Column, TableSchema, quote_ident, quote_string, trigger_sql
from sync.settings import CAPTURE_MODES, FAILURE_POLICIES
from sync.tables import check_function_name, default_function

__all__ = [
    "EVENTS",
    "MODES",
    "FAILURE_POLICIES",
    "VERSION_SQL",
    "TriggerOptions",
    "trigger_names",
    "cascade_trigger_names",
    "cascade_trigger_statements",
    "payload_sql",
    "create_trigger_sql",
    "install_statements",
    "uninstall_statements",
    "install_script",
    "uninstall_script",
    "not_queued_message",
    "MARKER_PREFIX",
    "install_marker",
    "read_marker",
]

EVENTS = ("INSERT", "UPDATE", "DELETE")
_SUFFIX = {"INSERT": "ai", "UPDATE": "au", "DELETE": "ad"}
MODES = CAPTURE_MODES   # the config schema declares them (sync.settings); one list
MAX_IDENT_CHARS = 64
MAX_MESSAGE_CHARS = 128  # SIGNAL's MESSAGE_TEXT
_RAW_MARKER = "json_"    # gman_json_object inserts an alias json_<name> as raw JSON
_PAYLOAD_VAR = "gearsync_payload"

# Why UUID_SHORT() orders the changes of one row (the worker's version fence relies on it):
#
#   UUID_SHORT() = (server_id & 255) << 56 | server_startup_time_s << 24 | counter,
#   with counter incremented by every call, so it increases within one mysqld run.
#
# Two changes of one row cannot be captured out of order: the second writer of a row blocks on
# the first writer's row lock until that transaction commits or rolls back, so the second
# writer's trigger runs later and takes a larger UUID_SHORT(). (The two jobs of a key-changing
# UPDATE are taken in order in one trigger, delete of the old key first.)
#
# Across a mysqld restart the startup time (seconds) grows, so the values keep growing as long
# as the clock did not go back and the previous run averaged fewer than 2^24 calls per second
# (otherwise its counter overflowed into the bits of a later startup time). A failover to a
# server with a smaller server_id (its low 8 bits) goes backwards: the new primary's changes
# would be fenced off as stale until its values pass the old ones. Give replicas of one cluster
# increasing server_ids, or resync the affected keys after such a failover.
VERSION_SQL = "UUID_SHORT()"


@dataclass(frozen=True)
class TriggerOptions:
    """How the triggers of one table enqueue their changes."""

    function: str
    on_enqueue_failure: str = "spool"   # spool | fail | ignore (udf mode)
    mode: str = "udf"                   # udf | outbox
    columns: tuple[str, ...] | None = None  # --columns (None: every column of the table)

    def __post_init__(self) -> None:
        check_function_name(self.function, "--function")
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(self.columns))
        if self.mode not in MODES:
            raise ConfigError(f"--mode: {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.on_enqueue_failure not in FAILURE_POLICIES:
            raise ConfigError(
                f"--on-enqueue-failure: {self.on_enqueue_failure!r}; expected one of {', '.join(FAILURE_POLICIES)}"
            )

    @classmethod
    def for_table(cls, table: str, function: str | None = None, **kw: Any) -> TriggerOptions:
        if function is None:
            function = default_function(table)
            try:
                check_function_name(function)
            except ConfigError:
                raise ConfigError(
                    f"--function: the default function {function!r} of table {table!r} is not a valid Gearman "
                    "function name (it has spaces or control characters); expected --function NAME here and "
                    "the same --function for sync-worker"
                ) from None
        return cls(function=function, **kw)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def trigger_names(table: str) -> dict[str, str]:
    """event → trigger name: gearsync_<table>_ai/_au/_ad; for a table name too long for the 64
    character limit, the name is cut and an 8-hex hash of the full table name added (stable)."""
    return {event: _trigger_name(table, suffix) for event, suffix in _SUFFIX.items()}


def _trigger_name(table: str, suffix: str) -> str:
    name = f"gearsync_{table}_{suffix}"
    if len(name) > MAX_IDENT_CHARS:
        room = MAX_IDENT_CHARS - len("gearsync_") - len("_") - 8 - len("_") - len(suffix)
        name = f"gearsync_{table[:room]}_{_short_hash(table)}_{suffix}"
    return name


def _q(database: str, name: str) -> str:
    return f"{quote_ident(database)}.{quote_ident(name)}"


# -- payload -------------------------------------------------------------------------------------

def _member(col: Column, ref: str) -> str:
    """One `value AS key` argument of gman_json_object."""
    value = trigger_sql(col, ref)
    if col.name.startswith(_RAW_MARKER):
        # The UDF would strip "json_" from the key and insert the value raw; give it the marker
        # explicitly plus a value that is already JSON text (a scalar: [v] minus the brackets).
        arr = f"gman_json_array({value})"
        return f"SUBSTRING({arr}, 2, LENGTH({arr}) - 2) AS {quote_ident(_RAW_MARKER + col.name)}"
    return f"{value} AS {quote_ident(col.name)}"


def _object(columns: Sequence[Column], ref: str) -> str:
    return "gman_json_object(" + ", ".join(_member(c, ref) for c in columns) + ")"


def payload_sql(schema: TableSchema, op: str, ref: str, graph: FKGraph | None = None, *, cascade: bool = True) -> str:
    """The CONCAT expression building one v1 change of `op` from the `ref` (NEW/OLD) row.

    With the database's FK `graph`: a child table's rows carry "refs" (a delete: the OLD row's; the
    applier drops the row from its fk index, and follows a cascade that moved it), and with
    `cascade` a parent's update / delete carries "cascade" when a referenced column changed / a
    delete rule cascades (sync.events). The delete of the OLD key before a key-changing update passes cascade=False."""
    if op not in ("insert", "update", "delete", "cascade"):
        raise ValueError(f"op: {op!r}; expected insert, update, delete or cascade")
    if op == "cascade" and graph is None:
        raise ValueError("op cascade: expected the FK graph")
    if ref not in ("NEW", "OLD"):
        raise ValueError(f"ref: {ref!r}; expected NEW or OLD")
    table_json = orjson.dumps(schema.name).decode("utf-8")
    head = '{"v":1,"table":' + table_json + ',"op":"' + op + '"'
    if op == "cascade":
        parts = [quote_string(head)]
    else:
        parts = [quote_string(head + ',"pk":'), _object(schema.key_columns, ref)]
    if op in ("insert", "update"):
        parts += [quote_string(',"row":'), _object(schema.columns, ref)]
    extra: list[str] = []
    if graph is not None:
        extra += _refs_sql(schema, graph, op, ref)
        if cascade and op != "insert":
            # op cascade: the cascade-only triggers of a parent that is not synced (NEW: update)
            extra += _cascade_sql(schema, graph, deleting=op == "delete" or (op == "cascade" and ref == "OLD"))
    if extra:
        parts += [quote_string(',"version":'), VERSION_SQL, quote_string(',"source":"trigger"'), *extra,
                  quote_string("}")]
    else:
        parts += [quote_string(',"version":'), VERSION_SQL, quote_string(',"source":"trigger"}')]
    change = "CONCAT(" + ", ".join(parts) + ")"
    if op in ("delete", "cascade"):
        return change
    fallback = too_large_sql(schema, head + ',"pk":', ref)
    return f"IFNULL({change}, {fallback})"


def too_large_sql(schema: TableSchema, head: str, ref: str) -> str:
    """The change sent instead when gman_json_object returned NULL (the row's JSON is over the UDF's
    max_payload): its key and an "error" that makes the worker dead-letter it with the reason, so
    the application's write never fails on a NULL payload."""
    size = " + ".join(f"IFNULL(LENGTH({ref}.{quote_ident(c.name)}), 0)" for c in schema.columns)
    error = ("the row's JSON is over the UDF's max_payload (option of gman_servers_set / gearsync_udf.conf, "
             "default 268435456, at most 1073741824 bytes); row data: ")
    return ("CONCAT(" + ", ".join([quote_string(head), _object(schema.key_columns, ref),
                                   quote_string(',"version":'), VERSION_SQL,
                                   quote_string(',"source":"trigger","error":"' + error), f"({size})",
                                   quote_string(' bytes"}')]) + ")")


def _refs_sql(schema: TableSchema, graph: FKGraph, op: str, ref: str) -> list[str]:
    """The "refs" member of a child table's payload: one "fk":[values] per cascading FK whose
    columns are all non-NULL (CONCAT_WS skips the NULL ones)."""
    fks = graph.child_fks(schema.name)
    if not fks or op == "cascade":
        return []
    items = []
    for fk in fks:
        values = [f"{ref}.{quote_ident(c)}" for c in fk.columns]
        array = "gman_json_array(" + ", ".join(trigger_sql(schema.column(c), ref) for c in fk.columns) + ")"
        name = quote_string(orjson.dumps(fk.name).decode("utf-8") + ":")
        items.append(f"IF({' OR '.join(v + ' IS NULL' for v in values)}, NULL, CONCAT({name}, {array}))")
    return [quote_string(',"refs":{'), "CONCAT_WS(',', " + ", ".join(items) + ")", quote_string("}")]


def _cascade_sql(schema: TableSchema, graph: FKGraph, *, deleting: bool) -> list[str]:
    """The "cascade" member of a parent table's update (only when a referenced column changed)
    or delete payload."""
    fks = graph.parent_fks(schema.name)
    if not fks or (deleting and all(f.on_delete == "none" for f in fks)):
        return []
    if not deleting and all(f.on_update == "none" for f in fks):
        return []
    cols = [schema.column(c) for c in graph.referenced_columns(schema.name)]
    tail = ',"fks":' + orjson.dumps([r.to_json() for r in graph.rules(schema.name)]).decode("utf-8") + "}"
    old = [quote_string(',"cascade":{"old":'), _object(cols, "OLD")]
    if deleting:
        return old + [quote_string(tail)]
    member = "CONCAT(" + ", ".join(old + [quote_string(',"new":'), _object(cols, "NEW"), quote_string(tail)]) + ")"
    return [f"IF({_all_same(cols)}, '', {member})"]


def _same(col: Column) -> str:
    """NEW and OLD value of `col` are the same (NULL-safe; bytes for text/binary kinds)."""
    new, old = f"NEW.{quote_ident(col.name)}", f"OLD.{quote_ident(col.name)}"
    if col.kind in ("text", "binary"):
        return f"CAST({new} AS BINARY) <=> CAST({old} AS BINARY)"
    return f"{new} <=> {old}"


def _all_same(columns: Sequence[Column]) -> str:
    return " AND ".join(_same(c) for c in columns)


def not_queued_message(table: str) -> str:
    """The SIGNAL message of fail mode, at most 128 characters. SIGNAL takes only a plain
    literal, so characters that would need escaping (backslash, control) are shown as '?'."""
    shown = "".join("?" if ch == "\\" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in table)
    template = "gearsync: change to {} not queued: gearmand unreachable"
    room = MAX_MESSAGE_CHARS - len(template) + 2
    if len(shown) > room:
        shown = shown[: room - 3] + "..."
    return template.format(shown)


# -- triggers -----------------------------------------------------------------------------------

def _enqueue(schema: TableSchema, options: TriggerOptions, payload: str, indent: str) -> list[str]:
    """Statements that enqueue one change built by `payload`."""
    fn = quote_string(options.function)
    spool = _q(schema.database, SPOOL_TABLE)
    insert = f"INSERT INTO {spool} (`function`, `payload`) VALUES ({fn}, {{}});"
    if options.mode == "outbox":
        return [indent + insert.format(payload)]
    lines = [
        f"{indent}SET {_PAYLOAD_VAR} = {payload};",
        f"{indent}IF gman_do_background({fn}, {_PAYLOAD_VAR}) IS NULL THEN",
    ]
    if options.on_enqueue_failure == "spool":
        lines.append(f"{indent}  " + insert.format(_PAYLOAD_VAR))
    elif options.on_enqueue_failure == "fail":
        lines.append(f"{indent}  SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = "
                     f"{quote_string(not_queued_message(schema.name))};")
    else:
        lines.append(f"{indent}  SET @gearsync_not_queued = IFNULL(@gearsync_not_queued, 0) + 1;")
    lines.append(f"{indent}END IF;")
    return lines


def create_trigger_sql(
    schema: TableSchema, event: str, options: TriggerOptions, follows: str | None = None,
    graph: FKGraph | None = None,
) -> str:
    """CREATE OR REPLACE TRIGGER for one event (INSERT/UPDATE/DELETE) of the table; `follows`
    names the trigger it must run after (the table's last other AFTER trigger of that event)."""
    if event not in EVENTS:
        raise ValueError(f"event: {event!r}; expected one of {', '.join(EVENTS)}")
    name = trigger_names(schema.name)[event]
    udf = options.mode == "udf"
    body: list[str] = []
    if udf:
        body.append(f"  DECLARE {_PAYLOAD_VAR} LONGBLOB;")
    if event == "INSERT":
        body += _enqueue(schema, options, payload_sql(schema, "insert", "NEW", graph), "  ")
    elif event == "DELETE":
        body += _enqueue(schema, options, payload_sql(schema, "delete", "OLD", graph), "  ")
    else:
        body.append(f"  IF NOT ({_all_same(schema.columns)}) THEN")
        body.append(f"    IF NOT ({_all_same(schema.key_columns)}) THEN")
        body += _enqueue(schema, options, payload_sql(schema, "delete", "OLD", graph, cascade=False), "      ")
        body.append("    END IF;")
        body += _enqueue(schema, options, payload_sql(schema, "update", "NEW", graph), "    ")
        body.append("  END IF;")
    order = f"\nFOLLOWS {quote_ident(follows)}" if follows else ""
    return (
        f"CREATE OR REPLACE TRIGGER {_q(schema.database, name)}\n"
        f"AFTER {event} ON {_q(schema.database, schema.name)} FOR EACH ROW{order}\n"
        "BEGIN\n" + "\n".join(body) + "\nEND"
    )


def _check_table(schema: TableSchema) -> None:
    if schema.name == SPOOL_TABLE:
        raise ConfigError(f"--table: {SPOOL_TABLE!r} is gearsync's own spool; expected a table of yours")
    if not schema.key:
        raise ConfigError(f"table {schema.database}.{schema.name!r} has no key; expected a primary key")


def install_statements(
    schema: TableSchema, options: TriggerOptions, follows: dict[str, str | None] | None = None,
    graph: FKGraph | None = None,
) -> list[str]:
    """Everything `sync-triggers install` runs, in order: the spool table, then the three
    triggers (CREATE OR REPLACE: re-runnable, and the table is never without a trigger). With
    the FK `graph`, the table's own cascade-only triggers go (its triggers now carry cascades)."""
    _check_table(schema)
    follows = follows or {}
    drop = [f"DROP TRIGGER IF EXISTS {_q(schema.database, n)}" for n in cascade_trigger_names(schema.name).values()]
    return _stamped(schema, options, [spool_ddl(schema.database)] + [
        create_trigger_sql(schema, event, options, follows.get(event), graph) for event in EVENTS
    ]) + (drop if graph else [])


# -- install marker ------------------------------------------------------------------------------
# Every trigger `install` creates carries one comment line right after BEGIN with the options it
# was installed with (JSON, one line), so `sync-triggers check|alter` and the relay's watcher can
# regenerate exactly what `install` would create now. MariaDB keeps `--` comments of a trigger
# body (information_schema.TRIGGERS.ACTION_STATEMENT); the mariadb client drops them unless run
# with --comments.

MARKER_PREFIX = "-- gearsync-install "
_MARKER_LINE = re.compile(r"^[ \t]*" + re.escape(MARKER_PREFIX) + r"(\{.*\})[ \t]*$", re.MULTILINE)
_BEGIN = re.compile(r"\bFOR EACH ROW\b[^\n]*(?:\n(?:FOLLOWS|PRECEDES) [^\n]*)?\nBEGIN\n")


def install_marker(table: str, options: TriggerOptions) -> str:
    """The marker comment line for the triggers of `table` installed with `options`."""
    data = {"table": table, "columns": list(options.columns) if options.columns is not None else None,
            "function": options.function, "mode": options.mode, "on_enqueue_failure": options.on_enqueue_failure}
    return MARKER_PREFIX + orjson.dumps(data).decode("utf-8")


def read_marker(body: str) -> tuple[str, TriggerOptions] | None:
    """(table, options) from a trigger body's marker line; None when it has none (or a bad one)."""
    found = _MARKER_LINE.search(body)
    if found is None:
        return None
    try:
        data = orjson.loads(found.group(1))
        columns = data.get("columns")
        options = TriggerOptions(function=data["function"], mode=data["mode"],
                                 on_enqueue_failure=data["on_enqueue_failure"],
                                 columns=tuple(columns) if columns is not None else None)
        return str(data["table"]), options
    except (orjson.JSONDecodeError, KeyError, TypeError, ConfigError):
        return None


def _stamped(schema: TableSchema, options: TriggerOptions, statements: list[str]) -> list[str]:
    """`statements` with the install marker after BEGIN of every CREATE TRIGGER among them."""
    marker = install_marker(schema.name, options)
    out = []
    for stmt in statements:
        m = _BEGIN.search(stmt) if stmt.startswith("CREATE OR REPLACE TRIGGER") else None
        out.append(stmt if m is None else stmt[: m.end()] + "  " + marker + "\n" + stmt[m.end():])
    return out


def cascade_trigger_names(parent: str) -> dict[str, str]:
    """event -> name of the cascade-only triggers of a parent table that is not synced:
    gearsync_<table>_cau / _cad (cut and hashed like trigger_names)."""
    return {event: _trigger_name(parent, suffix) for event, suffix in (("UPDATE", "cau"), ("DELETE", "cad"))}


def cascade_trigger_statements(parent: TableSchema, graph: FKGraph, options: TriggerOptions) -> list[str]:
    """CREATE OR REPLACE the cascade-only triggers of `parent` (not synced itself): its UPDATE of a
    referenced column and its DELETE send op "cascade" changes to `options.function` (a child's)."""
    fks = graph.parent_fks(parent.name)
    cols = [parent.column(c) for c in graph.referenced_columns(parent.name)]
    names = cascade_trigger_names(parent.name)
    out = []
    for event, ref, wanted in (("UPDATE", "NEW", any(f.on_update != "none" for f in fks)),
                               ("DELETE", "OLD", any(f.on_delete != "none" for f in fks))):
        if not wanted:
            out.append(f"DROP TRIGGER IF EXISTS {_q(parent.database, names[event])}")
            continue
        indent = "    " if event == "UPDATE" else "  "
        body = [f"  DECLARE {_PAYLOAD_VAR} LONGBLOB;"] if options.mode == "udf" else []
        if event == "UPDATE":
            body.append(f"  IF NOT ({_all_same(cols)}) THEN")
        body += _enqueue(parent, options, payload_sql(parent, "cascade", ref, graph), indent)
        if event == "UPDATE":
            body.append("  END IF;")
        out.append(
            f"CREATE OR REPLACE TRIGGER {_q(parent.database, names[event])}\n"
            f"AFTER {event} ON {_q(parent.database, parent.name)} FOR EACH ROW\n"
            "BEGIN\n" + "\n".join(body) + "\nEND"
        )
    return out


def uninstall_statements(schema_or_db: TableSchema | tuple[str, str]) -> list[str]:
    """DROP TRIGGER IF EXISTS for the three triggers (the spool table stays: it may hold changes
    the relay has not sent yet)."""
    if isinstance(schema_or_db, TableSchema):
        database, table = schema_or_db.database, schema_or_db.name
    else:
        database, table = schema_or_db
    return [f"DROP TRIGGER IF EXISTS {_q(database, n)}" for n in trigger_names(table).values()]


def _delimiter(text: str) -> str:
    for cand in ("$$", "//", ";;", "$gearsync$"):
        if cand not in text:
            return cand
    n = 0
    while f"$gearsync{n}$" in text:
        n += 1
    return f"$gearsync{n}$"


def _header(schema: TableSchema, what: str) -> str:
    # `--` comments end at the line end; names go in only as JSON (one line, no newline).
    table = orjson.dumps(f"{schema.database}.{schema.name}").decode()
    return f"-- {what} for table {table}, generated by sync-triggers. Re-runnable.\nSET NAMES utf8mb4;\n"


def install_script(schema: TableSchema, options: TriggerOptions, follows: dict[str, str | None] | None = None) -> str:
    """The install SQL as a file for the mariadb/mysql client (DELIMITER around trigger bodies)."""
    stmts = install_statements(schema, options, follows)
    delim = _delimiter("\n".join(stmts))
    mode = options.mode if options.mode == "outbox" else f"udf, on enqueue failure: {options.on_enqueue_failure}"
    out = [_header(schema, f"gearsync capture triggers ({mode}; function {orjson.dumps(options.function).decode()})")]
    out.append("-- Apply with `mariadb --comments` (or `mysql --comments`): the marker comment in each trigger\n"
               "-- is what `sync-triggers check` and sync-relay's watcher read.\n")
    out.append(stmts[0] + ";\n")
    out.append(f"DELIMITER {delim}\n")
    for stmt in stmts[1:]:
        out.append(stmt + delim + "\n")
    out.append("DELIMITER ;\n")
    return "\n".join(out)


def uninstall_script(schema: TableSchema) -> str:
    stmts = uninstall_statements(schema)
    return _header(schema, "Drop the gearsync capture triggers") + "".join(s + ";\n" for s in stmts)


_SAFE_FILE = re.compile(r"[^A-Za-z0-9_.-]")


def file_stem(table: str) -> str:
    """A file name for the table's SQL: the name itself when it is plain, else a cleaned name
    plus a hash (never a path separator, never hidden)."""
    clean = _SAFE_FILE.sub("_", table).lstrip(".") or "table"
    return clean if clean == table else f"{clean[:40]}-{_short_hash(table)}"
