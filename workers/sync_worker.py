"""`sync-worker`: the production worker — applies the change jobs of one or more tables to Redis."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping, Sequence

from sync.cli import (
    ExitCode,
    Output,
    add_config_option,
    add_gearman_options,
    add_logging_options,
    add_metrics_options,
    add_redis_options,
    add_startup_options,
    make_parser,
    run,
    stop_on_signals,
    table_names,
)
from sync.config import CLASSIC_FUNCTION, WorkerSettings, worker_settings
from sync.settings import Resolver, config_for, resolve_logging, resolve_metrics
from sync.startup import wait_for_servers

PROG = "sync-worker"

DESCRIPTION = """\
Apply row changes queued in gearmand to Redis.

Registers the Gearman function of each --table (default gearsync.<table>), grabs jobs in
pipelined batches, writes each batch to Redis in one round trip with version fencing (an older
change never overwrites a newer one; redelivered jobs are harmless), and completes a job only
after Redis has its write. A payload that can never be applied goes to the dead-letter list
gearsync:dead:{<table>} with the reason; fix the cause, then run --replay-dead. A batch job
(sync-binlog --sink gearman --job-changes) carries several changes: each is applied or
dead-lettered on its own, and the job completes once Redis has them all.
"""

EPILOG = f"""\
environment (each also a key of --config; docs/configuration.md):
  GEARSYNC_GEARMAN_SERVERS  job servers, host:port[,host:port…] (default 127.0.0.1:4730)
  GEARSYNC_REDIS_URL        redis://host:port/db (default redis://127.0.0.1:6379/0)
  GEARSYNC_REDIS_PASSWORD   Redis password (never put it on the command line)
  GEARSYNC_CONFIG           the config file when --config is not given
  GEARSYNC_JOB_KEY          key of signed jobs: unsigned or badly signed jobs become dead letters
                            (environment only; docs/security.md); GEARSYNC_JOB_KEY_OLD: keys still
                            accepted (comma-separated)
  Options override the environment, which overrides --config.

examples:
  {PROG} --table data
  {PROG} --table data --format hash --ttl 3600 --servers g1:4730,g2:4730
  {PROG} --classic                       # the classic recipe: {CLASSIC_FUNCTION} → SET <id> <payload>
  {PROG} --config /etc/gearsync.toml     # every [tables.<name>] section
  {PROG} --table data --replay-dead      # re-apply dead letters after a fix
  {PROG} --table data --metrics-port 9310 --metrics-addr 0.0.0.0   # /metrics, /healthz (docs/metrics.md)

exit codes: 0 stopped cleanly (SIGTERM/SIGINT) or replay done, 1 replay left dead letters,
2 bad option, config file or environment, 3 gearmand or Redis still unreachable after --startup-wait.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    p.add_argument("--table", action="append", metavar="NAME[,NAME…]",
                   help="table(s) to sync: repeat or comma-separate (default: every [tables.NAME] of --config)")
    p.add_argument("--function", metavar="NAME", help="Gearman function for the one --table (default gearsync.<table>)")
    p.add_argument("--classic", action="store_true",
                   help=f"also serve the classic recipe's function {CLASSIC_FUNCTION!r}: bare {{\"id\":…}} payloads "
                        "written as SET <id> <payload>")
    add_gearman_options(p)
    add_redis_options(p)
    p.add_argument("--key-template", metavar="T",
                   help="Redis key of a row: {table}, {pk} (composite pk joined with ':', escaped), "
                        "{pk.<column>}; '{{' for a literal brace (default '{table}:{pk}')")
    p.add_argument("--format", choices=("json", "hash"), help="json: SET key <row JSON>; hash: HSET key <columns> (default json)")
    p.add_argument("--ttl", type=int, metavar="S", help="expire row keys after S seconds (default: never)")
    p.add_argument("--batch", type=int, metavar="N", help="jobs grabbed per round trip and applied per Redis call (default 128)")
    p.add_argument("--connections", type=int, metavar="N", help="parallel grab/apply loops, each with its own connections (default 1)")
    add_config_option(p)
    p.add_argument("--replay-dead", action="store_true", help="re-apply the dead letters of the tables, then exit")
    add_startup_options(p)
    add_metrics_options(p)
    p.add_argument("--stats-interval", type=float, metavar="S", help="seconds between stats log lines (default 10; 0 = off)")
    add_logging_options(p)
    return p


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> WorkerSettings:
    """WorkerSettings from the parsed options, the environment and --config."""
    tables = table_names(args.table) if args.table else None
    return worker_settings(
        tables=tables, config_path=args.config, servers=args.servers, redis_url=args.redis_url,
        redis_cluster=args.redis_cluster, function=args.function, key_template=args.key_template, fmt=args.format,
        ttl_s=args.ttl, batch=args.batch, connections=args.connections, classic=args.classic,
        stats_interval_s=args.stats_interval, env=env,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> int:
        cfg = config_for(args)
        settings = settings_from_args(args)
        logging = resolve_logging(args, None, cfg)
        logging.apply()
        metrics = resolve_metrics(args, None, cfg)
        if not args.replay_dead:
            metrics.start()
        wait_for_servers(Resolver(args, None, cfg).get("worker", "startup_wait_s"), redis=settings.redis, gearman=settings.servers)
        return asyncio.run(_serve(settings, replay=args.replay_dead, out=Output(PROG, logging.json),
                                  monitor=metrics.port is not None))

    run(PROG, go, argv)


async def _serve(settings: WorkerSettings, *, replay: bool, out: Output, monitor: bool = False) -> int:
    from sync.apply.worker import SyncWorker

    worker = SyncWorker(settings)
    if replay:
        try:
            ok, failed = await worker.replay_dead()
        finally:
            await worker.aclose()
        out.say("dead_letters_replayed", f"replayed {ok} dead letters, {failed} still dead", replayed=ok, still_dead=failed)
        return int(ExitCode.DIFFERENCES if failed else ExitCode.OK)
    stop_on_signals(worker.request_stop)
    return await worker.run(monitor=monitor)


if __name__ == "__main__":
    main()
