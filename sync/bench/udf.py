"""Trigger overhead of the gearsync UDFs (`make bench-udf`).

Starts a throwaway MariaDB (the library copied into its plugin dir) and gearmand, fills
`data(id, volume, payload, updated_at)` with 100k rows and measures, in three modes:

    no trigger            the baseline
    trigger without UDFs  the same trigger computing CONCAT_WS(...) instead: MariaDB's own trigger cost
    trigger, gearmand up  AFTER UPDATE trigger: gman_do_background('syncToRedis',
                          gman_json_object(NEW.id AS id, NEW.volume AS volume, ...))
    trigger, up, signed   "gearmand up" with the key file gearsync_udf.key beside the library: every
                          job carries its HMAC-SHA256 (docs/security.md); the cost of signing
    trigger, up, journal=0  "gearmand up" with the library's journal off (unacknowledged jobs in
                          memory only, lost if mysqld is killed): the cost of the journal
    trigger, gearmand down  the same trigger, gearmand stopped (each call returns NULL fast)

20k single-row autocommit UPDATEs per run on one connection (UPDATE/s) and one UPDATE of 10k rows
(seconds), 3 runs.  The machine may be shared, so the modes are interleaved: single-row UPDATEs in
slices of 2,000 rotating through the modes (median over all slices), the 10k-row UPDATEs one per
mode per run (median of the runs).  "gearmand down" points the library at a port nothing listens on.

    python -m sync.bench udf [--runs 3] [--rows 100000] [--single 20000] [--multi 10000] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sync.bench.common import LIBRARY, add_update_load_options, run_dir_with_udf, write_json
from sync.capture.udf_install import INSTALL_SQL, read_statements, write_key_file
from sync.signing import KEY_FILE_NAME
from sync.testing.servers import GearmanServer, MariaDBServer, free_port

UP = "trigger, gearmand up"
UP_CONFIRMED = "trigger, up, pipeline=0"
UP_SIGNED = "trigger, up, signed"
UP_NO_JOURNAL = "trigger, up, journal=0"
MODES = ("no trigger", "trigger without UDFs", UP, UP_NO_JOURNAL, UP_SIGNED, UP_CONFIRMED, "trigger, gearmand down")
UP_MODES = (UP, UP_NO_JOURNAL, UP_SIGNED, UP_CONFIRMED)
# "up" is the default, pipelined submit (pipeline=1: the library holds each job until gearmand
# acknowledges it); "pipeline=0" is the opt-in mode that waits for JOB_CREATED on every row
# (udf/README.md).

# the same trigger shape with no UDF in it: what MariaDB itself charges for a row trigger
PLAIN_TRIGGER = """
CREATE TRIGGER data_sync AFTER UPDATE ON data FOR EACH ROW
DO CONCAT_WS(',', 'data', NEW.id, NEW.volume, NEW.payload, NEW.updated_at)
"""

TRIGGER = """
CREATE TRIGGER data_sync AFTER UPDATE ON data FOR EACH ROW
DO gman_do_background('syncToRedis', gman_json_object(
    'data' AS `table`, NEW.id AS id, NEW.volume AS volume, NEW.payload AS payload,
    NEW.updated_at AS updated_at))
"""


def gearmand_queued(server: GearmanServer, function: str) -> int:
    """Jobs gearmand holds for `function` (admin `status`), 0 if it is not known."""
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(b"status\n")
        data = b""
        while not data.endswith(b".\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    for line in data.decode().splitlines():
        parts = line.split("\t")
        if parts[0] == function and len(parts) >= 2:
            return int(parts[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def set_signing(plugin_dir: Path, on: bool) -> None:
    """Put the key file beside the library (or remove it), then wait until the library has looked at
    it again (it stat()s the file at most once a GS_KEY_RECHECK_MS, 1 s). The wait comes before every
    mode, changed or not: a slice right after an idle second runs colder (caches, CPU clock), and
    only the signed mode's neighbours would pay for it otherwise."""
    path = plugin_dir / KEY_FILE_NAME
    if on and not path.exists():
        write_key_file(plugin_dir, secrets.token_hex(32).encode(), None)
    elif not on and path.exists():
        path.unlink()
    time.sleep(1.2)


def set_mode(cur: Any, mode: str, gearmand: GearmanServer, dead_address: str,
             queued: list[int], options: str = "", plugin_dir: Path | None = None) -> None:
    """Switch modes: the trigger is dropped/created, and "gearmand down" points the library at a port
    nothing listens on (connection refused, as for a stopped gearmand).

    "gearmand up" starts from a fresh gearmand: with no worker draining it, jobs pile up, and
    gearmand's job hash table (--hashtable-buckets, default 991) makes every submit slower as the
    queue grows (a 10k-row UPDATE took ~0.1 s against an empty queue, ~0.3 s with 60k queued).  The
    jobs it held are counted first (`queued`)."""
    if plugin_dir is not None:
        set_signing(plugin_dir, mode == UP_SIGNED)
    if mode in UP_MODES:
        # everything sent so far acknowledged (coalesced and pipelined jobs included) before the
        # count; otherwise jobs still in flight are queued after it and go with the restart
        cur.execute("SELECT gman_flush()")
        queued.append(gearmand_queued(gearmand, "syncToRedis"))
        gearmand.restart()
    cur.execute("DROP TRIGGER IF EXISTS data_sync")
    if mode == "trigger without UDFs":
        cur.execute(PLAIN_TRIGGER)
    elif mode != "no trigger":
        cur.execute(TRIGGER)
    address = dead_address if mode == "trigger, gearmand down" else gearmand.address
    cur.execute("SELECT gman_flush()")  # nothing pipelined carries over into the next mode
    mode_option = "pipeline=0" if mode == UP_CONFIRMED else "pipeline=1"
    mode_option += ",journal=0" if mode == UP_NO_JOURNAL else ",journal=1"  # options persist: set it each time
    cur.execute("SELECT gman_servers_set(%s, %s)", (address, ",".join(filter(None, (options, mode_option)))))


def prepare_bench_table(cur: Any, rows: int, gearmand_address: str | None = None) -> None:
    """The benchmarks' common start: the UDFs created (sql/install-udf.sql), the job servers set when
    given, and `bench.data(id, volume, payload, updated_at)` filled with `rows` rows; `cur` is left
    in database `bench`."""
    for stmt in read_statements(INSTALL_SQL):
        cur.execute(stmt)
    if gearmand_address is not None:
        cur.execute("SELECT gman_servers_set(%s)", (gearmand_address,))
    cur.execute("CREATE DATABASE bench")
    cur.execute("USE bench")
    cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT NOT NULL, payload VARCHAR(64) NOT NULL, "
                "updated_at DATETIME(6) NOT NULL) ENGINE=InnoDB")
    cur.execute(f"INSERT INTO data SELECT seq, seq % 1000, CONCAT('payload-', seq), NOW(6) "
                f"FROM seq_1_to_{int(rows)}")


def single_row(cur: Any, ids: list[int]) -> float:
    """UPDATE one row per autocommit statement; returns statements per second."""
    stmt = "UPDATE data SET volume = volume + 1, updated_at = NOW(6) WHERE id = %s"
    start = time.perf_counter()
    for i in ids:
        cur.execute(stmt, (i,))
    return len(ids) / (time.perf_counter() - start)


def multi_row(cur: Any, first: int, n: int) -> float:
    """One UPDATE of n rows; returns seconds."""
    start = time.perf_counter()
    cur.execute("UPDATE data SET volume = volume + 1, updated_at = NOW(6) WHERE id BETWEEN %s AND %s",
                (first, first + n - 1))
    elapsed = time.perf_counter() - start
    if cur.rowcount != n:
        raise RuntimeError(f"10k-row UPDATE changed {cur.rowcount} rows, expected {n}")
    return elapsed


def run(args: argparse.Namespace) -> dict:
    base, plugin_dir = run_dir_with_udf("udf", build=not args.no_build, library=args.library)
    db = MariaDBServer(base / "mariadb", plugin_dir=plugin_dir)
    gearmand = GearmanServer(base / "gearmand", threads=args.gearmand_threads)
    dead_address = f"127.0.0.1:{free_port()}"
    results: dict[str, dict[str, list[float]]] = {m: {"single_per_s": [], "multi_s": []} for m in MODES}
    # CPU seconds mariadbd / gearmand spent during each mode's single-row slices: unlike wall time this
    # barely depends on what else the machine is doing
    cpu: dict[str, dict[str, float]] = {m: {"mariadbd": 0.0, "gearmand": 0.0, "statements": 0} for m in MODES}
    expected_jobs = 0
    queued: list[int] = []
    try:
        db.start()
        gearmand.start()
        conn = db.connect()
        cur = conn.cursor()
        prepare_bench_table(cur, args.rows)
        rng = random.Random(42)
        # The machine is shared: interleave the modes in short slices (rotating their order) so that
        # load from elsewhere hits every mode alike; medians over the slices.
        slices = args.runs * args.slices_per_run
        per_slice = max(1, args.single // args.slices_per_run)
        for k in range(slices):
            order = MODES[k % len(MODES):] + MODES[: k % len(MODES)]
            for mode in order:
                set_mode(cur, mode, gearmand, dead_address, queued, args.udf_options, plugin_dir)
                ids = [rng.randrange(1, args.rows + 1) for _ in range(per_slice)]
                assert db.proc is not None and gearmand.proc is not None
                before = cpu_seconds(db.proc.pid), cpu_seconds(gearmand.proc.pid)
                results[mode]["single_per_s"].append(single_row(cur, ids))
                cpu[mode]["mariadbd"] += cpu_seconds(db.proc.pid) - before[0]
                cpu[mode]["gearmand"] += cpu_seconds(gearmand.proc.pid) - before[1]
                cpu[mode]["statements"] += per_slice
                if mode in UP_MODES:
                    expected_jobs += per_slice
        for r in range(args.runs):
            for mode in MODES[r % len(MODES):] + MODES[: r % len(MODES)]:
                set_mode(cur, mode, gearmand, dead_address, queued, args.udf_options, plugin_dir)
                first = rng.randrange(1, args.rows - args.multi + 2)
                results[mode]["multi_s"].append(multi_row(cur, first, args.multi))
                if mode in UP_MODES:
                    expected_jobs += args.multi
        for mode in MODES:
            print(f"  {mode:<24} single-row UPDATE/s per slice: "
                  f"{', '.join(f'{x:,.0f}' for x in results[mode]['single_per_s'])}; "
                  f"10k-row UPDATE s: {', '.join(f'{x:.3f}' for x in results[mode]['multi_s'])}", file=sys.stderr)
        set_signing(plugin_dir, False)
        cur.execute("SELECT gman_servers_set(%s)", (gearmand.address,))
        cur.execute("SELECT gman_flush()")
        (unacknowledged,) = cur.fetchone()
        queued.append(gearmand_queued(gearmand, "syncToRedis"))
        cur.close()
        conn.close()
        if "signing background jobs with key id" not in db.log_path.read_text(errors="replace"):
            raise RuntimeError(f"mode {UP_SIGNED!r}: the library never loaded the key file (see {db.log_path})")
    finally:
        gearmand.stop()
        db.stop()
        shutil.rmtree(base, ignore_errors=True)
    out = summarize(results, args, sum(queued), expected_jobs, unacknowledged)
    for mode, c in cpu.items():
        n = max(1, int(c["statements"]))
        out["modes"][mode]["mariadbd_cpu_us_per_update"] = round(c["mariadbd"] / n * 1e6, 1)
        out["modes"][mode]["gearmand_cpu_us_per_update"] = round(c["gearmand"] / n * 1e6, 1)
    return out


def summarize(results: dict[str, dict[str, list[float]]], args: argparse.Namespace, queued: int,
              expected_jobs: int, unacknowledged: int) -> dict:
    base_single = statistics.median(results["no trigger"]["single_per_s"])
    base_multi = statistics.median(results["no trigger"]["multi_s"])
    out: dict = {
        "benchmark": "udf",
        "rows": args.rows,
        "single_row_updates": args.single,
        "multi_row_update_rows": args.multi,
        "runs": args.runs,
        "udf_options": args.udf_options,
        "modes": {},
        "targets": {"single_ratio_min": 0.85, "multi_up_max_s": 0.4},
        "jobs_queued": queued,
        "jobs_expected": expected_jobs,
        "jobs_unacknowledged_at_end": unacknowledged,
    }
    for mode, figures in results.items():
        single = statistics.median(figures["single_per_s"])
        multi = statistics.median(figures["multi_s"])
        out["modes"][mode] = {
            "single_per_s": round(single, 1),
            "single_ratio": round(single / base_single, 3),
            "multi_s": round(multi, 4),
            "multi_extra_us_per_row": round((multi - base_multi) / args.multi * 1e6, 1),
            "single_per_s_runs": [round(x, 1) for x in figures["single_per_s"]],
            "multi_s_runs": [round(x, 4) for x in figures["multi_s"]],
        }
    return out


def print_table(out: dict) -> None:
    print(f"\nUDF trigger overhead — {out['runs']} runs, medians (single-row: over interleaved slices), "
          f"table of {out['rows']:,} rows")
    print(f"{'mode':<24} {'single-row UPDATE/s':>20} {'ratio':>7} {'10k-row UPDATE s':>17} {'extra µs/row':>13}"
          f" {'mariadbd CPU µs/UPDATE':>23} {'gearmand CPU µs/UPDATE':>23}")
    for mode, m in out["modes"].items():
        print(f"{mode:<24} {m['single_per_s']:>20,.0f} {m['single_ratio']:>7.2f} {m['multi_s']:>17.3f} "
              f"{m['multi_extra_us_per_row']:>13.1f} {m.get('mariadbd_cpu_us_per_update', 0):>23.1f} "
              f"{m.get('gearmand_cpu_us_per_update', 0):>23.1f}")
    up = out["modes"][UP]
    confirmed = out["modes"][UP_CONFIRMED]
    print(f"jobs queued in gearmand (summed over its restarts): {out['jobs_queued']:,}; rows updated with "
          f"gearmand up: {out['jobs_expected']:,}; unacknowledged at the end: {out['jobs_unacknowledged_at_end']}")
    signed = out["modes"][UP_SIGNED]
    print(f"cost of signing: single-row ratio {signed['single_ratio']:.3f} signed vs {up['single_ratio']:.3f} "
          f"unsigned ({1 - signed['single_per_s'] / up['single_per_s']:.1%} fewer UPDATE/s; target <= 3%); "
          f"10k-row UPDATE {signed['multi_s']:.3f} s vs {up['multi_s']:.3f} s")
    bare = out["modes"][UP_NO_JOURNAL]
    print(f"cost of the journal: single-row ratio {up['single_ratio']:.3f} with it vs {bare['single_ratio']:.3f} "
          f"journal=0 ({1 - up['single_per_s'] / bare['single_per_s']:.1%} fewer UPDATE/s; target <= 3%); "
          f"10k-row UPDATE {up['multi_s']:.3f} s vs {bare['multi_s']:.3f} s")
    print(f"targets: single-row ratio >= 0.85 (got {up['single_ratio']:.2f} with the default, pipelined "
          f"submits; {confirmed['single_ratio']:.2f} with pipeline=0); 10k-row UPDATE <= 0.4 s with gearmand "
          f"up (got {up['multi_s']:.3f} s; {confirmed['multi_s']:.3f} s with pipeline=0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sync.bench udf", description=__doc__.split("\n")[0])
    add_update_load_options(parser)
    parser.add_argument("--slices-per-run", type=int, default=10,
                        help="single-row UPDATEs are measured in this many interleaved slices per run")
    parser.add_argument("--gearmand-threads", type=int, default=2, help="gearmand --threads")
    parser.add_argument("--udf-options", default="", metavar="K=V[,K=V]",
                        help="extra gman_servers_set options for every mode, e.g. coalesce_us=0 (udf/README.md)")
    parser.add_argument("--library", type=Path, default=LIBRARY, help="the UDF library to load")
    args = parser.parse_args(argv)
    if args.multi > args.rows:
        parser.error("--multi must not exceed --rows")
    out = run(args)
    print_table(out)
    write_json(args.json, out)
    return 0
