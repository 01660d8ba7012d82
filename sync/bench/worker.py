"""`sync-bench worker`: how fast sync-worker drains pre-queued change jobs into Redis.

Starts a throwaway gearmand and redis-server, pre-queues --jobs change jobs (~150-byte JSON rows,
one version each, json format, fencing on), then drains them with N `sync-worker` processes and
reports jobs/s, measured from the first applied change to the last (process start-up excluded),
as the median of --runs runs. `--batch 1` is the one-job-per-round-trip baseline (the classic
worker's shape). `--profile` drains once in-process under cProfile and prints where the time goes.
`--fk` measures each configuration twice, the runs interleaved: the plain jobs, and the same jobs
as rows of a child table with one cascading FK (each job carrying "refs", so the applier keeps
the FK index with each row), and prints both rates and the cost: once into an empty Redis (every
row and index entry new: the worst case) and once as a rewrite of the same rows with newer
versions (the steady state of updates: the index entry exists and is unchanged).
`--signed` measures each configuration twice, the runs interleaved: unsigned jobs and workers
without a key, and signed jobs (HMAC, sync.signing) drained by workers with GEARSYNC_JOB_KEY, and
prints both rates and the cost of signing. Without it the jobs are signed when GEARSYNC_JOB_KEY is
set (the workers inherit it and would refuse unsigned jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from sync.bench.udf import cpu_seconds
from sync.events import ChangeEvent, JSONValue, Op, Source, encode_change
from sync.gearman import GearmanClient
from sync.signing import ENV_KEY, ENV_KEY_OLD, JobKeys, load_keys
from sync.testing.servers import GearmanServer, RedisServer

FUNCTION = "gearsync.data"


def make_payloads(n: int, base_version: int, fk: bool = False) -> list[bytes]:
    """`fk`: the rows of a child whose `volume` references a parent through one cascading FK."""
    out = []
    for i in range(n):
        row: dict[str, JSONValue] = {"id": i, "volume": i % 1000, "name": f"row-{i:08d}", "updated_at": "2026-11-27 12:00:00", "score": 0.5}
        refs: dict[str, tuple[JSONValue, ...]] | None = {"fk_data_volume": (i % 1000,)} if fk else None
        out.append(encode_change(ChangeEvent("data", Op.UPDATE, (("id", i),), row, base_version + i, Source.TRIGGER,
                                             refs)))
    return out


def bench_keys(key: str | None) -> JobKeys:
    return load_keys({ENV_KEY: key} if key else {})


async def prequeue(g: GearmanServer, payloads: list[bytes], key: str | None = None) -> float:
    t0 = time.perf_counter()
    async with GearmanClient([(g.host, g.port)], chunk_size=512, signer=bench_keys(key).signer) as client:
        await client.submit_background_many(FUNCTION, payloads)
    return time.perf_counter() - t0


def applied_total(client: Any) -> int:
    value = client.hget("gearsync:stats:data", "applied_total")
    return int(value) if value else 0


def drain_with_processes(g: GearmanServer, r: RedisServer, n: int, procs: int, batch: int, connections: int,
                         fk: bool = False, rewrite: bool = False, key: str | None = None,
                         cpu_out: list[float] | None = None) -> float:
    """jobs/s of `procs` sync-worker processes draining n pre-queued jobs. `rewrite`: the same rows
    again with newer versions, on top of the previous run's Redis (rows and, with `fk`, their index
    entries exist: the steady state of updates), instead of an empty Redis (every row is new).
    `key`: the jobs are signed with it and the workers check them (None: neither). `cpu_out`: gets
    the workers' CPU µs per job from the first applied change to the last (start-up excluded; unlike
    jobs/s this barely depends on what else the shared machine does)."""
    client = r.client()
    start = applied_total(client) if rewrite else 0
    if not rewrite:
        client.flushall()
    asyncio.run(prequeue(g, make_payloads(n, 2 * 10**12 if rewrite else 10**12, fk), key))
    env = {k: v for k, v in os.environ.items() if k not in (ENV_KEY, ENV_KEY_OLD)}
    env.update({"GEARSYNC_GEARMAN_SERVERS": g.address, "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{r.port}/0"})
    if key:
        env[ENV_KEY] = key
    exe = str(Path(sys.executable).with_name("sync-worker"))
    cmd = [exe, "--table", "data", "--batch", str(batch), "--connections", str(connections),
           "--stats-interval", "0", "--log-level", "warning"]
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(procs)]
    try:
        first_t = None
        first_cpu = 0.0
        first_n = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = applied_total(client) - start
            now = time.perf_counter()
            if first_t is None and done > 0:
                first_t, first_n = now, done
                first_cpu = sum(cpu_seconds(w.pid) for w in workers)
            if done >= n:
                assert first_t is not None
                if cpu_out is not None:
                    cpu_out.append((sum(cpu_seconds(w.pid) for w in workers) - first_cpu) / max(1, n - first_n) * 1e6)
                return (n - first_n) / max(now - first_t, 1e-9)
            for w in workers:
                if w.poll() is not None:
                    raise RuntimeError(f"sync-worker exited with {w.returncode}: {w.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]  # stderr=PIPE
            time.sleep(0.02)
        raise RuntimeError("drain did not finish in 600 s")
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
        client.close()


def profile_in_process(g: GearmanServer, r: RedisServer, n: int, batch: int, top: int, key: str | None) -> str:
    from sync.apply.worker import SyncWorker
    from sync.config import worker_settings

    client = r.client()
    client.flushall()
    asyncio.run(prequeue(g, make_payloads(n, 10**12), key))
    settings = worker_settings(tables=["data"], servers=g.address, redis_url=f"redis://127.0.0.1:{r.port}/0",
                               batch=batch, env={})

    async def drain() -> None:
        worker = SyncWorker(settings, keys=bench_keys(key))
        task = asyncio.ensure_future(worker.run())
        while applied_total(client) < n:
            await asyncio.sleep(0.01)
        worker.request_stop()
        await task

    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(drain())
    prof.disable()
    client.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sync-bench worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=100_000, help="jobs pre-queued per run (default 100000)")
    p.add_argument("--runs", type=int, default=3, help="runs per configuration; the median is reported (default 3)")
    p.add_argument("--processes", default="1,2", help="worker process counts to measure (default 1,2)")
    p.add_argument("--batch", type=int, default=128, help="sync-worker --batch (default 128)")
    p.add_argument("--connections", type=int, default=1, help="sync-worker --connections (default 1)")
    p.add_argument("--baseline", action="store_true", help="also measure --batch 1 (one job per round trip)")
    p.add_argument("--fk", action="store_true",
                   help="also measure the jobs as child rows with one cascading FK (carrying refs), side by side")
    p.add_argument("--signed", action="store_true",
                   help="also measure signed jobs checked by the workers (GEARSYNC_JOB_KEY), side by side with unsigned")
    p.add_argument("--profile", action="store_true", help="drain once in-process under cProfile and print the top functions")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)
    try:
        procs = [int(x) for x in args.processes.split(",")]
    except ValueError:
        p.error(f"--processes: {args.processes!r}; expected numbers like 1,2")
    if args.jobs < 1 or args.runs < 1:
        p.error("--jobs and --runs must be >= 1")

    # GEARSYNC_JOB_KEY set: every run signs (workers inheriting it would refuse unsigned jobs).
    # --signed: unsigned runs without a key, interleaved with signed runs.
    key = os.environ.get(ENV_KEY) or None
    signed_key = key or secrets.token_hex(32)
    if args.signed:
        key = None
    measured: list[dict[str, object]] = []
    results: dict[str, object] = {"jobs": args.jobs, "runs": args.runs, "batch": args.batch, "configs": measured}
    with tempfile.TemporaryDirectory(prefix="gearsync-bench-") as tmp:
        g = GearmanServer(Path(tmp) / "gearmand").start()
        r = RedisServer(Path(tmp) / "redis").start()
        try:
            qt = asyncio.run(prequeue(g, make_payloads(20_000, 1), key))
            r.client().flushall()
            print(f"pre-queue rate (pipelined SUBMIT_JOB_BG): {20_000 / qt:,.0f} jobs/s", flush=True)
            # The warm-up jobs are still queued: drain them so each run starts from an empty queue.
            _drain_leftovers(g, r, args.batch, key)
            configs = [(n, args.batch) for n in procs]
            if args.baseline:
                configs.append((1, 1))
            fk_head = f" {'fk jobs/s':>10} {'fk cost':>8}" if args.fk else ""
            fk_head += f" {'signed jobs/s':>14} {'sign cost':>9}" if args.signed else ""
            print(f"{'processes':>9} {'batch':>6} {'median jobs/s':>14}{fk_head}  runs", flush=True)
            for nprocs, batch in configs:
                n = args.jobs if batch > 1 else min(args.jobs, 20_000)
                rates: list[float] = []
                fk_rates: list[float] = []
                re_rates: list[float] = []
                fk_re_rates: list[float] = []
                signed_rates: list[float] = []
                cpu: list[float] = []
                signed_cpu: list[float] = []
                for i in range(args.runs):  # interleaved: drift of the machine hits both alike
                    if args.signed and i % 2:  # alternate which goes first
                        signed_rates.append(drain_with_processes(g, r, n, nprocs, batch, args.connections,
                                                                 key=signed_key, cpu_out=signed_cpu))
                    rates.append(drain_with_processes(g, r, n, nprocs, batch, args.connections, key=key, cpu_out=cpu))
                    if args.signed and not i % 2:
                        signed_rates.append(drain_with_processes(g, r, n, nprocs, batch, args.connections,
                                                                 key=signed_key, cpu_out=signed_cpu))
                    if args.fk:
                        re_rates.append(drain_with_processes(g, r, n, nprocs, batch, args.connections, rewrite=True))
                        fk_rates.append(drain_with_processes(g, r, n, nprocs, batch, args.connections, fk=True))
                        fk_re_rates.append(drain_with_processes(g, r, n, nprocs, batch, args.connections, fk=True,
                                                                rewrite=True))
                med = statistics.median(rates)
                entry: dict[str, object] = {"processes": nprocs, "batch": batch, "jobs": n,
                                            "median_jobs_per_s": med, "runs_jobs_per_s": rates,
                                            "median_worker_cpu_us_per_job": statistics.median(cpu)}
                fk_text = ""
                if args.fk:
                    fk_med = statistics.median(fk_rates)
                    cost = 1 - fk_med / med
                    fk_text = f" {fk_med:>10,.0f} {cost:>8.1%}"
                    entry.update(fk_median_jobs_per_s=fk_med, fk_runs_jobs_per_s=fk_rates, fk_cost=cost)
                if args.signed:
                    signed_med = statistics.median(signed_rates)
                    sign_cost = 1 - signed_med / med
                    fk_text += f" {signed_med:>14,.0f} {sign_cost:>9.1%}"
                    cpu_med, signed_cpu_med = statistics.median(cpu), statistics.median(signed_cpu)
                    entry.update(signed_median_jobs_per_s=signed_med, signed_runs_jobs_per_s=signed_rates,
                                 sign_cost=sign_cost, signed_median_worker_cpu_us_per_job=signed_cpu_med,
                                 sign_cpu_cost=signed_cpu_med / cpu_med - 1)
                runs = ", ".join(f"{x:,.0f}" for x in rates)
                if args.fk:
                    runs += " | fk " + ", ".join(f"{x:,.0f}" for x in fk_rates)
                if args.signed:
                    runs += " | signed " + ", ".join(f"{x:,.0f}" for x in signed_rates)
                    runs += (f" | worker CPU µs/job {statistics.median(cpu):.1f} unsigned, "
                             f"{statistics.median(signed_cpu):.1f} signed")
                print(f"{nprocs:>9} {batch:>6} {med:>14,.0f}{fk_text}  {runs}", flush=True)
                if args.fk:
                    re_med, fk_re_med = statistics.median(re_rates), statistics.median(fk_re_rates)
                    re_cost = 1 - fk_re_med / re_med
                    print(f"{'rewrite':>9} {batch:>6} {re_med:>14,.0f} {fk_re_med:>10,.0f} {re_cost:>8.1%}  "
                          f"{', '.join(f'{x:,.0f}' for x in re_rates)} | fk {', '.join(f'{x:,.0f}' for x in fk_re_rates)}",
                          flush=True)
                    entry.update(rewrite_median_jobs_per_s=re_med, fk_rewrite_median_jobs_per_s=fk_re_med,
                                 fk_rewrite_cost=re_cost)
                measured.append(entry)
            if args.profile:
                text = profile_in_process(g, r, args.jobs, args.batch, 25, signed_key if args.signed else key)
                print(text)
        finally:
            g.stop()
            r.stop()
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


def _drain_leftovers(g: GearmanServer, r: RedisServer, batch: int, key: str | None) -> None:
    from sync.apply.worker import SyncWorker
    from sync.config import worker_settings
    from sync.gearman import admin

    settings = worker_settings(tables=["data"], servers=g.address, redis_url=f"redis://127.0.0.1:{r.port}/0",
                               batch=batch, env={})

    async def go() -> None:
        worker = SyncWorker(settings, keys=bench_keys(key))
        task = asyncio.ensure_future(worker.run())
        while True:
            st = {s.name: s.queued for s in await admin.status(g.host, g.port, timeout_s=5)}
            if not st.get(FUNCTION):
                break
            await asyncio.sleep(0.05)
        worker.request_stop()
        await task

    asyncio.run(go())
    r.client().flushall()


if __name__ == "__main__":
    sys.exit(main())
