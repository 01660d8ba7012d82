"""`sync-status`: queues, workers, spool, dead letters, last applied change and lag, binlog position."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import orjson

from sync.cli import (
    ExitCode,
    add_config_option,
    add_gearman_options,
    add_logging_options,
    add_mysql_options,
    add_redis_options,
    fail,
    make_parser,
    run,
    table_names,
)
from sync.settings import config_for, resolve_logging, resolve_mysql

PROG = "sync-status"

DESCRIPTION = """\
Show whether the gearsync pipeline keeps up.

  gearmand   per server and function: queued and running jobs, connected workers (admin protocol)
  tables     queue depth, workers, time of the last applied change, lag (now − last applied
             while jobs are queued; 0 when the queue is empty), applied total, dead letters,
             snapshot progress
  mysql      gearsync_spool size, binlog position (SHOW MASTER STATUS, @@gtid_binlog_pos)
  triggers   per table with gearsync capture triggers: ok, or stale: why (what
             `sync-triggers check` says: column added or dropped, trigger missing, table swapped)
  binlog     the binlog reader's saved position, when sync-binlog stored one (else n/a)

A part that does not answer is shown as down; the others are still shown.
"""

EPILOG = """\
environment: GEARSYNC_GEARMAN_SERVERS, GEARSYNC_REDIS_URL, GEARSYNC_REDIS_PASSWORD, GEARSYNC_MYSQL_URL /
GEARSYNC_MYSQL_* (as the other commands; each also a key of --config: docs/configuration.md).

examples:
  sync-status
  sync-status --table data --json
  sync-status --watch 2

exit codes: 0 shown, 2 bad option, config file or environment, 3 nothing at all was reachable.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("--table", action="append", metavar="NAME[,NAME…]",
                   help="tables to show: repeat or comma-separate (default: every [tables.NAME] of --config, else "
                        "every table found)")
    add_gearman_options(p)
    add_redis_options(p)
    add_mysql_options(p)
    p.add_argument("--no-mysql", action="store_true", help="do not connect to MySQL (no spool / binlog position)")
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print the state as JSON (one line per refresh)")
    p.add_argument("--watch", type=float, metavar="S", help="refresh every S seconds until Ctrl-C")
    add_logging_options(p, level="warning")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> int:
        resolve_logging(args, None, config_for(args)).apply()
        if args.watch is not None and not 0.1 <= args.watch <= 86400:
            fail(PROG, f"--watch: {args.watch:g}; expected 0.1 to 86400 seconds")
        return asyncio.run(_status(args))

    run(PROG, go, argv)


async def _status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sync.capture.trigger_admin import trigger_states
    from sync.config import worker_settings
    from sync.redis_client import connect_redis
    from sync.tools.status import add_trigger_states, collect, reachable, render

    tables = table_names(args.table)
    # worker_settings validates servers/Redis/table names the way sync-worker does; the table
    # list only matters for the function names.
    ws = worker_settings(tables=tables or None, config_path=args.config, servers=args.servers,
                         redis_url=args.redis_url, redis_cluster=args.redis_cluster, classic=not tables)
    functions = {t.name: t.gearman_function for t in ws.tables.values()}
    mysql = None if args.no_mysql else resolve_mysql(args, None, config_for(args))
    redis = connect_redis(ws.redis, socket_timeout_s=3.0)
    console = Console()
    try:
        while True:
            state = await collect(servers=ws.servers, redis=redis, mysql=mysql, tables=list(functions) or tables,
                                  functions=functions)
            if mysql is not None and state["mysql"].get("up"):
                dbs = [mysql.database] if mysql.database else None
                add_trigger_states(state, await asyncio.to_thread(trigger_states, mysql, dbs))
            if args.json:
                sys.stdout.write(orjson.dumps(state).decode() + "\n")
                sys.stdout.flush()
            else:
                if args.watch is not None and console.is_terminal:
                    console.clear()
                render(state, console)
            if args.watch is None:
                return int(ExitCode.OK if reachable(state) else ExitCode.UNAVAILABLE)
            await asyncio.sleep(args.watch)
    finally:
        try:
            await redis.aclose()
        except Exception:  # closing a client whose server is down must not mask the result
            pass


if __name__ == "__main__":
    main()
