"""What every gearsync command shares: named exit codes, a one-line error format, argument parsing.

A command's `main()` builds its parser with `make_parser`, adds the shared options it has with
the `add_*_options` groups below (declared once here; sync.settings resolves them), then calls
`run(main_fn, argv)`; bad input ends as `<prog>: error: <what was wrong, naming the value>` on
stderr and exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any, NoReturn

from sync.errors import ConfigError, SyncError
from sync.settings import LOG_FORMATS, LOG_LEVELS  # declared with the [logging] keys


class ExitCode(IntEnum):
    OK = 0
    DIFFERENCES = 1      # verify: MySQL and Redis differ; replay: some records still fail
    USAGE = 2            # bad option, config, URL or identifier
    UNAVAILABLE = 3      # a needed server could not be reached / the action must be done by hand
    INTERRUPTED = 130    # Ctrl-C before the work was done


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (plus a pointer to --help)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(ExitCode.USAGE)


def make_parser(prog: str, description: str, epilog: str | None = None) -> OneLineParser:
    return OneLineParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# -- shared option groups (resolved by sync.settings.resolve_*) ---------------------------------

def add_config_option(parser: argparse.ArgumentParser) -> None:
    """--config FILE (else GEARSYNC_CONFIG): the TOML file every command reads."""
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config file shared by every command (env GEARSYNC_CONFIG; keys: docs/configuration.md)")


def add_mysql_options(parser: argparse.ArgumentParser) -> None:
    """--mysql-url (the password only ever from GEARSYNC_MYSQL_PASSWORD or the config file)."""
    parser.add_argument("--mysql-url", metavar="URL",
                        help="mysql://user@host:port/db, without password (env GEARSYNC_MYSQL_URL; [mysql] url)")


def add_redis_options(parser: argparse.ArgumentParser) -> None:
    """--redis-url, --redis-cluster (the password only ever from GEARSYNC_REDIS_PASSWORD or the config file)."""
    parser.add_argument("--redis-url", metavar="URL",
                        help="redis://host:port/db, without password (env GEARSYNC_REDIS_URL; [redis] url)")
    parser.add_argument("--redis-cluster", action="store_true", default=None,
                        help="the Redis URL is a Redis Cluster node (env GEARSYNC_REDIS_CLUSTER; [redis] cluster)")


def add_gearman_options(parser: argparse.ArgumentParser) -> None:
    """--servers."""
    parser.add_argument("--servers", metavar="HOST:PORT,…",
                        help="gearmand servers (env GEARSYNC_GEARMAN_SERVERS; [gearman] servers; default 127.0.0.1:4730)")


def add_logging_options(parser: argparse.ArgumentParser, *, level: str = "info") -> None:
    """--log-level (the command's default `level`) and --log-format; both also from the
    environment and the [logging] section (sync.settings.resolve_logging)."""
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        help=f"least severe log messages shown (env GEARSYNC_LOG_LEVEL; [logging] level; default {level})")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        help="log format: json lines, console, or auto: console on a terminal, JSON otherwise "
                             "(env GEARSYNC_LOG_FORMAT; [logging] format; default auto)")
    parser.set_defaults(log_level_default=level)


def add_metrics_options(parser: argparse.ArgumentParser) -> None:
    """--metrics-port, --metrics-addr."""
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on http://ADDR:PORT/metrics and health on /healthz "
                             "(env GEARSYNC_METRICS_PORT; [metrics] port; default: off)")
    parser.add_argument("--metrics-addr", metavar="ADDR",
                        help="address of the metrics server (default 127.0.0.1: this host only; 0.0.0.0 lets a "
                             "remote Prometheus scrape; env GEARSYNC_METRICS_ADDR; [metrics] addr)")


def table_names(values: Sequence[str] | None, where: str = "--table") -> list[str]:
    """--table values (repeated and/or comma-separated) → the names in order, without repeats."""
    from sync.tables import check_table_name

    names = [t.strip() for item in (values or []) for t in item.split(",")]
    if any(not n for n in names):
        raise ConfigError(f"{where}: {','.join(values or [])!r} has an empty name; expected NAME[,NAME…]")
    return [check_table_name(n, where) for n in dict.fromkeys(names)]


def _startup_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r}; expected seconds from 0 to 86400")
    return value


def add_startup_options(parser: argparse.ArgumentParser) -> None:
    """--startup-wait (sync.startup.wait_for_servers) for the long-running commands."""
    parser.add_argument("--startup-wait", type=_startup_seconds, metavar="S",
                        help="at start, retry unreachable servers with back-off for up to S seconds, logging each "
                             "wait, then exit 3 (default 60; 0 = exit 3 at once; startup_wait_s of the command's "
                             "config section)")


def table_target_options(args: Any) -> dict[str, Any]:
    """The keyword arguments of sync.tools.snapshot.open_tables from sync-snapshot's / sync-verify's
    options (--table (repeatable), --all-tables, --database, --columns, the MySQL and Redis options,
    --key-template, --format, --ttl where the command has it, --config)."""
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    options = dict(tables=args.table, all_tables=args.all_tables, database=args.database, columns=columns, mysql_url=args.mysql_url,
                   redis_url=args.redis_url, redis_cluster=args.redis_cluster, key_template=args.key_template,
                   fmt=args.format, config_path=args.config)
    if hasattr(args, "ttl"):
        options["ttl_s"] = args.ttl
    return options


class Output:
    """A command's notes for a person: `prog: text` lines on stderr, or, under --log-format json
    (nothing but JSON lines on stderr), the structlog event `event` with `fields`."""

    def __init__(self, prog: str, json: bool) -> None:
        self.prog, self.json = prog, json

    def say(self, event: str, text: str, **fields: Any) -> None:
        if self.json:
            import structlog

            structlog.get_logger(self.prog).info(event, **fields)
        else:
            sys.stderr.write(f"{self.prog}: {text}\n")

    def progress_tty(self, choice: str) -> bool | None:
        """--progress auto|bar|log → ProgressDisplay's tty (never a bar under JSON logs)."""
        return False if self.json else {"auto": None, "bar": True, "log": False}[choice]


def stop_on_signals(request_stop: Callable[[], None]) -> None:
    """In a running event loop: SIGTERM and SIGINT call request_stop (finish the work in hand, exit)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)


def fail(prog: str, message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(int(code))


def run(prog: str, fn: Callable[[], int], argv: Sequence[str] | None = None) -> NoReturn:
    """Call fn and turn expected errors into one line and a named exit code."""
    try:
        code = fn()
    except ConfigError as exc:
        fail(prog, str(exc), ExitCode.USAGE)
    except SyncError as exc:
        fail(prog, str(exc), ExitCode.UNAVAILABLE)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        raise SystemExit(int(ExitCode.INTERRUPTED)) from None
    raise SystemExit(int(code))


ALL_TABLES_HELP = ("every table of the database with a primary key or a NOT NULL unique key (the others are "
                   "listed with the reason)")


def add_table_options(p: argparse.ArgumentParser, *, table_help: str, columns_help: str,
                      all_help: str = ALL_TABLES_HELP) -> None:
    """--table (repeatable, comma-separated), --all-tables, --database and --columns: how a command
    that works on tables of one database is told which."""
    p.add_argument("--table", action="append", metavar="NAME[,NAME…]", help=table_help)
    p.add_argument("--all-tables", action="store_true", help=all_help)
    p.add_argument("--database", metavar="DB", help="database of the table(s) (default: from --mysql-url / GEARSYNC_MYSQL_DATABASE)")
    p.add_argument("--columns", metavar="A,B,…", help=columns_help)
