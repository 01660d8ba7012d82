"""`sync-binlog`: stream row changes from the MySQL/MariaDB binlog to Redis (or to gearmand)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Sequence

from sync.cli import make_parser, run
from sync.config import check_function_name, check_key_template, check_table_name, parse_servers
from sync.redis_client import DEFAULT_REDIS_URL, RedisSettings, check_redis_url
from sync.urls import refuse_password_in
from sync.errors import ConfigError
from sync.logging import setup_logging

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


def build_parser():  # type: ignore[no-untyped-def]
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("--table", action="append", required=True, metavar="NAME[,NAME…]", help="tables to stream (repeat or comma-separate)")
    p.add_argument("--database", metavar="DB", help="database of the tables (default: the one in --mysql-url / MYSQL_DATABASE)")
    p.add_argument("--columns", metavar="COL,…", help="only these columns (the key is always kept); with several tables write table.col")
    p.add_argument("--sink", choices=("redis", "gearman"), default="redis", help="apply to Redis directly, or submit to gearmand (default redis)")
    p.add_argument("--server-id", type=int, metavar="N", help="replica server_id to register with (default: derived from the stream name)")
    p.add_argument("--start", metavar="WHERE", help="current | earliest | GTID | FILE:POS (overrides the saved position)")
    p.add_argument("--name", metavar="NAME", help="name of the saved position (default: host:port/db/tables)")
    p.add_argument("--mysql-url", metavar="URL", help="mysql://user@host:port/db, without password (env MYSQL_URL)")
    p.add_argument("--servers", metavar="HOST:PORT,…", help="gearmand servers for --sink gearman (env GEARMAN_SERVERS)")
    p.add_argument("--function", metavar="NAME", help="Gearman function for the one --table (default gearsync.<table>)")
    p.add_argument("--redis-url", metavar="URL", help="redis://host:port/db, without password (env REDIS_URL)")
    p.add_argument("--redis-cluster", action="store_true", help="the Redis URL is a Redis Cluster node")
    p.add_argument("--key-template", metavar="T", default="{table}:{pk}", help="Redis key of a row (default '{table}:{pk}')")
    p.add_argument("--format", choices=("json", "hash"), default="json", help="Redis value format for --sink redis (default json)")
    p.add_argument("--ttl", type=int, metavar="S", help="expire row keys after S seconds (--sink redis)")
    p.add_argument("--batch", type=int, default=2000, metavar="N", help="most events per Redis call / gearman batch (default 2000)")
    p.add_argument("--flush-ms", type=float, default=20.0, metavar="MS",
                   help="under load, longest a decoded change waits to join a batch (default 20; an idle "
                        "stream applies within ~10 ms)")
    p.add_argument("--stats-interval", type=float, default=10.0, metavar="S", help="seconds between stats lines (0 = off)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics (default: off)")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def settings_from_args(args, env=None):  # type: ignore[no-untyped-def]
    from sync.capture.binlog.service import BinlogSettings
    from sync.mysql import mysql_settings

    env = os.environ if env is None else env
    tables = tuple(dict.fromkeys(check_table_name(t.strip()) for item in args.table for t in item.split(",") if t.strip()))
    if not tables:
        raise ConfigError("--table: none given; expected --table NAME[,NAME…]")
    mysql = mysql_settings(args.mysql_url, env)
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
    if args.redis_url is not None:
        url = check_redis_url(args.redis_url, "--redis-url")
        refuse_password_in(url, "--redis-url", "REDIS_PASSWORD")
    else:
        url = check_redis_url(env.get("REDIS_URL") or DEFAULT_REDIS_URL, "REDIS_URL")
    redis = RedisSettings(url=url, password=env.get("REDIS_PASSWORD") or None, cluster=bool(args.redis_cluster))
    servers = parse_servers(args.servers or env.get("GEARMAN_SERVERS") or "127.0.0.1:4730",
                            "--servers" if args.servers else "GEARMAN_SERVERS")
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
        setup_logging(args.log_level, args.log_format)
        if args.metrics_port is not None:
            from sync.metrics import start_metrics_server

            start_metrics_server(args.metrics_port)
        return asyncio.run(_serve(settings))

    run(PROG, go, argv)


async def _serve(settings) -> int:  # type: ignore[no-untyped-def]
    from sync.capture.binlog.service import BinlogService, tune_gc

    tune_gc()  # a long-running decoder: fewer, bigger garbage-collector passes
    service = BinlogService(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    return await service.run()


if __name__ == "__main__":
    main()
