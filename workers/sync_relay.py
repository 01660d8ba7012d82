"""`sync-relay`: send the changes kept in gearsync_spool to gearmand."""

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
    add_startup_options,
    make_parser,
    run,
    stop_on_signals,
)
from sync.errors import ConfigError
from sync.settings import (
    DEFAULT_GEARMAN_PORT,
    Resolver,
    config_for,
    resolve_gearman_servers,
    resolve_logging,
    resolve_metrics,
    resolve_mysql,
)
from sync.startup import wait_for_servers

if TYPE_CHECKING:  # for annotations only; the commands import these inside the functions that use them
    from sync.capture.relay import RelaySettings

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

Trigger watcher (on by default; --no-watch-triggers turns it off): every --watch-interval
seconds it runs `sync-triggers check` over every table of the served databases that has gearsync
triggers and re-installs stale ones with the options they were installed with (a column added,
a trigger dropped, the table swapped by RENAME as pt-online-schema-change and gh-ost do), logging
triggers_reinstalled. It needs the TRIGGER privilege (and SELECT on the tables' columns); without
it, it logs triggers_not_reinstalled and the relay goes on. A DROP COLUMN of a synced column
must go through `sync-triggers alter`: writes fail before any watcher can act
(docs/schema-changes.md).
"""

EPILOG = f"""\
environment (each also a key of --config, which can hold the [relay] options; docs/configuration.md):
  GEARSYNC_MYSQL_URL or GEARSYNC_MYSQL_HOST, _PORT, _USER, _DATABASE, _SOCKET; GEARSYNC_MYSQL_PASSWORD
  GEARSYNC_GEARMAN_SERVERS  job servers, host:port[,host:port…] (default 127.0.0.1:{DEFAULT_GEARMAN_PORT})
  GEARSYNC_JOB_KEY  key the jobs sent are signed with (environment only; docs/security.md; unset:
                    unsigned, one warning)

examples:
  {PROG} --database shop
  {PROG} --database shop,crm --servers g1:4730,g2:4730 --batch 1000
  {PROG} --database shop --once           # empty the spool once, then exit
  {PROG} --database shop --watch-interval 2   # re-install stale triggers within ~2 s
  {PROG} --database shop --metrics-port 9312  # /metrics and /healthz on 127.0.0.1:9312 (docs/metrics.md)

exit codes: 0 stopped cleanly or --once done, 2 bad option, config file or environment, or a MySQL
error retrying cannot fix (access denied, no gearsync_spool, missing grants), 3 MySQL unreachable
after --startup-wait, or gearmand unreachable with --once (once running, the relay retries both).
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("--database", metavar="DB[,DB…]",
                   help="database(s) holding gearsync_spool (default: GEARSYNC_MYSQL_DATABASE / the --mysql-url path)")
    add_config_option(p)
    add_mysql_options(p)
    add_gearman_options(p)
    p.add_argument("--batch", metavar="N", help="rows per transaction (default 500)")
    p.add_argument("--poll-interval", metavar="S", help="seconds between polls of an empty spool (default 0.02)")
    p.add_argument("--stats-interval", metavar="S", help="seconds between stats log lines (default 10; 0 = off)")
    p.add_argument("--once", action="store_true", help="relay until the spool is empty, then exit")
    p.add_argument("--watch-triggers", action=argparse.BooleanOptionalAction,
                   help="check the capture triggers and re-install stale ones (default on)")
    p.add_argument("--watch-interval", metavar="S", help="seconds between trigger checks (default 5)")
    add_startup_options(p)
    add_metrics_options(p)
    add_logging_options(p)
    return p


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> RelaySettings:
    from sync.capture.relay import RelaySettings

    env = os.environ if env is None else env
    cfg = config_for(args, env)
    r = Resolver(args, env, cfg)
    mysql = resolve_mysql(args, env, cfg)
    if r.source("relay", "database") is None and not mysql.database:
        raise ConfigError("--database: none given; expected the database holding gearsync_spool "
                          "(or GEARSYNC_MYSQL_DATABASE / a /db path in --mysql-url)")
    databases = tuple(r.get("relay", "database") or [mysql.database])
    return RelaySettings(mysql=mysql, databases=databases, servers=resolve_gearman_servers(args, env, cfg),
                         batch=r.get("relay", "batch"), poll_interval_s=r.get("relay", "poll_interval_s"),
                         stats_interval_s=r.get("relay", "stats_interval_s"),
                         watch_triggers=r.get("relay", "watch_triggers"), watch_interval_s=r.get("relay", "watch_interval_s"))


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> int:
        settings = settings_from_args(args)
        cfg = config_for(args)
        resolve_logging(args, None, cfg).apply()
        metrics = resolve_metrics(args, None, cfg)
        if not args.once:
            metrics.start()
        # gearmand: the relay loop waits for it
        wait_for_servers(Resolver(args, None, cfg).get("relay", "startup_wait_s"), mysql=settings.mysql)
        return asyncio.run(_serve(settings, once=args.once, monitor=metrics.port is not None))

    run(PROG, go, argv)


async def _serve(settings: RelaySettings, *, once: bool, monitor: bool = False) -> int:
    from sync.capture.relay import SpoolRelay

    relay = SpoolRelay(settings)
    if once:
        try:
            n = await relay.drain(timeout_s=3600)
        finally:
            await relay.close()
        print(f"{PROG}: relayed {n} changes")
        return 0
    if monitor:
        relay.enable_monitor()
    stop_on_signals(relay.request_stop)
    return await relay.run()


if __name__ == "__main__":
    main()
