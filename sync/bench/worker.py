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
versions (the steady state of updates: the index entry exists and is unchanged). The runs are
interleaved (plain first, then fk first, round after round); each fk line shows the cost of the
median rates and the spread of the cost of the rounds. `--signed` does the same for signed jobs
(HMAC, sync.signing) drained by workers with GEARSYNC_JOB_KEY against unsigned jobs and workers
without a key. Without it the jobs are signed when GEARSYNC_JOB_KEY is set (the workers inherit it
and would refuse unsigned jobs).
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


def cpu_seconds(pids: list[int], redis_client: Any) -> float:
    """CPU time (user + system) used so far by the processes `pids` and by the Redis server."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15)
    info = redis_client.info("cpu")
    return total + float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drain_with_processes(g: GearmanServer, r: RedisServer, n: int, procs: int, batch: int, connections: int,
                         fk: bool = False, rewrite: bool = False, key: str | None = None,
                         config: str | None = None) -> tuple[float, float]:
    """jobs/s of `procs` sync-worker processes draining n pre-queued jobs, and the CPU time per job
    (us) of the workers, gearmand and redis-server meanwhile: unlike the rate, it does not grow when
    other work shares the machine. `rewrite`: the same rows again with newer versions, on top of the
    previous run's Redis (rows and, with `fk`, their index entries exist: the steady state of
    updates), instead of an empty Redis (every row is new). `key`: the jobs are signed with it and the
    workers check them (None: neither)."""
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
           "--stats-interval", "0", "--log-level", "warning", *(["--config", config] if config else [])]
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(procs)]
    pids = [w.pid for w in workers] + ([g.proc.pid] if g.proc is not None else [])
    try:
        first_t = None
        first_n = 0
        first_cpu = 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = applied_total(client) - start
            now = time.perf_counter()
            if first_t is None and done > 0:
                first_t, first_n, first_cpu = now, done, cpu_seconds(pids, client)
            if done >= n:
                assert first_t is not None
                cpu = cpu_seconds(pids, client) - first_cpu
                return (n - first_n) / max(now - first_t, 1e-9), cpu * 1e6 / max(n - first_n, 1)
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
    p.add_argument("--shape", action="store_true",
                   help="also measure the jobs with a zset index, a set index and the change stream on "
                        "([tables.data] indexes/stream, docs/shaping.md), side by side with plain json")
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
            print(f"{'processes':>9} {'batch':>6} {'median jobs/s':>14}{fk_head}  runs", flush=True)
            for nprocs, batch in configs:
                n = args.jobs if batch > 1 else min(args.jobs, 20_000)
                rates: list[float] = []
                fk_rates: list[float] = []
                re_rates: list[float] = []
                fk_re_rates: list[float] = []
                cpu: dict[tuple[bool, bool], list[float]] = {}  # (fk, rewrite) -> CPU us per job, per run
                signed_rates: list[float] = []
                signed_cpu: list[float] = []
                for i in range(args.runs):
                    # Interleaved, and in the other order every second round (plain first, then fk
                    # first): drift of the shared machine hits both alike. A rewrite follows its
                    # own first write (it rewrites those rows).
                    for fk in ((False, True) if i % 2 == 0 else (True, False)) if args.fk else (False,):
                        for rewrite in (False, True) if args.fk else (False,):
                            rate, us = drain_with_processes(g, r, n, nprocs, batch, args.connections, fk=fk,
                                                            rewrite=rewrite, key=key)
                            ((fk_re_rates if fk else re_rates) if rewrite else (fk_rates if fk else rates)).append(rate)
                            cpu.setdefault((fk, rewrite), []).append(us)
                    if args.signed:
                        rate, us = drain_with_processes(g, r, n, nprocs, batch, args.connections, key=signed_key)
                        signed_rates.append(rate)
                        signed_cpu.append(us)
                med = statistics.median(rates)
                entry: dict[str, object] = {"processes": nprocs, "batch": batch, "jobs": n,
                                            "median_jobs_per_s": med, "runs_jobs_per_s": rates}
                if not args.fk:
                    runs = ", ".join(f"{x:,.0f}" for x in rates)
                    print(f"{nprocs:>9} {batch:>6} {med:>14,.0f}  {runs}", flush=True)
                if args.signed:
                    # signed after unsigned in every round; the cost of the median rates and of the
                    # median CPU time per job (workers + gearmand + redis-server)
                    signed_med = statistics.median(signed_rates)
                    base_cpu, with_sign_cpu = statistics.median(cpu[(False, False)]), statistics.median(signed_cpu)
                    print(f"{'signed':>9} {batch:>6} {signed_med:>14,.0f}  cost {1 - signed_med / med:.1%}; CPU "
                          f"{base_cpu:.1f} -> {with_sign_cpu:.1f} us/job ({with_sign_cpu / base_cpu - 1:+.1%}); "
                          f"{', '.join(f'{x:,.0f}' for x in signed_rates)}", flush=True)
                    entry.update(signed_median_jobs_per_s=signed_med, signed_runs_jobs_per_s=signed_rates,
                                 sign_cost=1 - signed_med / med, cpu_us_per_job=cpu[(False, False)],
                                 signed_cpu_us_per_job=signed_cpu, sign_cpu_cost=with_sign_cpu / base_cpu - 1)
                for label, name, plain, fk_runs, rewrite in ((str(nprocs), "fk", rates, fk_rates, False),
                                                            ("rewrite", "fk_rewrite", re_rates, fk_re_rates, True)):
                    if not args.fk:
                        break
                    # the cost of the median rates, and the spread of the cost over the rounds
                    base, with_fk = statistics.median(plain), statistics.median(fk_runs)
                    cost = 1 - with_fk / base
                    paired = sorted(1 - f / p for p, f in zip(plain, fk_runs))
                    print(f"{label:>9} {batch:>6} {base:>14,.0f} {with_fk:>10,.0f} {cost:>8.1%}  "
                          f"cost per round {paired[0]:.1%}..{paired[-1]:.1%}; "
                          f"{', '.join(f'{x:,.0f}' for x in plain)} | fk {', '.join(f'{x:,.0f}' for x in fk_runs)}",
                          flush=True)
                    # The same from the CPU time per job (workers + gearmand + redis-server).
                    cpu_base, cpu_fk = statistics.median(cpu[(False, rewrite)]), statistics.median(cpu[(True, rewrite)])
                    cpu_cost = 1 - cpu_base / cpu_fk
                    cpu_paired = sorted(1 - p / f for p, f in zip(cpu[(False, rewrite)], cpu[(True, rewrite)]))
                    print(f"{'':>9} {'cpu':>6} {cpu_base:>11.1f} us {cpu_fk:>7.1f} us {cpu_cost:>8.1%}  "
                          f"cost per round {cpu_paired[0]:.1%}..{cpu_paired[-1]:.1%} (CPU time per job)", flush=True)
                    entry.update({f"{name}_cpu_us_per_job_base": cpu[(False, rewrite)],
                                  f"{name}_cpu_us_per_job": cpu[(True, rewrite)], f"{name}_cpu_cost": cpu_cost})
                    entry.update({f"{name}_base_median_jobs_per_s": base, f"{name}_median_jobs_per_s": with_fk,
                                  f"{name}_cost": cost, f"{name}_cost_per_round": paired,
                                  f"{name}_base_runs_jobs_per_s": plain, f"{name}_runs_jobs_per_s": fk_runs})
                measured.append(entry)
            if args.shape:
                results["shape"] = _shape_rounds(g, r, args, procs[0], os.environ.get(ENV_KEY) or None, Path(tmp))
            if args.profile:
                text = profile_in_process(g, r, args.jobs, args.batch, 25, signed_key if args.signed else key)
                print(text)
        finally:
            g.stop()
            r.stop()
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


# a zset index and a set index (1000 values) by volume, and the change stream
SHAPE_CONFIG = ('[tables.data]\nindexes = [{ type = "zset", column = "volume" }, { type = "set", column = "volume" }]\n'
                'stream = { maxlen = 100000 }\n')


def _shape_rounds(g: GearmanServer, r: RedisServer, args: Any, nprocs: int, key: str | None, tmp: Path) -> dict[str, Any]:
    """--shape: plain json and the same jobs with a zset index, a set index (1000 values) and the
    stream on, interleaved round after round (the order swapped every second round); the ratio of
    the medians and of each round."""
    config = tmp / "shape.toml"
    config.write_text(SHAPE_CONFIG)
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}  # CPU us per job: workers + gearmand + redis-server
    for i in range(args.runs):
        for shaped in (False, True) if i % 2 == 0 else (True, False):
            rate, us = drain_with_processes(g, r, args.jobs, nprocs, args.batch, args.connections, key=key,
                                            config=str(config) if shaped else None)
            rates[shaped].append(rate)
            cpu[shaped].append(us)
    base, shaped_med = statistics.median(rates[False]), statistics.median(rates[True])
    per_round = sorted(s / p for p, s in zip(rates[False], rates[True]))
    cpu_base, cpu_shaped = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"{'shape':>9} {args.batch:>6} {base:>14,.0f} {shaped_med:>10,.0f}  ratio {shaped_med / base:.2f}x "
          f"(rounds {per_round[0]:.2f}..{per_round[-1]:.2f}); plain {', '.join(f'{x:,.0f}' for x in rates[False])} | "
          f"zset+set+stream {', '.join(f'{x:,.0f}' for x in rates[True])}", flush=True)
    print(f"{'':>9} {'cpu':>6} {cpu_base:>11.1f} us {cpu_shaped:>7.1f} us  ratio {cpu_base / cpu_shaped:.2f}x "
          "(CPU time per job of the workers, gearmand and redis-server: less sensitive to other load)", flush=True)
    return {"processes": nprocs, "plain_runs_jobs_per_s": rates[False], "shape_runs_jobs_per_s": rates[True],
            "ratio": shaped_med / base, "ratio_per_round": per_round, "plain_cpu_us_per_job": cpu[False],
            "shape_cpu_us_per_job": cpu[True], "cpu_ratio": cpu_base / cpu_shaped}


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
