"""`sync-bench binlog`: sync-binlog's catch-up rate vs mysql-replication's own (pure-Python) decode.

Starts a throwaway MariaDB (ROW, FULL metadata), redis-server and gearmand; writes --updates
single-row autocommit UPDATEs of a --rows-row table into the binlog first; then, from the GTID
before them, times reading that stretch of binlog to its end:

    raw               BinLogStreamReader alone (is_mariadb, GTID start, blocking), decoding every
                      row in pure Python: the baseline of every ratio
    redis/DECODER     BinlogService --sink redis: rows → events → Redis (one script call per batch,
                      position in the same call, sent from the reader thread without waiting for
                      the reply), until the saved position reaches the end
    gearman/DECODER   BinlogService --sink gearman: rows → jobs (pipelined from the reader thread)
                      accepted by gearmand → position saved (--job-changes changes per job, as
                      sync-binlog's option; no worker runs, so gearmand holds every job of the runs)

DECODER is each of --decoders (default "c,python"): the row decoder sync-binlog is asked for
through GEARSYNC_BINLOG_DECODER, the one switch (c: the C extension, python: mysql-replication's
decoding). The label shows the decoder the reader really used (a build without the extension
falls back to python, and says so).

Each is run --runs times in turn in this one process; the median rows/s and its ratio to the raw
rate are printed, with the CPU per row of the reader thread alone (the thread that decodes and
writes; CLOCK_THREAD_CPUTIME of that thread) and of the whole process (reader + event loop + this
bench's poller, which looks at the saved position every 10 ms). `--profile` runs each sink once
more under cProfile (reader thread) and prints where its time goes per row, by area and by
function.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sync.events import MAX_BATCH_CHANGES
from sync.settings import JOB_CHANGES


def write_workload(db: Any, rows: int, updates: int) -> tuple[str, str]:
    """Table + rows, then `updates` single-row autocommit UPDATEs; (GTID before, GTID after)."""
    import pymysql
    from pymysql.constants import CLIENT

    db.execute("CREATE DATABASE IF NOT EXISTS bench",
               "CREATE TABLE IF NOT EXISTS bench.data (id INT PRIMARY KEY, volume INT, name VARCHAR(50) "
               "CHARACTER SET utf8mb4, updated_at DATETIME(6))")
    conn = pymysql.connect(host=db.host, port=db.port, user="root", database="bench", autocommit=True,
                           client_flag=CLIENT.MULTI_STATEMENTS)
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM data")
        count = cur.fetchone()
        assert count is not None  # SELECT COUNT(*) returns one row
        if count[0] < rows:
            for lo in range(0, rows, 1000):
                cur.execute("INSERT IGNORE INTO data VALUES " + ",".join(
                    f"({i}, 0, 'row-{i:08d}', NOW(6))" for i in range(lo, min(rows, lo + 1000))))
        cur.execute("SELECT @@gtid_binlog_pos")
        pos = cur.fetchone()
        assert pos is not None  # a SELECT of a variable returns one row
        before = pos[0]
        per_call = 200  # one round trip carries 200 statements, each its own transaction
        for lo in range(0, updates, per_call):
            sql = ";".join(f"UPDATE data SET volume = volume + 1, updated_at = NOW(6) WHERE id = {(lo + j) % rows}"
                           for j in range(min(per_call, updates - lo)))
            cur.execute(sql)
            while cur.nextset():
                pass
        cur.execute("SELECT @@gtid_binlog_pos")
        pos = cur.fetchone()
        assert pos is not None
        after = pos[0]
    conn.close()
    return before, after


def raw_decode(db: Any, start: str, end: str) -> tuple[float, int, float]:
    """(wall seconds, rows, CPU seconds of this thread: it does all the reading)"""
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import MariadbGtidEvent, XidEvent
    from pymysqlreplication.row_event import UpdateRowsEvent

    end_seq = int(end.split("-")[2])
    c0 = time.thread_time()
    t0 = time.perf_counter()
    stream = BinLogStreamReader(
        {"host": db.host, "port": db.port, "user": "root", "password": ""}, server_id=4242, blocking=True,
        is_mariadb=True, auto_position=start, only_events=[UpdateRowsEvent, MariadbGtidEvent, XidEvent],
        only_tables=["data"], only_schemas=["bench"], enable_logging=False,
    )
    rows = 0
    seq = 0
    try:
        for ev in stream:
            if isinstance(ev, UpdateRowsEvent):
                rows += len(ev.rows)
            elif isinstance(ev, MariadbGtidEvent):
                seq = ev.gtid_seq_no
            elif isinstance(ev, XidEvent) and seq >= end_seq:
                break
    finally:
        stream.close()
    return time.perf_counter() - t0, rows, time.thread_time() - c0


DECODER_ENV = "GEARSYNC_BINLOG_DECODER"   # sync.capture.binlog.decoders: c, python (auto: c if built)
AREAS = (  # where the reader's time goes, by the file a profiled function is in (first match)
    ("mysql-replication (packets, table maps, Python row decode)", ("pymysqlreplication",)),
    ("pymysql (socket reads, packet framing)", ("pymysql",)),
    ("C event loop and row decoder (split, headers, CRC32, decode)", ("_rowdecode",)),
    ("reader: rows -> ChangeEvents", ("sync/capture/binlog/reader", "sync/capture/binlog/loop", "sync/capture/binlog/decoders",
                                      "sync/capture/binlog/fkrows", "sync/rows/", "sync/events")),
    ("sink: batches, packing, sends, replies", ("sync/capture/binlog/writer", "sync/gearman/", "sync/apply/",
                                                "sync/signing", "redis/", "orjson")),
)


@dataclass
class ServiceRun:
    seconds: float          # start → the saved position reached the end
    reader_cpu: float       # CPU seconds of the binlog-reader thread
    process_cpu: float      # CPU seconds of this process over the same time
    decoder: str            # the decoder the reader used


def thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds a running thread of this process has used."""
    if thread is None or thread.ident is None:
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (OSError, ProcessLookupError):
        return 0.0


def run_service(db: Any, redis_server: Any, gearmand: Any, sink: str, start: str, end: str, name: str,
                decoder: str, flush_ms: float = 20.0, profile: cProfile.Profile | None = None,
                job_changes: int = JOB_CHANGES) -> ServiceRun:
    """Catch up from `start` to `end` with one BinlogService in a thread (its reader thread profiled
    into `profile` when given), the decoder asked for through DECODER_ENV."""

    from sync.capture.binlog.reader import BinlogSource
    from sync.capture.binlog.service import BinlogService, BinlogSettings
    from sync.mysql import from_url
    from sync.redis_client import RedisSettings

    client = redis_server.client()
    client.flushall()
    settings = BinlogSettings(
        mysql=from_url(db.url + "bench"), database="bench", tables=("data",),
        redis=RedisSettings(url=f"redis://127.0.0.1:{redis_server.port}/0"), sink=sink, start=start,
        servers=((gearmand.host, gearmand.port),), stats_interval_s=0, name=name, flush_ms=flush_ms,
        job_changes=job_changes,
    )
    os.environ[DECODER_ENV] = decoder   # read when the service makes its BinlogSource
    service = BinlogService(settings)
    key = service.positions.key
    done = threading.Event()
    result: dict[str, Any] = {}

    def main() -> None:
        try:
            asyncio.run(service.run())
        except BaseException as exc:  # reported below
            result["error"] = exc
        finally:
            done.set()

    plain_run = BinlogSource.run
    if profile is not None:
        def profiled_run(self: Any, *a: Any, **kw: Any) -> None:
            profile.enable()
            try:
                plain_run(self, *a, **kw)
            finally:
                profile.disable()

        BinlogSource.run = profiled_run  # type: ignore[method-assign]  # profile the reader thread's run() only
    try:
        c0 = time.process_time()
        t0 = time.perf_counter()
        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        elapsed = cpu = reader_cpu = None
        while not done.is_set():
            raw = client.get(key)
            if raw and orjson.loads(raw).get("gtid") == end:
                elapsed = time.perf_counter() - t0
                cpu = time.process_time() - c0
                reader_cpu = thread_cpu(service._thread)
                break
            time.sleep(0.01)
        used = getattr(service.source, "decoder", "python")
        service.request_stop()
        thread.join(60)
    finally:
        BinlogSource.run = plain_run  # type: ignore[method-assign]  # undo the profiling patch
        os.environ.pop(DECODER_ENV, None)
        client.close()
    if "error" in result:
        raise result["error"]
    assert elapsed is not None and cpu is not None and reader_cpu is not None
    return ServiceRun(elapsed, reader_cpu, cpu, str(used))


def _area(filename: str) -> str | None:
    return next((label for label, marks in AREAS if any(m in filename for m in marks)), None)


def profile_report(prof: cProfile.Profile, rows: int, what: str, measured_us: float | None = None,
                   top: int = 15) -> str:
    """Where the profiled reader thread's CPU time went, per row: by area (AREAS; a builtin's time,
    e.g. len() or socket.recv_into, goes to the areas of its callers) and the top functions by
    own time. cProfile's own overhead inflates every figure (several x), the many small calls
    most; `measured_us` (the reader's CPU per row without the profiler) scales the shares back."""
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    by_area: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _line, fn), (_cc, _nc, tottime, _ct, callers) in stats.items():
        total += tottime
        area = _area(f"{filename} {fn}")   # a builtin's name says its type: the C extension's methods
        if area is not None:
            by_area[area] += tottime
            continue
        # A builtin or stdlib function: split its time over its callers' areas.
        attributed = 0.0
        for (cfile, _cl, _cf), caller_times in callers.items():
            carea = _area(cfile)
            if carea is not None:
                by_area[carea] += caller_times[2]
                attributed += caller_times[2]
        by_area["other (stdlib, builtins, gc)"] += max(0.0, tottime - attributed)
    head = f"{1e6 * total / rows:.0f} us/row under the profiler"
    if measured_us:
        head += f", {measured_us:.1f} us/row measured without it (right column: the shares of that)"
    lines = [f"--- {what}: reader thread CPU, {head} ---"]
    for area, secs in sorted(by_area.items(), key=lambda kv: -kv[1]):
        share = secs / total
        real = f"{share * measured_us:8.1f} us/row" if measured_us else ""
        lines.append(f"  {100 * share:5.1f}%  {area:<62}{real}")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    body = out.getvalue()
    lines.append(body[body.find("   ncalls"):].rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sync.logging import setup_logging
    from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

    p = argparse.ArgumentParser(prog="sync-bench binlog", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000, help="table rows (default 10000)")
    p.add_argument("--updates", type=int, default=100_000, help="single-row UPDATEs in the binlog (default 100000)")
    p.add_argument("--runs", type=int, default=3, help="runs of each reader; medians reported (default 3)")
    p.add_argument("--decoders", default="c,python",
                   help="row decoders to run the sinks with, comma-separated: c, python (default c,python)")
    p.add_argument("--sinks", default="redis,gearman", help="sinks, comma-separated (default redis,gearman)")
    p.add_argument("--profile", action="store_true", help="profile one extra run of each sink (first decoder)")
    p.add_argument("--flush-ms", type=float, default=20.0, help="sync-binlog --flush-ms (default 20)")
    p.add_argument("--job-changes", type=int, default=JOB_CHANGES, metavar="N",
                   help=f"sync-binlog --job-changes for --sink gearman: most changes per job (default {JOB_CHANGES}; "
                        "1: a job per change)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)
    decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
    sinks = [k.strip() for k in args.sinks.split(",") if k.strip()]
    for d in decoders:
        if d not in ("c", "python"):
            p.error(f"--decoders: {d!r}; expected c or python")
    for k in sinks:
        if k not in ("redis", "gearman"):
            p.error(f"--sinks: {k!r}; expected redis or gearman")
    if not 1 <= args.job_changes <= MAX_BATCH_CHANGES:
        p.error(f"--job-changes: {args.job_changes}; expected an integer from 1 to {MAX_BATCH_CHANGES}")
    setup_logging("warning", "console")

    times: dict[str, list[float]] = defaultdict(list)
    cpus: dict[str, list[float]] = defaultdict(list)
    reader_cpus: dict[str, list[float]] = defaultdict(list)
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gearsync-bench-binlog-") as tmp:
        base = Path(tmp)
        db = MariaDBServer(base / "mariadb")
        redis_server = RedisServer(base / "redis")
        gearmand = GearmanServer(base / "gearmand")
        db.start()
        redis_server.start()
        gearmand.start()
        try:
            print(f"writing {args.updates} single-row UPDATEs of a {args.rows}-row table …", file=sys.stderr)
            t0 = time.perf_counter()
            start, end = write_workload(db, args.rows, args.updates)
            print(f"  {args.updates / (time.perf_counter() - t0):,.0f} UPDATEs/s; binlog {start} → {end}", file=sys.stderr)
            from sync.capture.binlog.service import tune_gc

            tune_gc()  # what sync-binlog does at start: the raw baseline gets the same setting
            for run in range(args.runs):
                secs, rows, cpu = raw_decode(db, start, end)
                if rows != args.updates:
                    raise SystemExit(f"raw decode saw {rows} rows; expected {args.updates}")
                times["raw"].append(secs)
                cpus["raw"].append(cpu)
                reader_cpus["raw"].append(cpu)
                for decoder in decoders:
                    for sink in sinks:
                        r = run_service(db, redis_server, gearmand, sink, start, end, f"bench-{sink}-{decoder}-{run}",
                                        decoder, flush_ms=args.flush_ms, job_changes=args.job_changes)
                        label = f"{sink}/{r.decoder}" + ("" if r.decoder == decoder else f" (asked {decoder})")
                        times[label].append(r.seconds)
                        cpus[label].append(r.process_cpu)
                        reader_cpus[label].append(r.reader_cpu)
                print(f"  run {run + 1}: " + ", ".join(f"{k} {args.updates / v[-1]:,.0f} rows/s" for k, v in times.items()),
                      file=sys.stderr)
            if args.profile:
                for sink in sinks:
                    prof = cProfile.Profile(time.thread_time)   # CPU of the reader thread, not waits
                    r = run_service(db, redis_server, gearmand, sink, start, end, f"bench-profile-{sink}", decoders[0],
                                    flush_ms=args.flush_ms, profile=prof, job_changes=args.job_changes)
                    measured = [v for k, v in reader_cpus.items() if k == f"{sink}/{r.decoder}"]
                    profiles.append(profile_report(prof, args.updates, f"--sink {sink}, {r.decoder} decoder",
                                                   1e6 * statistics.median(measured[0]) / args.updates if measured else None))
        finally:
            gearmand.stop()
            redis_server.stop()
            db.stop()

    n = args.updates
    rates = {k: n / statistics.median(v) for k, v in times.items()}
    cpu_us = {k: 1e6 * statistics.median(v) / n for k, v in cpus.items()}
    reader_us = {k: 1e6 * statistics.median(v) / n for k, v in reader_cpus.items()}
    load = os.getloadavg()[0]
    jobs = f"; --sink gearman --job-changes {args.job_changes}" if "gearman" in sinks else ""
    print(f"\nsync-binlog catch-up over {n:,} single-row UPDATEs (median of {args.runs}; load {load:.1f}{jobs}):")
    print(f"  {'reader':<46}{'rows/s':>10}{'x raw':>8}{'reader CPU':>12}{'process CPU':>13}{'x raw CPU':>11}")
    print(f"  {'':<46}{'':>10}{'':>8}{'us/row':>12}{'us/row':>13}{'':>11}")
    for k, rate in rates.items():
        label = "mysql-replication decode (raw)" if k == "raw" else f"sync-binlog --sink {k}"
        print(f"  {label:<46}{rate:>10,.0f}{rate / rates['raw']:>8.2f}{reader_us[k]:>12.1f}{cpu_us[k]:>13.1f}"
              f"{reader_us['raw'] / reader_us[k]:>11.2f}")
    gear = {k.split("/", 1)[1]: rates[k] for k in rates if k.startswith("gearman/")}
    for k in rates:
        if k.startswith("redis/") and k.split("/", 1)[1] in gear:
            dec = k.split("/", 1)[1]
            print(f"  --sink gearman / --sink redis ({dec}): {gear[dec] / rates[k]:.2f}")
    print("  (x raw CPU: raw decode's CPU per row over the reader thread's; where each has a core of its own the"
          " rate ratio approaches it; wall-clock rates on a shared machine swing with the load)")
    for report in profiles:
        print("\n" + report)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps({
            "updates": n, "rows": args.rows, "runs": args.runs, "load": load,
            "seconds": times, "cpu_seconds": cpus, "reader_cpu_seconds": reader_cpus, "rows_per_s": rates,
            "cpu_us_per_row": cpu_us, "reader_cpu_us_per_row": reader_us,
            "ratio": {k: rates[k] / rates["raw"] for k in rates},
        }, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
