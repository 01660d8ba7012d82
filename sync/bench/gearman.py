"""Micro-benchmark of sync.gearman against a running gearmand (no Redis): pipelined submit, then drain.

    sync-bench gearman --port 4730 --jobs 100000 --size 150 --batch 128 --runs 3

Pre-queues ``--jobs`` background jobs of ``--size`` bytes (GearmanClient.submit_background_many), then drains them
with one worker (grab ``--batch`` per round trip, complete_many per batch) and prints jobs/s; medians over
``--runs``. ``--mode worker`` drains through GearmanWorker.fetch_batch (the multi-server helper) instead of one
GearmanWorkerConnection. Use a gearmand of your own: the function name is unique per run, but the jobs load it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from sync.gearman.client import GearmanClient
from sync.gearman.worker import GearmanWorker, GearmanWorkerConnection


async def _run_once(args: argparse.Namespace) -> tuple[float, float]:
    function = f"bench_{uuid.uuid4().hex[:8]}"
    payload = b"x" * args.size
    server = (args.host, args.port)
    async with GearmanClient([server], chunk_size=args.chunk) as client:
        started = time.perf_counter()
        handles = await client.submit_background_many(function, [payload] * args.jobs)
        submit_s = time.perf_counter() - started
    assert len(handles) == args.jobs

    drained = 0
    if args.mode == "connection":
        conn = GearmanWorkerConnection(args.host, args.port)
        await conn.connect()
        await conn.can_do(function)
        started = time.perf_counter()
        try:
            while drained < args.jobs:
                jobs = await conn.grab_jobs(args.batch)
                if not jobs:
                    break
                lost = await conn.complete_many(jobs)
                assert not lost
                drained += len(jobs)
            drain_s = time.perf_counter() - started
        finally:
            conn.close()
    else:
        async with GearmanWorker([server], [function]) as worker:
            started = time.perf_counter()
            while drained < args.jobs:
                jobs = await worker.fetch_batch(args.batch, idle_timeout_s=0.5)
                if not jobs:
                    break
                assert not await worker.complete_many(jobs)
                drained += len(jobs)
            drain_s = time.perf_counter() - started
    if drained != args.jobs:
        raise SystemExit(f"drained {drained} of {args.jobs} jobs")
    return args.jobs / submit_s, args.jobs / drain_s


async def _main(args: argparse.Namespace) -> None:
    submits, drains = [], []
    for i in range(args.runs):
        submit_rate, drain_rate = await _run_once(args)
        submits.append(submit_rate)
        drains.append(drain_rate)
        print(f"run {i + 1}: submit {submit_rate:,.0f} jobs/s, drain {drain_rate:,.0f} jobs/s")
    print(
        f"median of {args.runs}: submit {statistics.median(submits):,.0f} jobs/s (chunk {args.chunk}), "
        f"drain {statistics.median(drains):,.0f} jobs/s (batch {args.batch}, {args.mode}, "
        f"{args.jobs} jobs of {args.size} bytes)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sync-bench gearman", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=("connection", "worker"), default="connection")
    asyncio.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
