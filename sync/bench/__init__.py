"""Benchmarks, run as `python -m sync.bench NAME [options]`.

    python -m sync.bench udf      trigger overhead of the gearsync UDFs (make bench-udf)
    python -m sync.bench worker   draining pre-queued change jobs (make bench-worker)

Each benchmark starts its own throwaway servers (sync.testing.servers), prints medians and can
write them with --json FILE.  Benchmarks are not tests: they assert nothing.
"""

BENCHMARKS = {
    "udf": "sync.bench.udf",
    "worker": "sync.bench.worker",
    "binlog": "sync.bench.binlog",
    "snapshot": "sync.bench.snapshot",
    "triggers": "sync.bench.triggers",
    "compare": "sync.bench.compare",
}
