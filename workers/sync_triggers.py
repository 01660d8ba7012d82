"""`sync-triggers`: install, check, alter around, show or drop the gearsync capture triggers of tables."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sync.capture.spool import SPOOL_TABLE
from sync.capture.trigger_admin import (
    alter_table,
    check_tables,
    eligible_tables,
    execute_all,
    install_table,
    installed_triggers,
    last_other_triggers,
    marked_tables,
)
from sync.capture.triggers import (
    FAILURE_POLICIES,
    MODES,
    TriggerOptions,
    cascade_trigger_names,
    cascade_trigger_statements,
    file_stem,
    install_script,
    trigger_names,
    uninstall_script,
    uninstall_statements,
)
from sync.cli import (
    ExitCode,
    add_config_option,
    add_logging_options,
    add_mysql_options,
    add_table_options,
    make_parser,
    run,
    table_names,
)
from sync.errors import ConfigError, SourceError
from sync.rows.fkgraph import FKGraph, load_foreign_keys
from sync.rows.schema import TableSchema, current_database, load_table, quote_ident
from sync.settings import ConfigFile, config_for, resolve_logging, resolve_mysql

PROG = "sync-triggers"

DESCRIPTION = """\
Capture the changes of MySQL/MariaDB tables with triggers that queue them in gearmand.

install    creates the spool table gearsync_spool (if missing) and three AFTER triggers
           gearsync_<table>_ai/_au/_ad (CREATE OR REPLACE: re-run it after ALTER TABLE or to
           change options; the table is never left without capture). Each change is one job
           for the function gearsync.<table> that `sync-worker --table <table>` applies to Redis:
           {"v":1,"table":…,"op":"insert|update|delete","pk":{…},"row":{…},"version":…}.
           An UPDATE that changes no synced column sends nothing; one that changes the key
           deletes the old key and writes the new one. Versions are UUID_SHORT() values.
           With several tables (--table a,b or --all-tables: every table with a primary key or
           NOT NULL unique key; the others are listed with the reason) one line per table and a
           summary. Each trigger records the options it was installed with in a comment.
uninstall  drops the three triggers (the spool table stays: it may hold unsent changes).
check      exit 0 when the installed triggers are exactly what install would create now (same
           options, the table's current columns); 1 naming each stale or missing trigger (column
           added or dropped, trigger dropped, table swapped by RENAME). --all-tables: every
           table that has gearsync triggers.
alter      alter --table T "SPEC" runs ALTER TABLE T SPEC without a failed write or a missed change:
           under LOCK TABLES T WRITE (the table's readers and writers wait, none fails) it
           installs triggers for the columns that survive, runs the ALTER, installs triggers
           for the new shape. Use it for every DROP / CHANGE / RENAME COLUMN of a synced column:
           a plain ALTER makes every write to T fail until the triggers are re-installed.
           MySQL rejects SPEC: the triggers are as they were, one line, exit 2.
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
environment (each also a key of --config, whose [tables.NAME] sections can hold columns, function,
mode and on_enqueue_failure per table; docs/configuration.md):
  GEARSYNC_MYSQL_URL or GEARSYNC_MYSQL_HOST, _PORT, _USER, _DATABASE, _SOCKET; GEARSYNC_MYSQL_PASSWORD
  (never on the command line). Without --table: every [tables.NAME] of --config.

examples:
  {PROG} install --table data
  {PROG} install --table orders --columns id,status,total --mode outbox
  {PROG} show --table data --output sql/         # files for review, applied by hand
  {PROG} uninstall --table data
  {PROG} install --all-tables
  {PROG} check --all-tables                     # 1 when a trigger is stale or missing
  {PROG} alter --table data "DROP COLUMN w"     # see docs/schema-changes.md

exit codes: 0 done (check: all up to date), 1 check: stale or missing triggers, 2 bad option,
config file or table (unknown table or column, no usable key; alter: MySQL rejected the
specification), 3 MySQL unreachable or the SQL failed.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("command", choices=("install", "uninstall", "show", "check", "alter"), help="what to do")
    p.add_argument("spec", nargs="?", metavar="ALTER_SPEC",
                   help='alter: the ALTER TABLE specification, e.g. "DROP COLUMN w" or "ADD COLUMN z INT"')
    add_table_options(p, table_help='the table(s): repeat or separate with commas (NAME or DB.NAME is not split: use --database)',
                      all_help='install/uninstall: every table with a primary key or NOT NULL unique key; '
                               'check: every table that has gearsync triggers',
                      columns_help='sync only these columns (the key columns are always included; one table only)')
    p.add_argument("--function", metavar="NAME", help="Gearman function of the jobs (default gearsync.<table>; one table only)")
    p.add_argument("--on-enqueue-failure", choices=FAILURE_POLICIES, default=None,
                   help="udf mode: what to do when gearmand did not take the change (default spool)")
    p.add_argument("--mode", choices=MODES, help="udf: send from the trigger; outbox: spool only (default udf)")
    add_config_option(p)
    add_mysql_options(p)
    p.add_argument("--output", metavar="DIR", help="show: write the SQL files into DIR instead of printing")
    add_logging_options(p)
    return p


def _columns(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",")]
    if not any(names) or any(not n for n in names):
        raise ConfigError(f"--columns: {text!r} has an empty column name; expected a,b,c")
    return names


def options_from_args(args: Any, table: str, cfg: ConfigFile | None = None) -> TriggerOptions:
    """The trigger options of `table`: the options given, else its [tables.NAME] values, else the defaults."""
    section = cfg.tables.get(table, {}) if cfg is not None else {}
    mode = args.mode or section.get("mode", "udf")
    policy = args.on_enqueue_failure or section.get("on_enqueue_failure")
    if mode == "outbox" and policy is not None:
        raise ConfigError(
            f"--on-enqueue-failure {policy}: outbox mode never calls gearmand from the "
            "trigger; expected it only with --mode udf"
        )
    columns = _columns(args.columns) or section.get("columns")
    function = args.function if args.function is not None else section.get("function")
    return TriggerOptions.for_table(table, function, mode=mode,
                                    on_enqueue_failure=policy or "spool",
                                    columns=tuple(columns) if columns is not None else None)


def _tables(args: Any, cfg: ConfigFile | None = None) -> list[str] | None:
    """The --table names (checked; without --table, the [tables.NAME] of the config file), or None
    for --all-tables."""
    names = table_names(args.table)
    if args.all_tables:
        if names:
            raise ConfigError("--all-tables: given together with --table; expected one of them")
        if args.command in ("show", "alter"):
            raise ConfigError(f"--all-tables: not for {args.command}; expected --table NAME")
        return None
    if not names and cfg is not None:
        names = list(cfg.tables)
    if not names:
        raise ConfigError("--table: none given; expected --table NAME[,NAME…] or --all-tables")
    if len(names) > 1 and (args.columns or args.function or args.command in ("show", "alter")):
        what = "--columns" if args.columns else "--function" if args.function else args.command
        raise ConfigError(f"{what}: for one table only; expected a single --table with it")
    return names


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


def _schema(conn: Any, database: str, table: str, options: TriggerOptions) -> TableSchema:
    schema = load_table(conn, database, table).select(list(options.columns) if options.columns else None)
    if schema.name == SPOOL_TABLE:
        raise ConfigError(f"--table: {SPOOL_TABLE!r} is gearsync's own spool; expected a table of yours")
    return schema


def _show(conn: Any, args: Any, database: str, table: str, cfg: ConfigFile | None) -> int:
    options = options_from_args(args, table, cfg)
    schema = _schema(conn, database, table, options)
    script = install_script(schema, options, last_other_triggers(conn, schema))
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


def _install(conn: Any, args: Any, database: str, tables: list[str] | None, display: str,
             cfg: ConfigFile | None) -> int:
    skipped: list[tuple[str, str]] = []
    if tables is None:
        tables, skipped = eligible_tables(conn, database)
    # every table checked (it exists, has a usable key, the columns) before anything is installed
    checked = [(table, options, _schema(conn, database, table, options))
               for table, options in ((t, options_from_args(args, t, cfg)) for t in tables)]
    _check_udfs(conn)  # both modes build the payload with gman_json_object
    for table, options, schema in checked:
        names = install_table(conn, schema, options, display)
        mode = "outbox" if options.mode == "outbox" else f"udf, on enqueue failure: {options.on_enqueue_failure}"
        print(f"installed {', '.join(names)} on {database}.{table} "
              f"({len(schema.columns)} columns, key {', '.join(schema.key)}; function {options.function}; {mode})")
        graph = load_foreign_keys(conn, database)
        for parent in _unsynced_parents(conn, database, table, graph):
            parent_schema = load_table(conn, database, parent)
            execute_all(conn, cascade_trigger_statements(parent_schema, graph, options), display)
            print(f"also installed on parent {database}.{parent}: cascades start there "
                  f"({', '.join(cascade_trigger_names(parent).values())}, function {options.function}; "
                  "serve FK-related tables from one sync-worker)")
    for table, why in skipped:
        print(f"skipped {database}.{table}: {why}")
    if args.all_tables or len(tables) > 1:
        print(f"installed {len(tables)}, skipped {len(skipped)}")
    return int(ExitCode.OK)


def _uninstall(conn: Any, args: Any, database: str, tables: list[str] | None, display: str) -> int:
    if tables is None:
        tables = sorted(set(eligible_tables(conn, database)[0]) | set(marked_tables(installed_triggers(conn, database))))
    for table in tables:
        # Works also when the table is gone or was altered beyond what we support.
        execute_all(conn, uninstall_statements((database, table)), display)
        graph = load_foreign_keys(conn, database)
        for parent in sorted({f.parent for f in graph.child_fks(table) if f.parent != table}):
            if _captured_children(conn, database, parent, graph, table):
                continue  # another captured child still needs the parent's cascade triggers
            execute_all(conn, [f"DROP TRIGGER IF EXISTS {quote_ident(database)}.{quote_ident(n)}"
                               for n in cascade_trigger_names(parent).values()], display)
        print(f"dropped the gearsync triggers of {database}.{table}")
    print(f"({SPOOL_TABLE} kept: run sync-relay until it is empty before dropping it)")
    if args.all_tables or len(tables) > 1:
        print(f"uninstalled {len(tables)}")
    return int(ExitCode.OK)


def _check(conn: Any, database: str, tables: list[str] | None) -> int:
    results = check_tables(conn, database, tables)
    for r in results:
        print(f"{database}.{r.table}: {r.summary()}")
    stale = sum(not r.ok for r in results)
    print(f"checked {len(results)}, ok {len(results) - stale}, stale {stale}")
    return int(ExitCode.OK if stale == 0 else ExitCode.DIFFERENCES)


def _alter(conn: Any, args: Any, database: str, table: str, display: str) -> int:
    if args.spec is None:
        raise ConfigError('alter: no ALTER specification given; expected e.g. alter --table T "DROP COLUMN w"')
    result = alter_table(conn, database, table, args.spec, display)
    before = {c.name for c in result.before.columns}
    after = {c.name for c in result.after.columns}
    change = ", ".join([f"+{c}" for c in sorted(after - before)] + [f"-{c}" for c in sorted(before - after)])
    print(f"altered {database}.{table}; triggers {', '.join(result.triggers)} now capture "
          f"{len(result.after.columns)} columns" + (f" ({change})" if change else ""))
    if change:
        print(f"rows last written before the ALTER keep the old columns in Redis: run sync-verify --table {table} --repair")
    return int(ExitCode.OK)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_intermixed_args(argv)

    def go() -> int:
        cfg = config_for(args)
        resolve_logging(args, None, cfg).apply()
        tables = _tables(args, cfg)
        if args.spec is not None and args.command != "alter":
            raise ConfigError(f"{args.spec!r}: an ALTER specification is only for alter; expected no extra argument")
        if tables is not None and args.command in ("install", "show"):
            for t in tables:
                options_from_args(args, t, cfg)  # bad options before connecting
        settings = resolve_mysql(args, None, cfg)
        conn = settings.connect(database=args.database) if args.database else settings.connect()
        try:
            database = args.database or current_database(conn)
            if args.command == "uninstall":
                return _uninstall(conn, args, database, tables, settings.display)
            if args.command == "check":
                return _check(conn, database, tables)
            if args.command == "install":
                return _install(conn, args, database, tables, settings.display, cfg)
            assert tables is not None
            if args.command == "alter":
                return _alter(conn, args, database, tables[0], settings.display)
            return _show(conn, args, database, tables[0], cfg)
        finally:
            conn.close()

    run(PROG, go, argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
