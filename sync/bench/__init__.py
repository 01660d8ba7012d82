"""Benchmarks, run as `sync-bench NAME [options]` (or `python -m sync.bench NAME`).

    sync-bench udf       trigger overhead of the gearsync UDFs (make bench-udf)
    sync-bench triggers  cost and end-to-end lag of the capture triggers, udf and outbox modes
    sync-bench worker    draining pre-queued change jobs into Redis (make bench-worker)
    sync-bench binlog    sync-binlog's catch-up rate against mysql-replication's own decode rate
    sync-bench snapshot  sync-snapshot and sync-verify rows/s and peak memory
    sync-bench compare   the capture paths side by side on one write load (lag, writer rate)
    sync-bench gearman   the asyncio Gearman client/worker alone, against a gearmand you run

Each benchmark except `gearman` starts its own throwaway servers (sync.testing.servers), prints
medians and can write them with --json FILE. Benchmarks are not tests: they assert nothing.
"""

BENCHMARKS = {
    "udf": "sync.bench.udf",
    "triggers": "sync.bench.triggers",
    "worker": "sync.bench.worker",
    "binlog": "sync.bench.binlog",
    "snapshot": "sync.bench.snapshot",
    "compare": "sync.bench.compare",
    "gearman": "sync.bench.gearman",
}
