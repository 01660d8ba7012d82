"""`sync-binlog`: stream row changes from the MySQL/MariaDB binlog to Redis (or to gearmand)."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from sync.cli import (
    add_gearman_options,
    add_logging_options,
    add_metrics_options,
    add_mysql_options,
    add_redis_options,
    add_startup_options,
    make_parser,
    run,
    stop_on_signals,
)
from sync.errors import ConfigError
from sync.redis_client import DEFAULT_REDIS_URL
from sync.settings import resolve_gearman_servers, resolve_logging, resolve_metrics, resolve_mysql, resolve_redis
from sync.startup import wait_for_servers
from sync.tables import check_function_name, check_key_template, check_table_name

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
environment:
  MYSQL_URL / MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_DATABASE, MYSQL_PASSWORD (never on the command line)
  REDIS_URL (default {DEFAULT_REDIS_URL}), REDIS_PASSWORD
  GEARMAN_SERVERS   host:port[,host:port…] for --sink gearman (default 127.0.0.1:4730)
  GEARSYNC_JOB_KEY  --sink gearman: key the jobs are signed with (docs/security.md)

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

exit codes: 0 stopped (SIGTERM/SIGINT), 2 bad option, 3 the server is not set up for it (message
says what to change), the saved position was purged, or a server could not be reached at start.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("--table", action="append", required=True, metavar="NAME[,NAME…]", help="tables to stream (repeat or comma-separate)")
    p.add_argument("--database", metavar="DB", help="database of the tables (default: the one in --mysql-url / MYSQL_DATABASE)")
    p.add_argument("--columns", metavar="COL,…", help="only these columns (the key is always kept); with several tables write table.col")
    p.add_argument("--sink", choices=("redis", "gearman"), default="redis",
                   help="apply to Redis directly, or submit to gearmand (default redis)")
    p.add_argument("--server-id", type=int, metavar="N", help="replica server_id to register with (default: derived from the stream name)")
    p.add_argument("--start", metavar="WHERE", help="current | earliest | GTID | FILE:POS (overrides the saved position)")
    p.add_argument("--name", metavar="NAME", help="name of the saved position (default: host:port/db/tables)")
    add_mysql_options(p)
    add_gearman_options(p)
    p.add_argument("--function", metavar="NAME", help="Gearman function for the one --table (default gearsync.<table>)")
    add_redis_options(p)
    p.add_argument("--key-template", metavar="T", default="{table}:{pk}", help="Redis key of a row (default '{table}:{pk}')")
    p.add_argument("--format", choices=("json", "hash"), default="json", help="Redis value format for --sink redis (default json)")
    p.add_argument("--ttl", type=int, metavar="S", help="expire row keys after S seconds (--sink redis)")
    p.add_argument("--batch", type=int, default=2000, metavar="N", help="most events per Redis call / gearman batch (default 2000)")
    p.add_argument("--flush-ms", type=float, default=20.0, metavar="MS",
                   help="under load, longest a decoded change waits to join a batch (default 20; an idle "
                        "stream applies within ~10 ms)")
    p.add_argument("--stats-interval", type=float, default=10.0, metavar="S", help="seconds between stats lines (0 = off)")
    add_startup_options(p)
    add_metrics_options(p)
    add_logging_options(p)
    return p


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> BinlogSettings:
    from sync.capture.binlog.service import BinlogSettings

    env = os.environ if env is None else env
    tables = tuple(dict.fromkeys(check_table_name(t.strip()) for item in args.table for t in item.split(",") if t.strip()))
    if not tables:
        raise ConfigError("--table: none given; expected --table NAME[,NAME…]")
    mysql = resolve_mysql(args, env)
    database = args.database or mysql.database
    if not database:
        raise ConfigError("--database: none given; expected --database DB, a /db path in --mysql-url, or MYSQL_DATABASE")
    columns: dict[str, tuple[str, ...] | None] = {}
    if args.columns:
        for item in (c.strip() for c in args.columns.split(",")):
            if not item:
                raise ConfigError(f"--columns: {args.columns!r} has an empty entry; expected col[,col…]")
            table, dot, col = item.partition(".")
            if not dot:
                if len(tables) > 1:
                    raise ConfigError(f"--columns: {item!r} with {len(tables)} tables; expected table.column")
                table, col = tables[0], item
            if table not in tables:
                raise ConfigError(f"--columns: {item!r} names table {table!r}; expected one of {', '.join(tables)}")
            columns[table] = (*(columns.get(table) or ()), col)
    redis = resolve_redis(args, env)
    servers = resolve_gearman_servers(args, env)
    functions: dict[str, str] = {}
    if args.function:
        if len(tables) > 1:
            raise ConfigError(f"--function: {args.function!r} given with {len(tables)} tables; expected one --table")
        functions[tables[0]] = check_function_name(args.function)
    check_key_template(args.key_template)
    if args.server_id is not None and not 1 <= args.server_id <= 2**32 - 1:
        raise ConfigError(f"--server-id: {args.server_id}; expected 1 to 4294967295")
    if not 1 <= args.batch <= 100000:
        raise ConfigError(f"--batch: {args.batch}; expected 1 to 100000")
    if not 0.1 <= args.flush_ms <= 1000:
        raise ConfigError(f"--flush-ms: {args.flush_ms:g}; expected 0.1 to 1000")
    if args.ttl is not None and not 1 <= args.ttl <= 10 * 365 * 86400:
        raise ConfigError(f"--ttl: {args.ttl}; expected 1 to {10 * 365 * 86400} seconds")
    if args.start is not None and not args.start.strip():
        raise ConfigError("--start: empty; expected current, earliest, a GTID or FILE:POS")
    return BinlogSettings(
        mysql=mysql, database=database, tables=tables, redis=redis, sink=args.sink, columns=columns,
        servers=tuple(servers), functions=functions, key_template=args.key_template, format=args.format,
        ttl_s=args.ttl, start=args.start.strip() if args.start else None, server_id=args.server_id,
        name=args.name, batch=args.batch, flush_ms=args.flush_ms, stats_interval_s=args.stats_interval,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> int:
        settings = settings_from_args(args)
        resolve_logging(args).apply()
        metrics = resolve_metrics(args)
        metrics.start()
        wait_for_servers(args.startup_wait, mysql=settings.mysql, redis=settings.redis,
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
