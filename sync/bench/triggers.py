"""Cost and end-to-end lag of the gearsync capture triggers (`python -m sync.bench triggers`).

Starts a throwaway MariaDB (the UDF library in its plugin dir), gearmand and Redis, fills
`data(id, volume, payload, updated_at)` with 100k rows and measures, per mode (no trigger; gearsync
triggers in udf mode; in outbox mode):

    single   20k single-row autocommit UPDATEs on one connection (UPDATE/s)
    multi    one UPDATE of 10k rows (seconds)

and end to end (a sync-worker process running; for outbox also a sync-relay process):

    e2e      20k single-row UPDATEs while the worker runs (UPDATE/s), then the time from the
             last COMMIT until Redis equals MySQL for every row (lag, seconds)

Medians of --runs runs. Classic recipe for comparison (notes/measured-facts.md): 1,711 UPDATE/s
vs 3,126/s without a trigger; 10k-row UPDATE 2.03 s vs 10.7 ms; 1,125 UPDATE/s end to end with a
lag of 0.047 s.

    python -m sync.bench triggers [--runs 3] [--rows 100000] [--single 20000] [--multi 10000] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import pymysql

from sync.bench.common import BIN, add_update_load_options, run_dir_with_udf, write_json
from sync.bench.udf import multi_row, prepare_bench_table, single_row
from sync.capture.triggers import TriggerOptions, install_statements, uninstall_statements
from sync.rows.expected import expected_entry, expected_state, select_sql
from sync.rows.schema import READ_SESSION_SQL, TableSchema, load_table
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

MODES = ("no trigger", "udf", "outbox")


def set_mode(conn: Any, schema: TableSchema, mode: str) -> None:
    with conn.cursor() as cur:
        for stmt in uninstall_statements(schema):
            cur.execute(stmt)
        if mode != "no trigger":
            for stmt in install_statements(schema, TriggerOptions.for_table("data", mode=mode)):
                cur.execute(stmt)
        cur.execute("DELETE FROM gearsync_spool") if mode != "no trigger" else None


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process, wait up to 15 s each, SIGKILL what is still running."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def redis_matches(db: MariaDBServer, schema: TableSchema, spec: TableSpec, r: Any) -> bool:
    conn = db.connect("bench")
    try:
        expected = expected_state(conn, schema, spec)
    finally:
        conn.close()
    keys = list(expected)
    for i in range(0, len(keys), 5000):
        chunk = keys[i : i + 5000]
        if r.mget(chunk) != [expected[k] for k in chunk]:
            return False
    return True


def end_to_end(db: MariaDBServer, g: GearmanServer, redis: RedisServer, schema: TableSchema, mode: str, ids: list[int],
               settle_s: float) -> tuple[float, float]:
    """UPDATE/s while a sync-worker (and for outbox a sync-relay) runs; lag after the last commit."""
    env = {**os.environ, "GEARSYNC_MYSQL_PASSWORD": "", "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([str(BIN / "sync-worker"), "--table", "data", "--servers", g.address,
                               "--redis-url", redis.url, "--log-format", "json", "--stats-interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    if mode == "outbox":
        procs.append(subprocess.Popen([str(BIN / "sync-relay"), "--database", "bench", "--servers", g.address,
                                       "--mysql-url", f"mysql://root@127.0.0.1:{db.port}/bench",
                                       "--stats-interval", "0", "--log-format", "json"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    r = redis.client()
    spec = TableSpec("data")
    try:
        # The whole table into Redis first (one UPDATE of every row), so "equal" means every row.
        conn = db.connect("bench")
        cur = conn.cursor()
        cur.execute("UPDATE data SET updated_at = NOW(6)")
        deadline = time.monotonic() + 300
        while not redis_matches(db, schema, spec, r):
            if time.monotonic() > deadline:
                raise RuntimeError("Redis did not reach MySQL's state after the initial full-table update")
            time.sleep(0.5)
        time.sleep(settle_s)
        keys = [f"data:{i}" for i in sorted(set(ids))]
        # A poller snapshots the touched keys (a digest per MGET) from the last commit on, so
        # reading MySQL's expected values afterwards does not count as lag.
        snaps: list[tuple[float, int]] = []
        done = threading.Event()
        go = threading.Event()

        def poll() -> None:
            pr = redis.client()
            go.wait()
            while not done.is_set():
                vals = pr.mget(keys)
                snaps.append((time.perf_counter(), hash(tuple(vals))))
                time.sleep(0.001)
            pr.close()

        poller = threading.Thread(target=poll)
        poller.start()
        rate = single_row(cur, ids)
        last_commit = time.perf_counter()
        go.set()
        dconn = db.connect("bench", cursorclass=pymysql.cursors.DictCursor)
        with dconn.cursor() as dcur:
            dcur.execute(READ_SESSION_SQL)
            dcur.execute(select_sql(schema) + " WHERE id IN (" + ",".join(map(str, sorted(set(ids)))) + ")")
            expected = dict(expected_entry(schema, spec, row) for row in dcur.fetchall())
        dconn.close()
        want = hash(tuple(expected[k] for k in keys))
        lag = None
        while lag is None:
            for t, h in list(snaps):
                if h == want:
                    lag = t - last_commit
                    break
            else:
                if time.perf_counter() - last_commit > 300:
                    done.set()
                    raise RuntimeError("Redis did not converge within 300 s")
                time.sleep(0.01)
        done.set()
        poller.join()
        if not redis_matches(db, schema, spec, r):
            raise RuntimeError("Redis differs from MySQL after the touched rows converged")
        cur.close()
        conn.close()
        return rate, lag
    finally:
        stop_processes(procs)
        r.flushall()
        r.close()


def run(args: argparse.Namespace) -> dict:
    base, plugin_dir = run_dir_with_udf("triggers", build=not args.no_build)
    db = MariaDBServer(base / "mariadb", plugin_dir=plugin_dir)
    g = GearmanServer(base / "gearmand")
    redis = RedisServer(base / "redis")
    res: dict[str, dict[str, list[float]]] = {m: {"single_per_s": [], "multi_s": []} for m in MODES}
    e2e: dict[str, dict[str, list[float]]] = {m: {"per_s": [], "lag_s": []} for m in ("udf", "outbox")}
    try:
        db.start(); g.start(); redis.start()  # noqa: E702
        conn = db.connect()
        cur = conn.cursor()
        prepare_bench_table(cur, args.rows, g.address)
        schema = load_table(conn, "bench", "data")
        for stmt in install_statements(schema, TriggerOptions.for_table("data"))[:1]:
            cur.execute(stmt)  # the spool table
        rng = random.Random(42)
        for run_no in range(args.runs):
            for mode in MODES:
                set_mode(conn, schema, mode)
                g.restart()  # an empty queue per mode (in-memory gearmand, nobody drains it here)
                ids = [rng.randrange(1, args.rows + 1) for _ in range(args.single)]
                single = single_row(cur, ids)
                first = rng.randrange(1, args.rows - args.multi + 2)
                multi = multi_row(cur, first, args.multi)
                res[mode]["single_per_s"].append(single)
                res[mode]["multi_s"].append(multi)
                print(f"  run {run_no + 1} {mode:<11} {single:9,.0f} UPDATE/s   10k-row UPDATE {multi:.3f} s",
                      file=sys.stderr)
            for mode in ("udf", "outbox"):
                set_mode(conn, schema, mode)
                g.restart()
                ids = [rng.randrange(1, args.rows + 1) for _ in range(args.single)]
                rate, lag = end_to_end(db, g, redis, schema, mode, ids, settle_s=0.5)
                e2e[mode]["per_s"].append(rate)
                e2e[mode]["lag_s"].append(lag)
                print(f"  run {run_no + 1} e2e {mode:<7} {rate:9,.0f} UPDATE/s   lag {lag:.3f} s", file=sys.stderr)
        cur.close()
        conn.close()
    finally:
        for s in (g, redis, db):
            try:
                s.stop()
            except Exception as exc:  # keep stopping the others
                print(f"stop failed: {exc}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
    return summarize(res, e2e, args)


def summarize(res: dict[str, dict[str, list[float]]], e2e: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> dict:
    med = statistics.median
    base_single = med(res["no trigger"]["single_per_s"])
    out: dict = {"benchmark": "triggers", "rows": args.rows, "single_row_updates": args.single,
                 "multi_row_update_rows": args.multi, "runs": args.runs, "modes": {}, "end_to_end": {},
                 "classic_recipe": {"single_per_s": 1711, "no_trigger_single_per_s": 3126, "multi_s": 2.03,
                                    "no_trigger_multi_s": 0.0107, "e2e_per_s": 1125, "e2e_lag_s": 0.047}}
    for mode, f in res.items():
        out["modes"][mode] = {"single_per_s": round(med(f["single_per_s"]), 1),
                              "single_ratio": round(med(f["single_per_s"]) / base_single, 3),
                              "multi_s": round(med(f["multi_s"]), 4),
                              "single_per_s_runs": [round(x, 1) for x in f["single_per_s"]],
                              "multi_s_runs": [round(x, 4) for x in f["multi_s"]]}
    for mode, f in e2e.items():
        out["end_to_end"][mode] = {"per_s": round(med(f["per_s"]), 1), "lag_s": round(med(f["lag_s"]), 4),
                                   "per_s_runs": [round(x, 1) for x in f["per_s"]],
                                   "lag_s_runs": [round(x, 4) for x in f["lag_s"]]}
    return out


def print_table(out: dict) -> None:
    print(f"\ngearsync capture triggers — medians of {out['runs']} runs, table of {out['rows']:,} rows")
    print(f"{'mode':<14} {'single-row UPDATE/s':>20} {'ratio':>7} {'10k-row UPDATE s':>17}")
    for mode, m in out["modes"].items():
        print(f"{mode:<14} {m['single_per_s']:>20,.0f} {m['single_ratio']:>7.2f} {m['multi_s']:>17.3f}")
    print(f"\nend to end, {out['single_row_updates']:,} single-row UPDATEs, one sync-worker (+ one sync-relay for outbox)")
    print(f"{'mode':<14} {'UPDATE/s':>10} {'lag after last commit s':>25}")
    for mode, m in out["end_to_end"].items():
        print(f"{mode:<14} {m['per_s']:>10,.0f} {m['lag_s']:>25.3f}")
    c = out["classic_recipe"]
    print(f"\nclassic recipe (measured-facts): {c['single_per_s']:,}/s vs {c['no_trigger_single_per_s']:,}/s without "
          f"trigger; 10k-row UPDATE {c['multi_s']} s vs {c['no_trigger_multi_s'] * 1000:.1f} ms; end to end "
          f"{c['e2e_per_s']:,}/s, lag {c['e2e_lag_s']} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sync.bench triggers", description=__doc__.split("\n")[0])
    add_update_load_options(parser)
    args = parser.parse_args(argv)
    if args.multi > args.rows:
        parser.error("--multi must not exceed --rows")
    out = run(args)
    print_table(out)
    write_json(args.json, out)
    return 0
