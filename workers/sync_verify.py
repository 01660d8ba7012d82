"""`sync-verify`: is Redis equal to MySQL for a table? Missing, extra and different keys; --repair fixes them."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

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
    table_target_options,
)
from sync.settings import Resolver, config_for, resolve_logging

if TYPE_CHECKING:  # for annotations only; the commands import these inside the functions that use them
    from sync.rows.schema import TableSchema
    from sync.tools.snapshot import TableTarget
    from sync.tools.verify import VerifyReport

PROG = "sync-verify"

DESCRIPTION = """\
Compare a MySQL table with what Redis holds for it, chunk by chunk (bounded memory).

Each row is mapped to its Redis key and value exactly as sync-worker and sync-snapshot write it
(same --key-template/--format/--config), and read back from Redis in pipelined batches:
  missing    the row's key is absent from Redis
  different  the key holds another value (or another type)
  extra      a key of the table's key pattern with no row in MySQL (SCAN MATCH, gearsync's own
             keys skipped)
  index      a table's zset/set indexes ([tables.NAME] indexes, docs/shaping.md): an entry
             missing, extra or with the wrong score
Differences are checked again once after --recheck-delay seconds, so a change still in flight
is not reported. --repair fixes them through the fenced applier: rows are re-read under a shared
lock with a fresh UUID_SHORT() version and re-applied, extra keys deleted with a fenced delete,
so a repair racing a live change never wins.

--repair --reset-versions is the way back from a poisoned version fence (gearmand has no
authentication: a forged job with version 18446744073709551615 makes Redis refuse every real
change of its row, and plain --repair too; GEARSYNC_JOB_KEY signing prevents it). Each DIFFERING
row (and extra key) first loses its version key, then is repaired as above with a fresh
UUID_SHORT() version, so later real changes apply again; equal rows are not touched. Its cost: the
stored version is discarded whatever it was, and if the run stops between that delete and the
write, the row is briefly unfenced (an older redelivered change could land); run it while writers
are quiet, and run sync-verify again after.

--repair --versions binlog: for a table synced by sync-binlog (MariaDB, log_bin on). Its versions
come from the commit position (GTID), far below UUID_SHORT(): a row repaired with UUID_SHORT()
would refuse every later binlog change of it. With binlog versions each repair takes, under the
same row lock, the server's current GTID position: newer than every change the row already holds,
older than any change committed after it. Add --reset-versions to heal a poisoned binlog table.
"""

EPILOG = """\
environment: GEARSYNC_MYSQL_URL / GEARSYNC_MYSQL_*, GEARSYNC_REDIS_URL, GEARSYNC_REDIS_PASSWORD (as
sync-snapshot; each also a key of --config, which can hold the [verify] options and the
[tables.NAME] sections: docs/configuration.md). Without --table: every [tables.NAME] of --config.

examples:
  sync-verify --table data
  sync-verify --table data --repair
  sync-verify --table data --repair --reset-versions  # after a forged job poisoned rows' versions
  sync-verify --table data --repair --versions binlog  # a table synced by sync-binlog
  sync-verify --table data --sample 10000 --json     # 10k random rows, a JSON report on stdout
  sync-verify --table data,users                     # one after another, then a summary
  sync-verify --all-tables --config gearsync.toml    # each table's [tables.NAME] settings

Several tables (--table a,b, repeated --table, --all-tables): each is checked and reported in turn,
then a summary (per table rows, missing, different, extra; totals); --json prints one object
{"equal", "tables": [...], "totals", "skipped"}. Options apply to every table; with --config, a
table's [tables.NAME] gives what the options leave unset.

exit codes: 0 equal, 1 differences remain (in any table), 2 bad option, config file or table,
3 MySQL or Redis unreachable.
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, EPILOG)
    add_table_options(p, table_help='table(s) to check (NAME or DB.NAME), one after another; repeatable',
                      columns_help='only these columns, as given to sync-snapshot (one table only)')
    p.add_argument("--repair", action="store_true", help="fix missing, different and extra keys (fenced)")
    p.add_argument("--reset-versions", action="store_true",
                   help="with --repair: delete the version key of each differing row first, so a poisoned "
                        "(forged, too new) version cannot block the repair; see above for its cost")
    p.add_argument("--versions", choices=("trigger", "binlog"),
                   help="versions --repair writes: trigger (UUID_SHORT(), the default) or binlog (the GTID "
                        "position, for tables synced by sync-binlog)")
    p.add_argument("--sample", type=int, metavar="N", help="check N random rows (and the first N keys for extras)")
    p.add_argument("--chunk", type=int, metavar="N", help="rows per MySQL query / Redis pipeline (default 5000)")
    p.add_argument("--no-extra", action="store_const", const=False, dest="extra",
                   help="do not scan Redis for extra keys")
    p.add_argument("--recheck-delay", type=float, metavar="S",
                   help="seconds to wait before checking differences again (default 1; 0 = at once)")
    add_mysql_options(p)
    add_redis_options(p)
    p.add_argument("--key-template", metavar="T", help="Redis key of a row, as for sync-worker (default '{table}:{pk}')")
    p.add_argument("--format", choices=("json", "hash"), help="json or hash, as for sync-worker (default json)")
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--progress", choices=("auto", "bar", "log"),
                   help="progress bar (auto: on a terminal; the default) or a log line every 10 s")
    add_logging_options(p, level="warning")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> int:
        cfg = config_for(args)
        logging = resolve_logging(args, None, cfg)
        logging.apply()
        r = Resolver(args, None, cfg)
        for key, dest in (("chunk", "chunk"), ("recheck_delay_s", "recheck_delay"), ("extra", "extra"),
                          ("progress", "progress"), ("versions", "versions")):
            setattr(args, dest, r.get("verify", key, dest))
        return asyncio.run(_verify(args, Output(PROG, logging.json)))

    run(PROG, go, argv)


async def _verify(args: argparse.Namespace, out: Output) -> int:
    from sync.tools.snapshot import open_tables

    many = open_tables(**table_target_options(args))
    reports: list[tuple[TableSchema, VerifyReport]] = []
    try:
        for name, why in many.skipped:
            out.say("table_skipped", f"skipped {many.database}.{name}: {why}", database=many.database, table=name,
                    reason=why)
        for target in many.tables:
            report = await _one_table(args, out, target)
            reports.append((target.schema, report))
            if not args.json:
                _print(target.schema, report, args.repair)
    finally:
        await many.close()
    equal = all(r.equal for _, r in reports)
    if args.json:
        tables = [{"table": f"{s.database}.{s.name}", **r.as_dict()} for s, r in reports]
        doc: dict[str, Any] = tables[0] if len(tables) == 1 else {
            "equal": equal, "tables": tables, "totals": _totals(reports),
            "skipped": [{"table": f"{many.database}.{n}", "reason": why} for n, why in many.skipped]}
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    elif len(reports) > 1:
        _summary(many.database, reports, args.repair)
    return int(ExitCode.OK if equal else ExitCode.DIFFERENCES)


async def _one_table(args: argparse.Namespace, out: Output, target: TableTarget) -> VerifyReport:
    from sync.rows.reader import TableReader, estimate_rows
    from sync.tools.display import ProgressDisplay
    from sync.tools.snapshot import Versions
    from sync.tools.verify import Verifier

    schema = target.schema
    verifier = Verifier(TableReader(target.conn, schema), target.redis, target.spec,
                        target.applier() if args.repair else None, chunk=args.chunk, repair=args.repair,
                        sample=args.sample, recheck_delay_s=args.recheck_delay, check_extra=args.extra,
                        reset_versions=args.reset_versions, versions=Versions(args.versions))
    tty = out.progress_tty(args.progress)
    total = args.sample or estimate_rows(target.conn, schema)
    display = ProgressDisplay(f"verify {schema.name}", total, tty=tty)
    state = {"phase": "rows"}

    def progress(phase: str, n: int) -> None:
        nonlocal display
        if phase != state["phase"]:
            state["phase"] = phase
            display.close()
            display = ProgressDisplay(f"extra keys {schema.name}", None, tty=tty)
        display.update(n)

    try:
        return await verifier.run(progress)
    finally:
        display.close()


KINDS = ("rows", "missing", "different", "extra", "repaired", "deleted")


def _totals(reports: list[tuple[TableSchema, VerifyReport]]) -> dict[str, int]:
    return {k: sum(getattr(r, k) for _, r in reports) for k in KINDS}


def _summary(database: str, reports: list[tuple[TableSchema, VerifyReport]], repair: bool) -> None:
    """After several tables: one line per table, then the totals."""
    out = sys.stdout
    differing = [s.name for s, r in reports if not r.equal]
    out.write(f"summary of {database}: {len(reports)} tables, "
              + (f"{len(differing)} differ ({', '.join(differing)})" if differing else "all equal") + "\n")
    for s, r in reports:
        out.write(f"  {s.name}: {r.rows} rows, {r.missing} missing, {r.different} different, {r.extra} extra\n")
    t = _totals(reports)
    out.write(f"  total: {t['rows']} rows, {t['missing']} missing, {t['different']} different, {t['extra']} extra"
              + (f"; repaired {t['repaired']} rows, deleted {t['deleted']} keys" if repair else "")
              + "\n")


def _print(schema: TableSchema, report: VerifyReport, repair: bool) -> None:
    out = sys.stdout
    what = "equal" if report.equal else f"{report.differences} differences"
    out.write(f"{schema.database}.{schema.name}: {report.rows} rows, {report.keys_scanned} Redis keys scanned: {what} "
              f"({report.elapsed_s:.1f}s)\n")
    for kind in ("missing", "different", "extra"):
        n = getattr(report, kind)
        if n:
            out.write(f"  {kind}: {n}\n")
            for ex in report.examples[kind]:
                out.write(f"    {ex}\n")
    if report.index_missing + report.index_extra + report.index_wrong:
        out.write(f"  index: {report.index_missing} missing, {report.index_wrong} wrong, {report.index_extra} extra\n")
        for ex in report.examples["index"]:
            out.write(f"    {ex}\n")
    if report.settled:
        out.write(f"  settled on recheck (changes in flight): {report.settled}\n")
    if repair:
        out.write(f"  repaired: {report.repaired} rows re-applied, {report.deleted} extra keys deleted"
                  + (f", {report.repair_stale} superseded by newer changes" if report.repair_stale else "")
                  + (f", {report.versions_reset} version keys reset" if report.versions_reset else "")
                  + (f", {report.index_repaired} index entries fixed" if report.index_repaired else "") + "\n")
    for note in report.notes:
        out.write(f"  note: {note}\n")


if __name__ == "__main__":
    main()
