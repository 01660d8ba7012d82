"""`sync-triggers`: install, show or drop the gearsync capture triggers of a table."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sync.capture.spool import SPOOL_TABLE
from sync.capture.triggers import (
    EVENTS,
    FAILURE_POLICIES,
    MODES,
    TriggerOptions,
    cascade_trigger_names,
    cascade_trigger_statements,
    file_stem,
    install_script,
    install_statements,
    trigger_names,
    uninstall_script,
    uninstall_statements,
)
from sync.cli import ExitCode, add_mysql_options, make_parser, run
from sync.errors import ConfigError, SourceError
from sync.rows.fkgraph import FKGraph, load_foreign_keys
from sync.rows.schema import TableSchema, current_database, load_table, quote_ident
from sync.settings import resolve_mysql
from sync.tables import check_table_name

PROG = "sync-triggers"

DESCRIPTION = """\
Capture the changes of a MySQL/MariaDB table with triggers that queue them in gearmand.

install    creates the spool table gearsync_spool (if missing) and three AFTER triggers
           gearsync_<table>_ai/_au/_ad (CREATE OR REPLACE: re-run it after ALTER TABLE or to
           change options; the table is never left without capture). Each change is one job
           for the function gearsync.<table> that `sync-worker --table <table>` applies to Redis:
           {"v":1,"table":…,"op":"insert|update|delete","pk":{…},"row":{…},"version":…}.
           An UPDATE that changes no synced column sends nothing; one that changes the key
           deletes the old key and writes the new one. Versions are UUID_SHORT() values.
uninstall  drops the three triggers (the spool table stays: it may hold unsent changes).
show       prints the install SQL; with --output DIR writes DIR/<table>.triggers.sql and
           DIR/<table>.uninstall.sql for a DBA to review and apply with the mysql client.

Modes:
  --mode udf (default)  the trigger calls gman_do_background() (the gearsync UDF library must be
                        installed: python -m sync.capture.udf_install install). When that returns NULL
                        (gearmand down or slow: ~100 ms timeout, then fast failures):
                          --on-enqueue-failure spool (default)  keep the change in gearsync_spool,
                                 in the same transaction; run sync-relay to send it later
                          --on-enqueue-failure fail    the write fails: SQLSTATE 45000
                          --on-enqueue-failure ignore  the change is dropped (counted in the
                                 session variable @gearsync_not_queued)
                        udf mode queues before COMMIT: a rolled-back transaction's changes are
                        still sent (and may briefly reach Redis). Use outbox if that matters.
  --mode outbox         the trigger only inserts into gearsync_spool; sync-relay sends the rows
                        after COMMIT. Transactional (nothing of a rollback is ever sent), at the
                        price of one extra row write per change and the relay's poll latency.
"""

EPILOG = f"""\
environment:
  MYSQL_URL or MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_DATABASE, MYSQL_SOCKET; MYSQL_PASSWORD
  (never on the command line)

examples:
  {PROG} install --table data
  {PROG} install --table orders --columns id,status,total --mode outbox
  {PROG} show --table data --output sql/         # files for review, applied by hand
  {PROG} uninstall --table data

exit codes: 0 done, 2 bad option / table (unknown table or column, no usable key), 3 MySQL
unreachable or the SQL failed.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("command", choices=("install", "uninstall", "show"), help="what to do")
    p.add_argument("--table", required=True, metavar="NAME", help="the table (NAME or DB.NAME is not split: use --database)")
    p.add_argument("--database", metavar="DB", help="its database (default: from --mysql-url / MYSQL_DATABASE)")
    p.add_argument("--columns", metavar="A,B,…", help="sync only these columns (the key columns are always included)")
    p.add_argument("--function", metavar="NAME", help="Gearman function of the jobs (default gearsync.<table>)")
    p.add_argument("--on-enqueue-failure", choices=FAILURE_POLICIES, default=None,
                   help="udf mode: what to do when gearmand did not take the change (default spool)")
    p.add_argument("--mode", choices=MODES, default="udf", help="udf: send from the trigger; outbox: spool only (default udf)")
    add_mysql_options(p)
    p.add_argument("--output", metavar="DIR", help="show: write the SQL files into DIR instead of printing")
    return p


def _columns(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",")]
    if not any(names) or any(not n for n in names):
        raise ConfigError(f"--columns: {text!r} has an empty column name; expected a,b,c")
    return names


def options_from_args(args: Any, table: str) -> TriggerOptions:
    if args.mode == "outbox" and args.on_enqueue_failure is not None:
        raise ConfigError(
            f"--on-enqueue-failure {args.on_enqueue_failure}: outbox mode never calls gearmand from the "
            "trigger; expected it only with --mode udf"
        )
    return TriggerOptions.for_table(table, args.function, mode=args.mode,
                                    on_enqueue_failure=args.on_enqueue_failure or "spool")


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


def _unsynced_parents(conn: Any, database: str, table: str, graph: FKGraph) -> list[str]:
    """The parents of `table`'s cascading FKs that have no gearsync capture triggers: a cascade
    must start there (cascade-only triggers)."""
    parents = sorted({f.parent for f in graph.child_fks(table) if f.parent != table})
    return [p for p in parents if not _captured(conn, database, p)]


def _captured_children(conn: Any, database: str, parent: str, graph: FKGraph, but: str) -> list[str]:
    """The children of `parent`'s cascading FKs, other than `but`, that have capture triggers."""
    children = sorted({f.child for f in graph.parent_fks(parent)} - {but, parent})
    return [c for c in children if _captured(conn, database, c)]


def _captured(conn: Any, database: str, table: str) -> bool:
    """Whether `table` has gearsync capture triggers."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s AND TRIGGER_NAME=%s",
                    (database, trigger_names(table)["UPDATE"]))
        return cur.fetchone() is not None


def _check_udfs(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM mysql.func WHERE name IN ('gman_do_background', 'gman_json_object', 'gman_json_array')")
        have = {r[0] if isinstance(r[0], str) else r[0].decode() for r in cur.fetchall()}
    missing = {"gman_do_background", "gman_json_object", "gman_json_array"} - have
    if missing:
        raise SourceError(
            f"the gearsync UDFs {', '.join(sorted(missing))} are not installed on this server; "
            "expected them (run: python -m sync.capture.udf_install install)"
        )


def _execute(conn: Any, statements: Sequence[str], display: str) -> None:
    import pymysql

    with conn.cursor() as cur:
        for stmt in statements:
            try:
                cur.execute(stmt)
            except pymysql.MySQLError as exc:
                first = stmt.splitlines()[0]
                raise SourceError(f"MySQL {display}: {first[:120]!r} failed: {exc.args[-1] if exc.args else exc}") from None


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> int:
        table = check_table_name(args.table)
        columns = _columns(args.columns)
        options = options_from_args(args, table)
        settings = resolve_mysql(args)
        conn = settings.connect(database=args.database) if args.database else settings.connect()
        try:
            database = args.database or current_database(conn)
            if args.command == "uninstall":
                # Works also when the table is gone or was altered beyond what we support.
                _execute(conn, uninstall_statements((database, table)), settings.display)
                graph = load_foreign_keys(conn, database)
                for parent in {f.parent for f in graph.child_fks(table) if f.parent != table}:
                    if _captured_children(conn, database, parent, graph, table):
                        continue  # another captured child still needs the parent's cascade triggers
                    _execute(conn, [f"DROP TRIGGER IF EXISTS {quote_ident(database)}.{quote_ident(n)}"
                                    for n in cascade_trigger_names(parent).values()], settings.display)
                print(f"dropped the gearsync triggers of {database}.{table} "
                      f"({SPOOL_TABLE} kept: run sync-relay until it is empty before dropping it)")
                return int(ExitCode.OK)
            schema = load_table(conn, database, table).select(columns)
            if schema.name == SPOOL_TABLE:
                raise ConfigError(f"--table: {SPOOL_TABLE!r} is gearsync's own spool; expected a table of yours")
            follows = last_other_triggers(conn, schema)
            if args.command == "show":
                script = install_script(schema, options, follows)
                if args.output:
                    out = Path(args.output)
                    try:
                        out.mkdir(parents=True, exist_ok=True)
                        stem = file_stem(table)
                        (out / f"{stem}.triggers.sql").write_text(script, encoding="utf-8")
                        (out / f"{stem}.uninstall.sql").write_text(uninstall_script(schema), encoding="utf-8")
                    except OSError as exc:
                        raise ConfigError(f"--output: cannot write into {str(out)!r}: {exc.strerror}") from None
                    print(f"wrote {out / (stem + '.triggers.sql')} and {out / (stem + '.uninstall.sql')}")
                else:
                    sys.stdout.write(script)
                return int(ExitCode.OK)
            _check_udfs(conn)  # both modes build the payload with gman_json_object
            graph = load_foreign_keys(conn, database)
            _execute(conn, install_statements(schema, options, follows, graph), settings.display)
            mode = "outbox" if options.mode == "outbox" else f"udf, on enqueue failure: {options.on_enqueue_failure}"
            print(f"installed {', '.join(trigger_names(table).values())} on {database}.{table} "
                  f"({len(schema.columns)} columns, key {', '.join(schema.key)}; function {options.function}; {mode})")
            for parent in _unsynced_parents(conn, database, table, graph):
                parent_schema = load_table(conn, database, parent)
                _execute(conn, cascade_trigger_statements(parent_schema, graph, options), settings.display)
                print(f"also installed on parent {database}.{parent}: cascades start there "
                      f"({', '.join(cascade_trigger_names(parent).values())}, function {options.function}; "
                      "serve FK-related tables from one sync-worker)")
            return int(ExitCode.OK)
        finally:
            conn.close()

    run(PROG, go, argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
