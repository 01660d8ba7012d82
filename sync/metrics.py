"""Prometheus metrics of the long-running commands (sync-worker, sync-binlog), on `--metrics-port`.

    gearsync_jobs_total               change jobs taken (applied + stale + dead)
    gearsync_applied_total            changes written to Redis
    gearsync_stale_skipped_total      changes skipped: Redis already had a newer (or the same) version
    gearsync_dead_total               jobs sent to a dead-letter list
    gearsync_retries_total            Redis apply attempts that failed and were retried
    gearsync_batch_seconds            histogram: one batch, decode + Redis round trip (before the acks)
    gearsync_lag_seconds              upper bound of the age of the changes being applied (below)

Counters are incremented once per batch, never per job: the hot path pays a few lock-protected
additions per round trip.

Lag: a trigger change carries no commit time (its version is a UUID_SHORT), so the worker cannot
know how old a job is. It knows when it last found the queue drained (a grab returned fewer jobs
than asked for): every job it handles since then was queued after that moment, so "now − last
drained" bounds the age of the jobs it is applying; 0 while it keeps up. sync-binlog reports the
counters and the batch latency (jobs = changes read, applied/stale as the applier says, or all
submitted for --sink gearman) but leaves the lag gauge alone: its changes carry no commit time yet.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "JOBS", "APPLIED", "STALE", "DEAD", "RETRIES", "BATCH_SECONDS", "LAG",
    "record_batch", "record_retry", "LagTracker", "start_metrics_server",
]

JOBS = Counter("gearsync_jobs", "Change jobs taken by the worker (applied + stale + dead)")
APPLIED = Counter("gearsync_applied", "Changes written to Redis")
STALE = Counter("gearsync_stale_skipped", "Changes skipped because Redis already held a newer or equal version")
DEAD = Counter("gearsync_dead", "Jobs that could not be applied and went to a dead-letter list")
RETRIES = Counter("gearsync_retries", "Redis apply attempts that failed and were retried")
BATCH_SECONDS = Histogram(
    "gearsync_batch_seconds", "Time to apply one batch: decode and Redis round trip (before the acknowledgements)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LAG = Gauge("gearsync_lag_seconds", "Upper bound of the age of the changes being applied (0 when caught up)")


def record_batch(jobs: int, applied: int, stale: int, dead: int, seconds: float) -> None:
    """One call per batch."""
    JOBS.inc(jobs)
    if applied:
        APPLIED.inc(applied)
    if stale:
        STALE.inc(stale)
    if dead:
        DEAD.inc(dead)
    BATCH_SECONDS.observe(seconds)


def record_retry() -> None:
    RETRIES.inc()


class LagTracker:
    """Feeds LAG from the grab sizes (see the module docstring)."""

    def __init__(self) -> None:
        self.drained_at = time.monotonic()

    def note_grab(self, got: int, asked: int) -> None:
        now = time.monotonic()
        if got < asked:
            self.drained_at = now
            LAG.set(0)
        else:
            LAG.set(now - self.drained_at)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics over HTTP on a daemon thread. Raises ConfigError for a bad or busy port."""
    from sync.errors import ConfigError

    if not 1 <= port <= 65535:
        raise ConfigError(f"--metrics-port: {port}; expected 1 to 65535")
    try:
        start_http_server(port, addr=addr)
    except OSError as exc:
        raise ConfigError(f"--metrics-port: cannot listen on {addr}:{port} ({exc.strerror or exc})") from None
