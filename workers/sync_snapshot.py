"""`sync-snapshot`: copy a table's existing rows into Redis (bootstrap), resumable, safe with capture live."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sync.cli import (
    ExitCode,
    add_logging_options,
    add_mysql_options,
    add_redis_options,
    add_table_options,
    make_parser,
    run,
    stop_on_signals,
    table_target_options,
)
from sync.settings import resolve_logging

if TYPE_CHECKING:  # for annotations only; the command imports these inside the functions that use them
    from sync.rows.reader import BinlogPoint
    from sync.tools.snapshot import SnapshotResult, TableTarget

# a table of the run: its result (None: copied by the interrupted run) and its binlog start point
Done = tuple[str, "SnapshotResult | None", "BinlogPoint | None"]

PROG = "sync-snapshot"

DESCRIPTION = """\
Copy the rows a table already has into Redis, through the same fenced applier as sync-worker.

Reads the table in key order, --chunk rows per query (keyset pagination: memory stays bounded
whatever the table size), and writes each row as sync-worker would (same key template, format
and TTL). After each chunk the last key is saved in Redis (gearsync:snapshot:<table>): after
Ctrl-C or a crash, run the same command again and it resumes after that key; --restart starts
over.

Safe while the capture triggers are live: each row is read under a shared row lock with a
UUID_SHORT() version taken after the lock, so a change committed after the read carries a larger
version and is never overwritten by the snapshot row, whichever reaches Redis first.

--versions binlog (MariaDB), for a snapshot that sync-binlog continues: all rows are read in ONE
consistent-snapshot transaction (START TRANSACTION WITH CONSISTENT SNAPSHOT; it stays open for the
whole copy) at a binlog point P, and versioned so that binlog changes at or before P lose to the
snapshot row and later ones win. P is printed, and when done stored as sync-binlog's saved
position for this table (--binlog-name; unless the saved one is already at or after P): start
sync-binlog afterwards (no --start needed with the default name, or --start P). A resumed run
reads at a new point but keeps the first run's P as the start.
"""

EPILOG = """\
environment:
  MYSQL_URL / MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DATABASE
  REDIS_URL, REDIS_PASSWORD
  Options override the environment, which overrides --config.

examples:
  sync-snapshot --table data
  sync-snapshot --table shop.orders --format hash --key-template '{table}:{pk}' --chunk 2000
  sync-snapshot --table data --restart
  sync-snapshot --table data,users                   # one after another, then a summary
  sync-snapshot --all-tables --config gearsync.toml  # each table's [tables.NAME] settings
  sync-snapshot --table data --versions binlog --key-template 'bl:{table}:{pk}' && \
    sync-binlog --table data --key-template 'bl:{table}:{pk}'

Several tables (--table a,b, repeated --table, --all-tables): copied one after another, each with
its progress, then a summary. Options apply to every table; with --config, a table's
[tables.NAME] gives what the options leave unset. Interrupted: run the same command again; the
tables the interrupted run finished are skipped, the interrupted one resumes. --versions binlog:
sync-binlog's saved position for these tables (one stream, --table a,b) is set to the earliest
table's point.

exit codes: 0 done, 2 bad option or table, 3 MySQL or Redis unreachable,
130 interrupted (the progress is saved: run again to resume).
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    add_table_options(p, table_help='table(s) to copy (NAME or DB.NAME), one after another; repeatable',
                      columns_help='only these columns (the key columns are always included); with one table only')
    p.add_argument("--chunk", type=int, default=5000, metavar="N", help="rows per query and per saved step (default 5000)")
    add_mysql_options(p)
    add_redis_options(p)
    p.add_argument("--key-template", metavar="T", help="Redis key of a row, as for sync-worker (default '{table}:{pk}')")
    p.add_argument("--format", choices=("json", "hash"), help="json or hash, as for sync-worker (default json)")
    p.add_argument("--ttl", type=int, metavar="S", help="expire row keys after S seconds, as for sync-worker")
    p.add_argument("--config", metavar="FILE", help="TOML config file shared with sync-worker")
    p.add_argument("--versions", choices=("trigger", "binlog"), default="trigger",
                   help="which change source's versions the snapshot must order against (default trigger)")
    p.add_argument("--binlog-name", metavar="NAME",
                   help="--versions binlog: sync-binlog stream (its --name) whose saved position is set to the "
                        "snapshot's GTID point when done (default: the name sync-binlog uses for this one table; "
                        "'-' = only print the point)")
    p.add_argument("--restart", action="store_true", help="ignore a saved resume point and start from the first row")
    p.add_argument("--progress", choices=("auto", "bar", "log"), default="auto",
                   help="progress bar (auto: on a terminal) or a log line every 10 s")
    add_logging_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> int:
        resolve_logging(args).apply()
        return asyncio.run(_snapshot(args))

    run(PROG, go, argv)


async def _snapshot(args: argparse.Namespace) -> int:
    from sync.rows.reader import format_pk
    from sync.tools.progress import ProgressStore
    from sync.tools.snapshot import finished_in_interrupted_run, open_tables, store_binlog_start

    many = open_tables(**table_target_options(args))
    names = [t.schema.name for t in many.tables]
    try:
        for name, why in many.skipped:
            sys.stderr.write(f"{PROG}: skipped {many.database}.{name}: {why}\n")
        positions = None
        if args.versions == "binlog" and args.binlog_name != "-":
            from sync.capture.binlog.service import stream_name
            from sync.position import PositionStore

            positions = PositionStore(many.redis, args.binlog_name or stream_name(many.mysql, many.database, names))
        skip = await finished_in_interrupted_run(many.redis, names, args.restart)
        done: list[Done] = []
        for target in many.tables:
            name = target.schema.name
            if name in skip:
                sys.stderr.write(f"{PROG}: {many.database}.{name}: already copied by the interrupted run; skipped "
                                 "(--restart copies it again)\n")
                done.append((name, None, await ProgressStore(many.redis, name).load_binlog_start()))
                continue
            res = await _one_table(args, target, positions if len(many.tables) == 1 else None)
            if res.interrupted:
                left = names[names.index(name):]
                sys.stderr.write(f"{PROG}: {name} interrupted after key {format_pk(target.schema, res.last)} "
                                 f"({res.total_rows} rows done); run the same command to resume"
                                 + (f" ({len(left)} of {len(names)} tables left: {','.join(left)})"
                                    if len(names) > 1 else "") + "\n")
                return int(ExitCode.INTERRUPTED)
            done.append((name, res, res.binlog_start))
        if len(many.tables) > 1:
            _summary(many.database, done)
            points = [p for _, _, p in done if p is not None]
            if args.versions == "binlog" and len(points) == len(done):
                note = (await store_binlog_start(positions, points) if positions is not None else
                        f"start sync-binlog with --start {min(points, key=lambda p: p.seq).gtid}")
                sys.stderr.write(f"{PROG}: {note}; next: sync-binlog --table {','.join(names)} "
                                 "(same --key-template)\n")
        return int(ExitCode.OK)
    finally:
        await many.close()


async def _one_table(args: argparse.Namespace, target: TableTarget, positions: Any) -> SnapshotResult:
    """Copy one table with a progress display; prints its notes and, when done, its line."""
    from sync.rows.reader import TableReader, estimate_rows, format_pk
    from sync.tools.display import ProgressDisplay
    from sync.tools.progress import ProgressStore
    from sync.tools.snapshot import Snapshot, Versions

    schema = target.schema
    reader = TableReader(target.conn, schema)
    snap = Snapshot(reader, target.applier(), ProgressStore(target.redis, schema.name), target.spec,
                    chunk=args.chunk, versions=Versions(args.versions), binlog_positions=positions)
    after, done, _, notes = await snap.start_point(args.restart)
    for note in notes:
        sys.stderr.write(f"{PROG}: {note}\n")
    if after is not None:
        sys.stderr.write(f"{PROG}: {schema.name} resuming after key {format_pk(schema, after)} ({done} rows done)\n")
    total = estimate_rows(target.conn, schema)
    tty = {"auto": None, "bar": True, "log": False}[args.progress]
    display = bar = ProgressDisplay(f"snapshot {schema.name}", total, tty=tty, done=done)
    try:
        stop_on_signals(snap.request_stop)
        res = await snap.run(on_progress=lambda n, last: bar.update(n, format_pk(schema, last)))
    finally:
        display.close()
    for note in res.notes[len(notes):]:
        sys.stderr.write(f"{PROG}: {note}\n")
    if res.binlog_start is not None:
        sys.stderr.write(f"{PROG}: binlog point of this snapshot: GTID {res.binlog_start.gtid}"
                         + (f" (this run read at {res.binlog_read_at.gtid})"
                            if res.binlog_read_at and res.binlog_read_at != res.binlog_start else "") + "\n")
    if res.interrupted:
        return res
    rate = res.rows / res.elapsed_s if res.elapsed_s > 0 else 0.0
    sys.stderr.write(
        f"{PROG}: {schema.database}.{schema.name}: {res.rows} rows copied in {res.elapsed_s:.1f}s "
        f"({rate:,.0f} rows/s; {res.stale} already newer in Redis); {res.total_rows} rows in total\n"
    )
    if res.binlog_start is not None and res.position_note is not None:
        sys.stderr.write(f"{PROG}: {res.position_note}; next: sync-binlog --table {schema.name} "
                         f"--start {res.binlog_start.gtid} (same --key-template)\n")
    return res


def _summary(database: str, done: list[Done]) -> None:
    """One line per table and the totals, after several tables."""
    results = [r for _, r, _ in done if r is not None]
    rows = sum(r.rows for r in results)
    total = sum(r.total_rows for r in results)
    secs = sum(r.elapsed_s for r in results)
    sys.stderr.write(f"{PROG}: summary of {database}: {len(done)} tables, {rows} rows copied in {secs:.1f}s, "
                     f"{total} rows in total\n")
    for name, r, _ in done:
        what = f"{r.rows} rows copied, {r.total_rows} in total" if r is not None else "copied by the interrupted run"
        sys.stderr.write(f"  {name}: {what}\n")


if __name__ == "__main__":
    main()
