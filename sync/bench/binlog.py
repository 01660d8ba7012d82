"""`python -m sync.bench binlog`: sync-binlog's catch-up rate vs mysql-replication's own decode rate.

Starts a throwaway MariaDB (ROW, FULL metadata), redis-server and gearmand; writes --updates
single-row autocommit UPDATEs of a --rows-row table into the binlog first; then, from the GTID
before them, times reading that stretch of binlog to its end:

    raw       BinLogStreamReader alone (is_mariadb, GTID start, blocking), decoding every row
    redis     BinlogService --sink redis: rows → events → Redis (one script call per batch,
              position in the same call, sent from the reader thread without waiting for the
              reply), until the saved position reaches the end
    gearman   BinlogService --sink gearman: rows → jobs accepted by gearmand → position saved

Each is run --runs times in turn (raw, redis, gearman, raw, …) in this one process; the median
rows/s and the ratio to the raw rate are printed. Targets: redis >= 0.8x raw, gearman >= 0.7x.
`--profile` runs the redis sink once more under cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson


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
    """(wall seconds, rows, CPU seconds of this process)"""
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import MariadbGtidEvent, XidEvent
    from pymysqlreplication.row_event import UpdateRowsEvent

    end_seq = int(end.split("-")[2])
    c0 = time.process_time()
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
    return time.perf_counter() - t0, rows, time.process_time() - c0


def run_service(db: Any, redis_server: Any, gearmand: Any, sink: str, start: str, end: str, name: str,
                profile: bool = False, flush_ms: float = 20.0) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: reader thread + event loop + this poller)"""

    from sync.capture.binlog.service import BinlogService, BinlogSettings
    from sync.mysql import from_url
    from sync.redis_client import RedisSettings

    client = redis_server.client()
    client.flushall()
    settings = BinlogSettings(
        mysql=from_url(db.url + "bench"), database="bench", tables=("data",),
        redis=RedisSettings(url=f"redis://127.0.0.1:{redis_server.port}/0"), sink=sink, start=start,
        servers=((gearmand.host, gearmand.port),), stats_interval_s=0, name=name, flush_ms=flush_ms,
    )
    service = BinlogService(settings)
    key = service.positions.key
    done = threading.Event()
    result: dict[str, Any] = {}

    loop_prof = cProfile.Profile() if profile else None

    def main() -> None:
        try:
            if loop_prof is not None:
                loop_prof.enable()
            asyncio.run(service.run())
        except BaseException as exc:  # reported below
            result["error"] = exc
        finally:
            if loop_prof is not None:
                loop_prof.disable()
            done.set()

    prof = cProfile.Profile() if profile else None
    if prof is not None:
        # Profile the reader thread (the decoding and the event building; with --sink redis the
        # batches' packing, sends and replies too).
        from sync.capture.binlog.reader import BinlogSource

        plain_run = BinlogSource.run

        def profiled_run(self: Any, *a: Any, **kw: Any) -> None:
            prof.enable()
            try:
                plain_run(self, *a, **kw)
            finally:
                prof.disable()
                BinlogSource.run = plain_run  # type: ignore[method-assign]  # undo the profiling patch below

        BinlogSource.run = profiled_run  # type: ignore[method-assign]  # profile the reader thread's run() only
    c0 = time.process_time()
    t0 = time.perf_counter()
    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    elapsed = None
    while not done.is_set():
        raw = client.get(key)
        if raw and orjson.loads(raw).get("gtid") == end:
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - c0
            break
        time.sleep(0.01)
    service.request_stop()
    thread.join(60)
    if "error" in result:
        raise result["error"]
    for what, pr in (("reader thread", prof), ("event loop thread", loop_prof)):
        if pr is not None:
            out = io.StringIO()
            pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(22)
            print(f"--- {what} ---\n{out.getvalue()}")
    client.close()
    assert elapsed is not None
    return elapsed, cpu


def main(argv: list[str] | None = None) -> int:
    from sync.logging import setup_logging
    from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

    p = argparse.ArgumentParser(prog="python -m sync.bench binlog", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000, help="table rows (default 10000)")
    p.add_argument("--updates", type=int, default=100_000, help="single-row UPDATEs in the binlog (default 100000)")
    p.add_argument("--runs", type=int, default=3, help="runs of each reader; medians reported (default 3)")
    p.add_argument("--profile", action="store_true", help="profile one extra --sink redis run")
    p.add_argument("--flush-ms", type=float, default=20.0, help="sync-binlog --flush-ms (default 20)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)
    setup_logging("warning", "console")

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
            times: dict[str, list[float]] = {"raw": [], "redis": [], "gearman": []}
            cpus: dict[str, list[float]] = {"raw": [], "redis": [], "gearman": []}
            for run in range(args.runs):
                secs, rows, cpu = raw_decode(db, start, end)
                if rows != args.updates:
                    raise SystemExit(f"raw decode saw {rows} rows; expected {args.updates}")
                times["raw"].append(secs)
                cpus["raw"].append(cpu)
                for sink in ("redis", "gearman"):
                    secs, cpu = run_service(db, redis_server, gearmand, sink, start, end, f"bench-{sink}-{run}",
                                            flush_ms=args.flush_ms)
                    times[sink].append(secs)
                    cpus[sink].append(cpu)
                print(f"  run {run + 1}: " + ", ".join(f"{k} {args.updates / v[-1]:,.0f} rows/s" for k, v in times.items()),
                      file=sys.stderr)
            if args.profile:
                run_service(db, redis_server, gearmand, "redis", start, end, "bench-profile", profile=True,
                            flush_ms=args.flush_ms)
        finally:
            gearmand.stop()
            redis_server.stop()
            db.stop()

    rates = {k: args.updates / statistics.median(v) for k, v in times.items()}
    cpu_us = {k: 1e6 * statistics.median(v) / args.updates for k, v in cpus.items()}
    print(f"\nsync-binlog catch-up over {args.updates:,} single-row UPDATEs (median of {args.runs}):")
    print(f"  {'reader':<28}{'rows/s':>12}{'x raw':>9}{'target':>9}{'CPU us/row':>12}{'x raw CPU':>11}")
    targets = {"raw": None, "redis": 0.8, "gearman": 0.7}
    labels = {"raw": "mysql-replication decode", "redis": "sync-binlog --sink redis", "gearman": "sync-binlog --sink gearman"}
    for k, rate in rates.items():
        t = targets[k]
        print(f"  {labels[k]:<28}{rate:>12,.0f}{rate / rates['raw']:>9.2f}{(f'>= {t}' if t else ''):>9}"
              f"{cpu_us[k]:>12.1f}{cpu_us['raw'] / cpu_us[k]:>11.2f}")
    print("  (x raw CPU: the rate ratio this process would reach where it is CPU-bound on its own core;"
          " wall-clock rates on a shared machine swing with the load)")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps({
            "updates": args.updates, "rows": args.rows, "runs": args.runs,
            "seconds": times, "cpu_seconds": cpus, "rows_per_s": rates, "cpu_us_per_row": cpu_us,
            "ratio": {k: rates[k] / rates["raw"] for k in rates},
        }, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
