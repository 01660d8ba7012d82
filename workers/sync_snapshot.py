"""`sync-snapshot`: copy a table's existing rows into Redis (bootstrap), resumable, safe with capture live."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sync.cli import (
    ExitCode,
    Output,
    add_config_option,
    add_logging_options,
    add_mysql_options,
    add_redis_options,
    add_table_options,
    make_parser,
    run,
    stop_on_signals,
    table_target_options,
)
from sync.settings import Resolver, config_for, resolve_logging

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
environment (each also a key of --config, which can hold the [snapshot] options and the
[tables.NAME] sections; docs/configuration.md):
  GEARSYNC_MYSQL_URL / GEARSYNC_MYSQL_HOST, _PORT, _USER, _DATABASE; GEARSYNC_MYSQL_PASSWORD
  GEARSYNC_REDIS_URL, GEARSYNC_REDIS_PASSWORD
  Options override the environment, which overrides --config. Without --table: every
  [tables.NAME] of --config.

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

exit codes: 0 done, 2 bad option, config file or table, 3 MySQL or Redis unreachable,
130 interrupted (the progress is saved: run again to resume). With --log-format json, stderr
carries only JSON lines (the progress and notes as events).
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    add_table_options(p, table_help='table(s) to copy (NAME or DB.NAME), one after another; repeatable',
                      columns_help='only these columns (the key columns are always included); with one table only')
    p.add_argument("--chunk", type=int, metavar="N", help="rows per query and per saved step (default 5000)")
    add_mysql_options(p)
    add_redis_options(p)
    p.add_argument("--key-template", metavar="T", help="Redis key of a row, as for sync-worker (default '{table}:{pk}')")
    p.add_argument("--format", choices=("json", "hash"), help="json or hash, as for sync-worker (default json)")
    p.add_argument("--ttl", type=int, metavar="S", help="expire row keys after S seconds, as for sync-worker")
    add_config_option(p)
    p.add_argument("--versions", choices=("trigger", "binlog"),
                   help="which change source's versions the snapshot must order against (default trigger)")
    p.add_argument("--binlog-name", metavar="NAME",
                   help="--versions binlog: sync-binlog stream (its --name) whose saved position is set to the "
                        "snapshot's GTID point when done (default: the name sync-binlog uses for this one table; "
                        "'-' = only print the point)")
    p.add_argument("--restart", action="store_true", help="ignore a saved resume point and start from the first row")
    p.add_argument("--progress", choices=("auto", "bar", "log"),
                   help="progress bar (auto: on a terminal; the default) or a log line every 10 s")
    add_logging_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> int:
        cfg = config_for(args)
        logging = resolve_logging(args, None, cfg)
        logging.apply()
        r = Resolver(args, None, cfg)
        args.chunk, args.versions, args.progress = (r.get("snapshot", k) for k in ("chunk", "versions", "progress"))
        return asyncio.run(_snapshot(args, Output(PROG, logging.json)))

    run(PROG, go, argv)


async def _snapshot(args: argparse.Namespace, out: Output) -> int:
    from sync.rows.reader import format_pk
    from sync.tools.progress import ProgressStore
    from sync.tools.snapshot import finished_in_interrupted_run, open_tables, store_binlog_start

    many = open_tables(**table_target_options(args))
    names = [t.schema.name for t in many.tables]
    try:
        for name, why in many.skipped:
            out.say("table_skipped", f"skipped {many.database}.{name}: {why}", database=many.database, table=name,
                    reason=why)
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
                out.say("snapshot_already_done", f"{many.database}.{name}: already copied by the interrupted run; "
                        "skipped (--restart copies it again)", database=many.database, table=name)
                done.append((name, None, await ProgressStore(many.redis, name).load_binlog_start()))
                continue
            res = await _one_table(args, out, target, positions if len(many.tables) == 1 else None)
            if res.interrupted:
                left = names[names.index(name):]
                at = format_pk(target.schema, res.last)
                out.say("snapshot_interrupted", f"{name} interrupted after key {at} "
                        f"({res.total_rows} rows done); run the same command to resume"
                        + (f" ({len(left)} of {len(names)} tables left: {','.join(left)})" if len(names) > 1 else ""),
                        table=name, after_key=at, rows_done=res.total_rows, tables_left=left)
                return int(ExitCode.INTERRUPTED)
            done.append((name, res, res.binlog_start))
        if len(many.tables) > 1:
            _summary(out, many.database, done)
            points = [p for _, _, p in done if p is not None]
            if args.versions == "binlog" and len(points) == len(done):
                note = (await store_binlog_start(positions, points) if positions is not None else
                        f"start sync-binlog with --start {min(points, key=lambda p: p.seq).gtid}")
                out.say("snapshot_next_step", f"{note}; next: sync-binlog --table {','.join(names)} "
                        "(same --key-template)", note=note, next=f"sync-binlog --table {','.join(names)}")
        return int(ExitCode.OK)
    finally:
        await many.close()


async def _one_table(args: argparse.Namespace, out: Output, target: TableTarget, positions: Any) -> SnapshotResult:
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
        out.say("snapshot_note", note, table=schema.name, note=note)
    if after is not None:
        at = format_pk(schema, after)
        out.say("snapshot_resuming", f"{schema.name} resuming after key {at} ({done} rows done)", table=schema.name,
                after_key=at, rows_done=done)
    total = estimate_rows(target.conn, schema)
    display = bar = ProgressDisplay(f"snapshot {schema.name}", total, tty=out.progress_tty(args.progress), done=done)
    try:
        stop_on_signals(snap.request_stop)
        res = await snap.run(on_progress=lambda n, last: bar.update(n, format_pk(schema, last)))
    finally:
        display.close()
    for note in res.notes[len(notes):]:
        out.say("snapshot_note", note, table=schema.name, note=note)
    if res.binlog_start is not None:
        read_at = res.binlog_read_at.gtid if res.binlog_read_at and res.binlog_read_at != res.binlog_start else None
        out.say("snapshot_binlog_start", f"binlog point of this snapshot: GTID {res.binlog_start.gtid}"
                + (f" (this run read at {read_at})" if read_at else ""), table=schema.name, gtid=res.binlog_start.gtid,
                read_at=read_at)
    if res.interrupted:
        return res
    rate = res.rows / res.elapsed_s if res.elapsed_s > 0 else 0.0
    out.say("snapshot_table_done",
            f"{schema.database}.{schema.name}: {res.rows} rows copied in {res.elapsed_s:.1f}s "
            f"({rate:,.0f} rows/s; {res.stale} already newer in Redis); {res.total_rows} rows in total",
            database=schema.database, table=schema.name, rows=res.rows, elapsed_s=round(res.elapsed_s, 3),
            rows_per_s=round(rate), stale=res.stale, total_rows=res.total_rows)
    if res.binlog_start is not None and res.position_note is not None:
        out.say("snapshot_next_step", f"{res.position_note}; next: sync-binlog --table {schema.name} "
                f"--start {res.binlog_start.gtid} (same --key-template)", note=res.position_note,
                next=f"sync-binlog --table {schema.name} --start {res.binlog_start.gtid}")
    return res


def _summary(out: Output, database: str, done: list[Done]) -> None:
    """One line per table and the totals, after several tables."""
    results = [r for _, r, _ in done if r is not None]
    rows = sum(r.rows for r in results)
    total = sum(r.total_rows for r in results)
    secs = sum(r.elapsed_s for r in results)
    per_table = {name: (f"{r.rows} rows copied, {r.total_rows} in total" if r is not None
                        else "copied by the interrupted run") for name, r, _ in done}
    out.say("snapshot_summary", f"summary of {database}: {len(done)} tables, {rows} rows copied in {secs:.1f}s, "
            f"{total} rows in total" + "".join(f"\n  {name}: {what}" for name, what in per_table.items()),
            database=database, tables=len(done), rows=rows, elapsed_s=round(secs, 3), total_rows=total,
            per_table=per_table)


if __name__ == "__main__":
    main()
