"""`sync-binlog`: stream row changes from the MySQL/MariaDB binlog to Redis (or to gearmand)."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from sync.cli import (
    add_config_option,
    add_gearman_options,
    add_logging_options,
    add_metrics_options,
    add_mysql_options,
    add_redis_options,
    add_startup_options,
    make_parser,
    run,
    stop_on_signals,
    table_names,
)
from sync.errors import ConfigError
from sync.redis_client import DEFAULT_REDIS_URL
from sync.settings import (
    JOB_CHANGES,
    Resolver,
    config_for,
    resolve_gearman_servers,
    resolve_logging,
    resolve_metrics,
    resolve_mysql,
    resolve_redis,
)
from sync.startup import wait_for_servers

if TYPE_CHECKING:  # for annotations only; the commands import these inside the functions that use them
    from sync.capture.binlog.service import BinlogSettings

PROG = "sync-binlog"

DESCRIPTION = """\
Stream row changes of some tables from the server's binary log, as a replica would.

Reads Write/Update/Delete row events (binlog_format=ROW, binlog_row_image=FULL,
binlog_row_metadata=FULL) of the --table(s), turns each into the same change event the triggers
send (source "binlog", version from the commit position, so newer changes always win), and
  --sink redis    applies them to Redis directly (the sync-worker applier, version fencing), the
                  position saved in the same Redis script call as the batch it covers;
  --sink gearman  submits them to gearsync.<table> for sync-worker, the position saved once
                  gearmand accepted the jobs.
The position (GTID, or FILE:POS on MySQL without GTIDs) is kept in Redis under
gearsync:binlog:pos:{<name>}; a restart resumes from it. The server is checked first (log_bin,
ROW format, FULL image and metadata, REPLICATION SLAVE + BINLOG MONITOR/REPLICATION CLIENT, SELECT):
what is wrong is reported in one line, with what to change.
"""

EPILOG = f"""\
environment (each also a key of --config, which can hold the [binlog] options and the
[tables.NAME] sections; docs/configuration.md):
  GEARSYNC_MYSQL_URL / GEARSYNC_MYSQL_HOST, _PORT, _USER, _DATABASE; GEARSYNC_MYSQL_PASSWORD (never
  on the command line)
  GEARSYNC_REDIS_URL (default {DEFAULT_REDIS_URL}), GEARSYNC_REDIS_PASSWORD
  GEARSYNC_GEARMAN_SERVERS  host:port[,host:port…] for --sink gearman (default 127.0.0.1:4730)
  GEARSYNC_JOB_KEY          --sink gearman: key the jobs are signed with (environment only; docs/security.md)

--start (used instead of a saved position):
  current     the end of the binlog now (the default when nothing is saved)
  earliest    the oldest binlog still on the server
  GTID        MariaDB 0-1-100[,…], MySQL uuid:1-100[,…]
  FILE:POS    a transaction boundary, e.g. binlog.000042:1234

privileges (MariaDB >= 10.5 names; REPLICATION CLIENT is BINLOG MONITOR there):
  GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'sync'@'host';
  GRANT SELECT ON mydb.* TO 'sync'@'host';

examples:
  {PROG} --table data --mysql-url mysql://sync@db:3306/app
  {PROG} --table data,users --sink gearman --servers g1:4730
  {PROG} --table data --columns id,volume --start current

exit codes: 0 stopped (SIGTERM/SIGINT), 2 bad option, config file or environment, 3 the server is
not set up for it (message says what to change), the saved position was purged, or a server
could not be reached at start.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("--table", action="append", metavar="NAME[,NAME…]",
                   help="tables to stream: repeat or comma-separate (default: every [tables.NAME] of --config)")
    p.add_argument("--database", metavar="DB", help="database of the tables (default: the one in --mysql-url / GEARSYNC_MYSQL_DATABASE)")
    p.add_argument("--columns", metavar="COL,…", help="only these columns (the key is always kept); with several tables write table.col")
    p.add_argument("--sink", choices=("redis", "gearman"), help="apply to Redis directly, or submit to gearmand (default redis)")
    p.add_argument("--server-id", type=int, metavar="N", help="replica server_id to register with (default: derived from the stream name)")
    p.add_argument("--start", metavar="WHERE", help="current | earliest | GTID | FILE:POS (overrides the saved position)")
    p.add_argument("--name", metavar="NAME", help="name of the saved position (default: host:port/db/tables)")
    add_config_option(p)
    add_mysql_options(p)
    add_gearman_options(p)
    p.add_argument("--function", metavar="NAME", help="Gearman function for the one --table (default gearsync.<table>)")
    add_redis_options(p)
    p.add_argument("--key-template", metavar="T", help="Redis key of a row (default '{table}:{pk}')")
    p.add_argument("--format", choices=("json", "hash"), help="Redis value format for --sink redis (default json)")
    p.add_argument("--ttl", type=int, metavar="S", help="expire row keys after S seconds (--sink redis)")
    p.add_argument("--batch", type=int, metavar="N", help="most events per Redis call / gearman batch (default 2000)")
    p.add_argument("--flush-ms", type=float, metavar="MS",
                   help="under load, longest a decoded change waits to join a batch (default 20; an idle "
                        "stream applies within ~10 ms)")
    p.add_argument("--job-changes", type=int, metavar="N",
                   help=f"--sink gearman: most changes of one table per job (default {JOB_CHANGES}; 1: a job "
                        "per change, as before)")
    p.add_argument("--stats-interval", type=float, metavar="S", help="seconds between stats lines (default 10; 0 = off)")
    add_startup_options(p)
    add_metrics_options(p)
    add_logging_options(p)
    return p


def _columns(text: str, tables: tuple[str, ...]) -> dict[str, tuple[str, ...] | None]:
    """--columns col,… (one table) or table.col,… → table → columns."""
    columns: dict[str, tuple[str, ...] | None] = {}
    for item in (c.strip() for c in text.split(",")):
        if not item:
            raise ConfigError(f"--columns: {text!r} has an empty entry; expected col[,col…]")
        table, dot, col = item.partition(".")
        if not dot:
            if len(tables) > 1:
                raise ConfigError(f"--columns: {item!r} with {len(tables)} tables; expected table.column")
            table, col = tables[0], item
        if table not in tables:
            raise ConfigError(f"--columns: {item!r} names table {table!r}; expected one of {', '.join(tables)}")
        columns[table] = (*(columns.get(table) or ()), col)
    return columns


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> BinlogSettings:
    from sync.capture.binlog.service import BinlogSettings
    from sync.config import build_table, table_values

    env = os.environ if env is None else env
    cfg = config_for(args, env)
    r = Resolver(args, env, cfg)
    tables = tuple(table_names(args.table) if args.table else (cfg.tables if cfg is not None else ()))
    if not tables:
        raise ConfigError("--table: none given; expected --table NAME[,NAME…] (or [tables.NAME] in --config)")
    mysql = resolve_mysql(args, env, cfg)
    database = args.database or mysql.database
    if not database:
        raise ConfigError("--database: none given; expected --database DB, a /db path in --mysql-url, or "
                          "GEARSYNC_MYSQL_DATABASE")
    if args.function and len(tables) > 1:
        raise ConfigError(f"--function: {args.function!r} given with {len(tables)} tables; expected one --table")
    overrides = {"function": args.function, "key_template": args.key_template, "format": args.format, "ttl_s": args.ttl}
    values = table_values(cfg, list(tables), overrides)
    specs = {name: build_table(name, v, where) for name, (v, where) in values.items()}
    shared = {(s.key_template, s.format, s.ttl_s) for s in specs.values()}
    if len(shared) > 1:
        raise ConfigError(f"--config {cfg.path if cfg else ''}: the tables {', '.join(tables)} differ in key_template, "
                          "format or ttl_s; expected the same for the tables of one sync-binlog stream (or one "
                          "stream per table, each with its --name)")
    columns: dict[str, tuple[str, ...] | None] = (
        _columns(args.columns, tables) if args.columns else
        {t: tuple(v["columns"]) for t, (v, _) in values.items() if v.get("columns")})
    functions = {t: s.gearman_function for t, s in specs.items() if values[t][0].get("function")}
    spec = next(iter(specs.values()))
    if args.start is not None and not args.start.strip():
        raise ConfigError("--start: empty; expected current, earliest, a GTID or FILE:POS")
    return BinlogSettings(
        mysql=mysql, database=database, tables=tables, redis=resolve_redis(args, env, cfg), sink=r.get("binlog", "sink"),
        columns=columns, servers=tuple(resolve_gearman_servers(args, env, cfg)), functions=functions,
        key_template=spec.key_template, format=spec.format, ttl_s=spec.ttl_s,
        shapes={t: s.shape for t, s in specs.items()},
        start=args.start.strip() if args.start else None, server_id=r.get("binlog", "server_id"),
        name=r.get("binlog", "name"), batch=r.get("binlog", "batch"), flush_ms=r.get("binlog", "flush_ms"),
        job_changes=r.get("binlog", "job_changes"),
        stats_interval_s=r.get("binlog", "stats_interval_s"),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> int:
        cfg = config_for(args)
        settings = settings_from_args(args)
        resolve_logging(args, None, cfg).apply()
        metrics = resolve_metrics(args, None, cfg)
        metrics.start()
        wait_for_servers(Resolver(args, None, cfg).get("binlog", "startup_wait_s"), mysql=settings.mysql, redis=settings.redis,
                         gearman=settings.servers if settings.sink == "gearman" else ())
        return asyncio.run(_serve(settings, monitor=metrics.port is not None))

    run(PROG, go, argv)


async def _serve(settings: BinlogSettings, *, monitor: bool = False) -> int:
    from sync.capture.binlog.service import BinlogService, tune_gc

    tune_gc()  # a long-running decoder: fewer, bigger garbage-collector passes
    service = BinlogService(settings)
    if monitor:
        service.enable_monitor()
    stop_on_signals(service.request_stop)
    return await service.run()


if __name__ == "__main__":
    main()
