"""`sync-bench compare`: the capture paths side by side on one workload (issue 5, part 3).

    sync-bench compare [--rows 100000] [--updates 50000] [--writers 4] [--rollback-rate 0.1]
                       [--json FILE] [--plot FILE.png]

Starts a throwaway MariaDB (the gearsync UDF library in its plugin dir, ROW binlog with full
metadata), gearmand and Redis (sync.testing.servers), fills `bench.data(id, volume, payload,
updated_at)` and runs the SAME workload once per path, one after the other:

    none            no capture (the writers' baseline)
    udf             capture triggers, udf mode (gman_do_background in the trigger) + sync-worker
    outbox          capture triggers, outbox mode (gearsync_spool) + sync-relay + sync-worker
    binlog-redis    sync-binlog --sink redis
    binlog-gearman  sync-binlog --sink gearman + sync-worker

Each path writes its own Redis key space (`udf:{table}:{pk}`, `outbox:…`, `blr:…`, `blg:…`), so
UUID_SHORT versions (trigger paths) and binlog versions never share a key. Before its writes each
path is bootstrapped with sync-snapshot (trigger versions for the trigger paths; for the binlog
paths `--versions binlog`, which stores the snapshot's GTID point as sync-binlog's start), so at
the end every row of the table can be compared.

Workload: --writers threads, each with its own connection, run single-row transactions
`UPDATE data SET volume = <unique value>, updated_at = NOW(6) WHERE id = <random>` (BEGIN …
COMMIT; with --rollback-rate that fraction ROLLBACKs instead). Every written value is unique in
the whole run, so a value seen in Redis identifies the transaction that wrote it.

Figures per path:
    writer UPDATE/s   committed transactions / the writers' wall time (all threads together)
    e2e UPDATE/s      committed transactions / (first write → Redis equal to MySQL, or for a path
                      that diverges, → the moment the number of differing keys stopped changing)
    lag p50/p95/p99   commit → visible in Redis, MEASURED PER CHANGE on a sample: the writer
                      records the time right after COMMIT returned for each (row, value); a
                      poller PROCESS (not a thread: no GIL shared with the writers) reads a fixed
                      random sample of min(1000, rows) keys with one MGET per round, pausing
                      --poll-pause-ms (1 ms) between rounds, and records when each value first
                      appears (both sides use CLOCK_MONOTONIC). Resolution: one poll round (its
                      mean period is printed). The poller runs during the "none" path too, so the
                      writers' baseline pays the same CPU cost. A value
                      overwritten before the poller saw it is not measured (counted as missed).
                      A lag can be NEGATIVE in udf mode: the trigger queues the job before COMMIT,
                      so a value can be in Redis before the writer's COMMIT returned.
    differ            keys whose value differs from MySQL at the end (sync.rows.expected: the same
                      row → key/value mapping as the applier and sync-verify); rolled-back
                      transactions make the udf path diverge — that is expected and reported.
    phantom           sampled values seen in Redis that were rolled back (udf mode)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sync.bench.common import BIN, add_json_option, run_dir_with_udf, write_json
from sync.bench.triggers import set_mode, stop_processes
from sync.bench.udf import prepare_bench_table
from sync.capture.triggers import TriggerOptions, install_statements
from sync.rows.expected import expected_state as rows_expected_state
from sync.rows.schema import load_table
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

PATHS = ("none", "udf", "outbox", "binlog-redis", "binlog-gearman")
PREFIX = {"udf": "udf", "outbox": "outbox", "binlog-redis": "blr", "binlog-gearman": "blg"}
SAMPLE = 1000
VALUE_STRIDE = 10_000_000       # values of path i: (i + 1) * VALUE_STRIDE + n


@dataclass
class PathResult:
    path: str
    committed: int = 0
    rolled_back: int = 0
    writer_s: float = 0.0
    e2e_s: float | None = None
    lags: list[tuple[float, float]] = field(default_factory=list)   # (commit time since start, lag s)
    missed: int = 0
    phantom: int = 0
    differ: int | None = None
    converged: bool = False
    poll_period_ms: float = 0.0

    def summary(self) -> dict[str, Any]:
        lag = sorted(x for _, x in self.lags)

        def q(p: float) -> float | None:
            return round(lag[min(len(lag) - 1, int(p * len(lag)))] * 1000, 2) if lag else None

        return {
            "path": self.path, "committed": self.committed, "rolled_back": self.rolled_back,
            "writer_updates_per_s": round(self.committed / self.writer_s, 1) if self.writer_s else None,
            "e2e_updates_per_s": round(self.committed / self.e2e_s, 1) if self.e2e_s else None,
            "lag_ms": {"p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "measured": len(lag), "missed": self.missed},
            "poll_period_ms": round(self.poll_period_ms, 2),
            "phantom": self.phantom, "differ": self.differ, "converged": self.converged,
            "lag_series": [[round(t, 4), round(x, 4)] for t, x in self.lags],   # (commit s since start, lag s)
        }


# -- processes -----------------------------------------------------------------------------------

DECODER_ENV = "GEARSYNC_BINLOG_DECODER"   # sync-binlog's row decoder: c, python (auto: c if built)


def _env() -> dict[str, str]:
    return {**os.environ, "GEARSYNC_MYSQL_PASSWORD": "", "PYTHONUNBUFFERED": "1"}


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"), env=_env())


def _snapshot(db: MariaDBServer, redis: RedisServer, template: str, versions: str, name: str | None, log: Path) -> None:
    args = ["sync-snapshot", "--table", "data", "--database", "bench", "--mysql-url", f"mysql://root@127.0.0.1:{db.port}/",
            "--redis-url", redis.url, "--key-template", template, "--versions", versions, "--progress", "log",
            "--log-format", "json", "--restart"]
    if name:
        args += ["--binlog-name", name]
    out = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=_env(), timeout=900,
                         check=False)
    with open(log, "a") as f:
        f.write(out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"sync-snapshot failed ({out.returncode}): {out.stderr[-800:]}")


def start_path(path: str, db: MariaDBServer, g: GearmanServer, redis: RedisServer, conn: Any, schema: Any,
               logdir: Path) -> list[subprocess.Popen]:
    """Triggers / processes of one path, bootstrapped into its key space; returns the processes."""
    log = logdir / f"{path}.log"
    set_mode(conn, schema, path if path in ("udf", "outbox") else "no trigger")
    g.restart()  # an empty queue per path
    if path == "none":
        return []
    template = f"{PREFIX[path]}:{{table}}:{{pk}}"
    my_url = f"mysql://root@127.0.0.1:{db.port}/bench"
    worker = ["sync-worker", "--table", "data", "--servers", g.address, "--redis-url", redis.url,
              "--key-template", template, "--log-format", "json", "--stats-interval", "0"]
    procs: list[subprocess.Popen] = []
    if path in ("udf", "outbox"):
        procs.append(_spawn(worker, log))
        if path == "outbox":
            procs.append(_spawn(["sync-relay", "--database", "bench", "--servers", g.address, "--mysql-url", my_url,
                                 "--stats-interval", "0", "--log-format", "json"], log))
        _snapshot(db, redis, template, "trigger", None, log)
        return procs
    name = f"compare-{path}"
    _snapshot(db, redis, template, "binlog", name, log)   # stores the GTID point as the stream's start
    sink = "redis" if path == "binlog-redis" else "gearman"
    if sink == "gearman":
        procs.append(_spawn(worker, log))
    procs.append(_spawn(["sync-binlog", "--table", "data", "--database", "bench", "--mysql-url", my_url,
                         "--redis-url", redis.url, "--servers", g.address, "--sink", sink, "--name", name,
                         "--key-template", template, "--stats-interval", "0", "--log-format", "json"], log))
    return procs


# -- measuring -----------------------------------------------------------------------------------

def _poll_main(port: int, keys: list[str], ids: list[int], stop: Any, out: Any, pause_s: float) -> None:
    import redis as redis_mod

    client = redis_mod.Redis(host="127.0.0.1", port=port)
    last: list[Any] = [None] * len(keys)
    seen: dict[tuple[int, int], float] = {}
    rounds = 0
    t0 = time.monotonic()
    while not stop.is_set():
        vals = client.mget(keys)
        now = time.monotonic()
        for j, v in enumerate(vals):
            if v is not None and v != last[j]:
                last[j] = v
                seen.setdefault((ids[j], orjson.loads(v).get("volume")), now)
        rounds += 1
        if pause_s:
            time.sleep(pause_s)
    out.put((list(seen.items()), rounds, time.monotonic() - t0))
    client.close()


class Poller:
    """A separate process (no GIL shared with the writers) that MGETs the sample keys in a loop
    and records when each (id, volume) first appears (CLOCK_MONOTONIC: time.monotonic() is the
    same clock in every process on Linux, so it compares with the writers' commit times)."""

    def __init__(self, redis: RedisServer, template: str, ids: list[int], pause_s: float) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        self.ids = ids
        keys = [template.replace("{table}", "data").replace("{pk}", str(i)) for i in ids]
        self.stop_ev = ctx.Event()
        self.queue = ctx.Queue()
        self.proc = ctx.Process(target=_poll_main, args=(redis.port, keys, ids, self.stop_ev, self.queue, pause_s),
                                daemon=True)
        self.seen: dict[tuple[int, int], float] = {}
        self.rounds = 0
        self.elapsed = 0.0

    def start(self) -> None:
        self.proc.start()

    def finish(self) -> None:
        self.stop_ev.set()
        items, self.rounds, self.elapsed = self.queue.get(timeout=60)
        self.seen = dict(items)
        self.proc.join(10)


def writers(db: MariaDBServer, n_writers: int, updates: int, rows: int, rollback: float, base: int,
            seed: int, progress: Any) -> tuple[dict[tuple[int, int], float], set[tuple[int, int]], float, float]:
    """(commit time per committed (id, value), rolled-back (id, value)s, start, writer seconds)."""
    committed: dict[tuple[int, int], float] = {}
    rolled: set[tuple[int, int]] = set()
    lock = threading.Lock()
    counter = iter(range(updates))
    done = [0]
    barrier = threading.Barrier(n_writers + 1)
    errors: list[BaseException] = []

    def one(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        conn = db.connect("bench")
        mine: dict[tuple[int, int], float] = {}
        mine_rb: set[tuple[int, int]] = set()
        try:
            with conn.cursor() as cur:
                barrier.wait()
                while True:
                    with lock:
                        n = next(counter, None)
                    if n is None:
                        break
                    i, v = rng.randint(1, rows), base + n
                    cur.execute("BEGIN")
                    cur.execute("UPDATE data SET volume = %s, updated_at = NOW(6) WHERE id = %s", (v, i))
                    if rollback and rng.random() < rollback:
                        cur.execute("ROLLBACK")
                        mine_rb.add((i, v))
                    else:
                        cur.execute("COMMIT")
                        mine[(i, v)] = time.monotonic()
                    done[0] += 1
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            conn.close()
            with lock:
                committed.update(mine)
                rolled.update(mine_rb)

    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n_writers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.monotonic()
    while any(t.is_alive() for t in threads):
        progress(done[0])
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    progress(done[0])
    if errors:
        raise errors[0]
    return committed, rolled, t0, elapsed


def expected_state(db: MariaDBServer, schema: Any, spec: TableSpec) -> dict[str, Any]:
    conn = db.connect("bench")
    try:
        return rows_expected_state(conn, schema, spec)
    finally:
        conn.close()


def count_differ(client: Any, expected: dict[str, Any]) -> int:
    keys = list(expected)
    bad = 0
    for i in range(0, len(keys), 5000):
        chunk = keys[i: i + 5000]
        bad += sum(1 for k, v in zip(chunk, client.mget(chunk)) if v != expected[k])
    return bad


def wait_converged(client: Any, expected: dict[str, Any], t0: float, timeout_s: float,
                   status: Any) -> tuple[int, float, bool]:
    """(differing keys, seconds from t0 to convergence, equal?). Stops when equal, or when the
    count has not changed for 5 s (a path that diverges: its time is when it stopped changing)."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while True:
        n = count_differ(client, expected)
        now = time.monotonic()
        status(n)
        if n == 0:
            return 0, now - t0, True
        if n != last:
            last, since = n, now
        elif now - since >= 5.0 or now > deadline:
            return n, since - t0, False
        time.sleep(0.05)


def wait_live(db: MariaDBServer, redis: RedisServer, key: str, path: str, timeout_s: float) -> None:
    """Commit a probe change to row 1 and wait until Redis shows it: the path's processes are
    connected and caught up (sync-binlog from the snapshot's point included) before the timed
    writes start, so start-up time is not counted as lag."""
    conn = db.connect("bench")
    client = redis.client()
    try:
        with conn.cursor() as cur:
            cur.execute("UPDATE data SET payload = %s WHERE id = 1", (f"probe-{path}",))
        deadline = time.monotonic() + timeout_s
        while True:
            v = client.get(key)
            if v is not None and orjson.loads(v).get("payload") == f"probe-{path}":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path}: the probe change did not reach Redis ({key}) in {timeout_s:.0f} s")
            time.sleep(0.01)
    finally:
        client.close()
        conn.close()


def run_path(path: str, idx: int, args: argparse.Namespace, db: MariaDBServer, g: GearmanServer,
             redis: RedisServer, conn: Any, schema: Any, logdir: Path, progress: Any, task: Any) -> PathResult:
    res = PathResult(path)
    progress.update(task, description=f"{path}: start + snapshot", completed=0)
    procs = start_path(path, db, g, redis, conn, schema, logdir)
    try:
        if path != "none":
            wait_live(db, redis, f"{PREFIX[path]}:data:1", path, args.timeout)
        template = f"{PREFIX.get(path, 'none')}:{{table}}:{{pk}}"
        sample = random.Random(idx).sample(range(1, args.rows + 1), min(SAMPLE, args.rows))
        poller = Poller(redis, template, sample, args.poll_pause_ms / 1000)
        poller.start()
        progress.update(task, description=f"{path}: writing")
        committed, rolled, t0, res.writer_s = writers(
            db, args.writers, args.updates, args.rows, args.rollback_rate, (idx + 1) * VALUE_STRIDE, idx,
            lambda n: progress.update(task, completed=n))
        res.committed, res.rolled_back = len(committed), len(rolled)
        if path == "none":
            poller.finish()
            return res
        progress.update(task, description=f"{path}: draining")
        spec = TableSpec("data", f"{PREFIX[path]}:{{table}}:{{pk}}")
        expected = expected_state(db, schema, spec)
        client = redis.client()
        try:
            res.differ, res.e2e_s, res.converged = wait_converged(
                client, expected, t0, args.timeout,
                lambda n: progress.update(task, description=f"{path}: draining ({n} keys differ)"))
        finally:
            client.close()
        poller.finish()
        res.poll_period_ms = 1000 * poller.elapsed / max(poller.rounds, 1)
        sampled = set(poller.ids)
        for (i, v), tc in committed.items():
            if i not in sampled:
                continue
            ts = poller.seen.get((i, v))
            if ts is None:
                res.missed += 1
            else:
                res.lags.append((tc - t0, ts - tc))
        res.phantom = sum(1 for (i, v) in rolled if (i, v) in poller.seen)
        res.lags.sort()
        return res
    finally:
        stop_processes(procs)


# -- output --------------------------------------------------------------------------------------

def print_table(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=(f"sync-bench compare: {out['rows']:,} rows, {out['updates']:,} single-row UPDATE transactions, "
                     f"{out['writers']} writers, rollback rate {out['rollback_rate']}"))
    for col in ("path", "writer UPDATE/s", "x none", "e2e UPDATE/s", "lag p50 ms", "p95 ms", "p99 ms",
                "lag samples", "differ", "phantom"):
        t.add_column(col, justify="left" if col == "path" else "right")
    base = out["paths"].get("none", {}).get("writer_updates_per_s")

    def f(x: Any, fmt: str = "{:,.0f}") -> str:
        return "-" if x is None else fmt.format(x)

    for p, s in out["paths"].items():
        w = s["writer_updates_per_s"]
        lag = s["lag_ms"]
        t.add_row(p, f(w), f(w / base if w and base else None, "{:.2f}"), f(s["e2e_updates_per_s"]),
                  f(lag["p50"], "{:.1f}"), f(lag["p95"], "{:.1f}"), f(lag["p99"], "{:.1f}"),
                  "-" if p == "none" else f"{lag['measured']} (+{lag['missed']} missed)",
                  "-" if s["differ"] is None else f"{s['differ']}" + ("" if s["converged"] else " (stable)"),
                  "-" if p == "none" else str(s["phantom"]))
    Console(width=max(Console().width, 150)).print(t)
    periods = [s["poll_period_ms"] for p, s in out["paths"].items() if p != "none"]
    if periods:
        print(f"lag resolution: one poll round of {min(SAMPLE, out['rows'])} keys, "
              f"mean {statistics.mean(periods):.2f} ms; e2e = committed / (first write → Redis equals MySQL)")
    print(f"sync-binlog row decoder: {out['binlog_decoder']} ({DECODER_ENV}); load at the end: {out['load']}")


def plot(results: list[PathResult], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot {path}: matplotlib is not installed (pip install 'gearsync[plot]'); no plot written")
        return
    fig, ax = plt.subplots(figsize=(10, 5))
    for r in results:
        if r.lags:
            ax.plot([t for t, _ in r.lags], [lag * 1000 for _, lag in r.lags], ".", markersize=2, label=r.path)
    ax.set_xlabel("commit time since the first write (s)")
    ax.set_ylabel("lag commit → visible in Redis (ms)")
    ax.set_yscale("symlog")
    ax.legend()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[PathResult]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    base, plugin_dir = run_dir_with_udf("compare", build=not args.no_build)
    logdir = base / "logs"
    logdir.mkdir()
    db = MariaDBServer(base / "mariadb", plugin_dir=plugin_dir)
    g = GearmanServer(base / "gearmand")
    redis = RedisServer(base / "redis")
    results: list[PathResult] = []
    try:
        db.start(); g.start(); redis.start()  # noqa: E702
        conn = db.connect()
        with conn.cursor() as cur:
            prepare_bench_table(cur, args.rows, g.address)
            schema = load_table(conn, "bench", "data")
            for stmt in install_statements(schema, TriggerOptions.for_table("data"))[:1]:
                cur.execute(stmt)  # the spool table
        with Progress(TextColumn("[bold]{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=False) as progress:
            for path in args.paths:
                task = progress.add_task(path, total=args.updates)
                r = run_path(path, PATHS.index(path), args, db, g, redis, conn, schema, logdir, progress, task)
                progress.update(task, description=f"{path}: done", completed=args.updates)
                results.append(r)
        conn.close()
    except BaseException:
        print(f"logs kept in {logdir}", file=sys.stderr)
        raise
    finally:
        for s in (g, redis, db):
            try:
                s.stop()
            except Exception as exc:  # keep stopping the others
                print(f"stop failed: {exc}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    out = {"benchmark": "compare", "rows": args.rows, "updates": args.updates, "writers": args.writers,
           "rollback_rate": args.rollback_rate, "sample_keys": min(SAMPLE, args.rows),
           "binlog_decoder": os.environ.get(DECODER_ENV, "auto"), "load": round(os.getloadavg()[0], 2),
           "paths": {r.path: r.summary() for r in results}}
    return out, results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sync-bench compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="table rows (default 100000)")
    p.add_argument("--updates", type=int, default=50_000, help="UPDATE transactions per path (default 50000)")
    p.add_argument("--writers", type=int, default=4, help="writer threads, one connection each (default 4)")
    p.add_argument("--rollback-rate", type=float, default=0.0, help="fraction of transactions rolled back (default 0)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    p.add_argument("--poll-pause-ms", type=float, default=1.0,
                   help="pause of the lag poller between MGET rounds (default 1 ms; 0 = tight, costs a core)")
    p.add_argument("--timeout", type=float, default=600.0, help="longest wait for a path to drain (s)")
    add_json_option(p)
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="lag over time per path (needs matplotlib)")
    p.add_argument("--keep", action="store_true", help="keep the servers' directory and the process logs")
    p.add_argument("--no-build", action="store_true", help="do not run make -C udf first")
    p.add_argument("--decoder", choices=("auto", "c", "python"),
                   help="sync-binlog's row decoder (sets GEARSYNC_BINLOG_DECODER for it; default: as set, else auto)")
    args = p.parse_args(argv)
    if args.decoder:
        os.environ[DECODER_ENV] = args.decoder   # inherited by the sync-binlog processes
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    bad = [x for x in args.paths if x not in PATHS]
    if bad:
        p.error(f"--paths: {bad[0]!r}; expected some of {', '.join(PATHS)}")
    if not 0 <= args.rollback_rate < 1:
        p.error("--rollback-rate: expected 0 <= rate < 1")
    if args.rows < 1 or args.updates < 1 or args.writers < 1:
        p.error("--rows, --updates and --writers must be positive")
    out, results = run(args)
    print_table(out)
    write_json(args.json, out)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
