"""`python -m sync.bench snapshot`: sync-snapshot and sync-verify of the `data` table, rows/s and peak RSS.

Starts a throwaway MariaDB and Redis, fills `data` (id INT PK, volume INT, name VARCHAR(64),
updated_at DATETIME, score DOUBLE) with INSERT … SELECT FROM seq_1_to_N for each --rows size,
then runs the real `sync-snapshot` and `sync-verify` processes (--runs times each, Redis flushed
before every snapshot) and reports the median rows/s and the peak RSS of the process (its
ru_maxrss, read with os.wait4). RSS should not grow with the table size: memory is bounded by
the chunk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from sync.testing.servers import MariaDBServer, RedisServer


def fill(db: MariaDBServer, rows: int) -> None:
    db.execute(
        "DROP TABLE IF EXISTS data",
        "CREATE TABLE data (id INT PRIMARY KEY, volume INT, name VARCHAR(64), updated_at DATETIME, score DOUBLE)",
        f"INSERT INTO data SELECT seq, seq % 1000, CONCAT('row-', LPAD(seq, 8, '0')), "
        f"'2026-01-01' + INTERVAL seq SECOND, seq / 7 FROM seq_1_to_{rows}",
        "ANALYZE TABLE data",
        database="bench",
    )


def run_process(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int, bytes]:
    """(seconds, exit code, peak RSS in KiB, stderr) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, proc.returncode, usage.ru_maxrss, err


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sync.bench snapshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="100000,1000000", help="table sizes, comma-separated (default 100000,1000000)")
    p.add_argument("--runs", type=int, default=3, help="runs per size (median reported; default 3)")
    p.add_argument("--chunk", type=int, default=5000)
    p.add_argument("--no-verify", action="store_true", help="skip the sync-verify runs")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.rows.split(",")]
    bindir = Path(sys.executable).parent
    results = []
    with tempfile.TemporaryDirectory(prefix="gearsync-bench-") as tmp:
        db = MariaDBServer(Path(tmp) / "db")
        r = RedisServer(Path(tmp) / "redis")
        with db, r:
            db.execute("CREATE DATABASE bench")
            env = {**os.environ, "GEARSYNC_MYSQL_URL": f"mysql://root@127.0.0.1:{db.port}/bench",
                   "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{r.port}/0"}
            client = r.client()
            for n in sizes:
                t0 = time.perf_counter()
                fill(db, n)
                print(f"{n} rows: table filled in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
                snap, vrf = [], []
                for _ in range(args.runs):
                    client.flushall()
                    secs, code, rss, err = run_process(
                        [str(bindir / "sync-snapshot"), "--table", "data", "--chunk", str(args.chunk),
                         "--progress", "log", "--log-level", "warning"], env)
                    if code != 0:
                        raise RuntimeError(f"sync-snapshot exited {code}: {err.decode()[-2000:]}")
                    snap.append((n / secs, rss))
                    print(f"  snapshot {n / secs:,.0f} rows/s, peak RSS {rss / 1024:.1f} MiB", file=sys.stderr)
                if not args.no_verify:
                    for _ in range(args.runs):
                        secs, code, rss, err = run_process(
                            [str(bindir / "sync-verify"), "--table", "data", "--chunk", str(args.chunk),
                             "--progress", "log"], env)
                        if code != 0:
                            raise RuntimeError(f"sync-verify exited {code}: {err.decode()[-2000:]}")
                        vrf.append((n / secs, rss))
                        print(f"  verify   {n / secs:,.0f} rows/s, peak RSS {rss / 1024:.1f} MiB", file=sys.stderr)
                results.append({
                    "rows": n,
                    "snapshot_rows_per_s": round(statistics.median(x for x, _ in snap)),
                    "snapshot_peak_rss_mib": round(max(m for _, m in snap) / 1024, 1),
                    "verify_rows_per_s": round(statistics.median(x for x, _ in vrf)) if vrf else None,
                    "verify_peak_rss_mib": round(max(m for _, m in vrf) / 1024, 1) if vrf else None,
                })
            client.close()
    print(f"{'rows':>10} {'snapshot rows/s':>16} {'snapshot RSS':>13} {'verify rows/s':>14} {'verify RSS':>11}")
    for x in results:
        print(f"{x['rows']:>10} {x['snapshot_rows_per_s']:>16,} {x['snapshot_peak_rss_mib']:>10} MiB "
              f"{x['verify_rows_per_s'] or 0:>14,} {x['verify_peak_rss_mib'] or 0:>8} MiB")
    print("(rows/s: whole process run, start-up included; medians of "
          f"{args.runs} runs; RSS: the largest ru_maxrss)")
    if args.json:
        Path(args.json).write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
