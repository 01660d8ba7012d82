"""`sync-relay`: send the changes kept in gearsync_spool to gearmand."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Sequence

from sync.cli import make_parser, run
from sync.config import DEFAULT_GEARMAN_PORT, _float, _int, parse_servers
from sync.errors import ConfigError
from sync.logging import setup_logging
from sync.mysql import mysql_settings

PROG = "sync-relay"

DESCRIPTION = """\
Drain gearsync_spool into gearmand.

The capture triggers of `sync-triggers install` keep a change in the table gearsync_spool of the
table's database when gearmand did not take it (udf mode with --on-enqueue-failure spool), or
always (--mode outbox). This relay sends those rows to gearmand in id order, in batches
(SELECT … FOR UPDATE SKIP LOCKED → pipelined submits → DELETE → COMMIT): a row is deleted only
after gearmand acknowledged its job, and several relays can run side by side. With an empty
spool it polls every --poll-interval seconds; when MySQL or gearmand is down it backs off and
retries. SIGTERM/SIGINT: finish the batch in hand and exit 0.
"""

EPILOG = f"""\
environment:
  MYSQL_URL or MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_DATABASE, MYSQL_SOCKET; MYSQL_PASSWORD
  GEARMAN_SERVERS   job servers, host:port[,host:port…] (default 127.0.0.1:{DEFAULT_GEARMAN_PORT})

examples:
  {PROG} --database shop
  {PROG} --database shop,crm --servers g1:4730,g2:4730 --batch 1000
  {PROG} --database shop --once           # empty the spool once, then exit

exit codes: 0 stopped cleanly or --once done, 2 bad option, or a MySQL error retrying cannot fix
(access denied, no gearsync_spool, missing grants), 3 MySQL or gearmand unreachable
(--once only; the long-running relay keeps retrying).
"""


def build_parser():  # type: ignore[no-untyped-def]
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("--database", metavar="DB[,DB…]", help="database(s) holding gearsync_spool (default: MYSQL_DATABASE / the --mysql-url path)")
    p.add_argument("--mysql-url", metavar="URL", help="mysql://user@host:port/db (password in MYSQL_PASSWORD)")
    p.add_argument("--servers", metavar="HOST:PORT,…", help="gearmand servers (env GEARMAN_SERVERS)")
    p.add_argument("--batch", default="500", metavar="N", help="rows per transaction (default 500)")
    p.add_argument("--poll-interval", default="0.02", metavar="S", help="seconds between polls of an empty spool (default 0.02)")
    p.add_argument("--stats-interval", default="10", metavar="S", help="seconds between stats log lines (default 10; 0 = off)")
    p.add_argument("--once", action="store_true", help="relay until the spool is empty, then exit")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from sync.capture.relay import RelaySettings

        mysql = mysql_settings(args.mysql_url)
        dbs_text = args.database or mysql.database
        if not dbs_text:
            raise ConfigError("--database: none given; expected the database holding gearsync_spool "
                              "(or MYSQL_DATABASE / a /db path in --mysql-url)")
        databases = tuple(d.strip() for d in dbs_text.split(","))
        if any(not d for d in databases):
            raise ConfigError(f"--database: {dbs_text!r} has an empty name; expected DB[,DB…]")
        if args.servers is not None:
            servers = parse_servers(args.servers, "--servers")
        elif os.environ.get("GEARMAN_SERVERS"):
            servers = parse_servers(os.environ["GEARMAN_SERVERS"], "GEARMAN_SERVERS")
        else:
            servers = [("127.0.0.1", DEFAULT_GEARMAN_PORT)]
        settings = RelaySettings(
            mysql=mysql,
            databases=databases,
            servers=servers,
            batch=_int(args.batch, "--batch", 1, 100_000),
            poll_interval_s=_float(args.poll_interval, "--poll-interval", 0.001, 60),
            stats_interval_s=_float(args.stats_interval, "--stats-interval", 0, 86400),
        )
        setup_logging(args.log_level, args.log_format)
        return asyncio.run(_serve(settings, once=args.once))

    run(PROG, go, argv)


async def _serve(settings, *, once: bool) -> int:  # type: ignore[no-untyped-def]
    from sync.capture.relay import SpoolRelay

    relay = SpoolRelay(settings)
    if once:
        try:
            n = await relay.drain(timeout_s=3600)
        finally:
            await relay.close()
        print(f"{PROG}: relayed {n} changes")
        return 0
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.request_stop)
    return await relay.run()


if __name__ == "__main__":
    main()
