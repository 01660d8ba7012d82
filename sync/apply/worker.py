"""The sync-worker loop: Gearman jobs → change events → Redis, acknowledged only after Redis has them.

    jobs = fetch_batch()                       # up to --batch jobs, pipelined GRAB_JOB_UNIQ
    events, dead = decode(jobs)                # strict parse; what can never apply is dead
    applier.apply(events); deadletters.put()   # one round trip; raises while Redis is down
    complete_many(jobs)                        # only now: WORK_COMPLETE

Redis down: the batch is held (not completed) and retried with capped, jittered back-off; if the
worker dies meanwhile, gearmand hands the jobs to another worker. A job that can never be applied
(invalid JSON, wrong table, no primary key, …) goes to the table's dead-letter list with the raw
payload and the reason, and is then completed. `--connections N` runs N such loops, each with
its own Gearman connections, so Gearman and Redis round trips of different batches overlap.

A batch job (sync-binlog --sink gearman --job-changes N, sync.events) carries several changes of
one table: each is decoded and checked like a job of its own and applied with the rest of the batch;
a bad change is dead-lettered alone (its JSON, re-signed when a key is set, and its reason), and the
job is completed only once Redis has all the others.

A "truncate" job (TRUNCATE/DROP TABLE read by sync-binlog --sink gearman, sync.events) is applied in
its place in the batch: the changes before it first, then sync.apply.truncate removes the table's
rows older than it, then the rest.

Stop (SIGTERM/SIGINT → `request_stop()`): stop grabbing, finish the batches in hand within
`shutdown_timeout_s` (or give them back to gearmand by closing the connection), exit 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions
import structlog

from sync import metrics
from sync.apply.applier import Outcome, RedisApplier
from sync.apply.deadletter import DeadLetter, DeadLetterStore
from sync.apply.truncate import TableWipe
from sync.config import CLASSIC_FUNCTION, WorkerSettings
from sync.errors import ApplyError, PayloadError, short_error
from sync.events import (
    BadChange,
    ChangeEvent,
    ClassicSet,
    Op,
    TableTruncate,
    encode_change,
    parse_batch,
    parse_change,
    parse_classic,
    parse_truncate,
)
from sync.gearman import GearmanWorker, Job
from sync.redis_client import connect_redis
from sync.retry import Backoff, DeadlinePassed, retry_until
from sync.signing import JobKeys, load_keys
from sync.stats import Counters, report_loop

log = structlog.get_logger(__name__)

REDIS_ERRORS = (ApplyError, redis.exceptions.RedisError, OSError)
MAX_APPLY_BYTES = 32 * 1024 * 1024
MAX_APPLY_CHANGES = 2048   # per script call (about sync-binlog --sink redis's --batch)


@dataclass
class WorkerStats(Counters):
    """Counters since start; the stats line reports deltas."""

    jobs: int = 0
    applied: int = 0
    stale: int = 0
    dead: int = 0
    retries: int = 0
    lost_completions: int = 0
    batches: int = 0
    redis_s: float = 0.0


class SyncWorker:
    """Runs the loops of one sync-worker process; see the module docstring."""

    def __init__(self, settings: WorkerSettings, *, redis: Any | None = None, idle_timeout_s: float = 1.0,
                 keys: JobKeys | None = None) -> None:
        self.settings = settings
        keys = load_keys() if keys is None else keys
        keys.warn_if_off("sync-worker")
        self.verifier = keys.verifier  # GEARSYNC_JOB_KEY (+ _OLD): unsigned or forged jobs are dead letters
        self.signer = keys.signer      # re-signs a bad change of a (verified) batch job for dead-letter replay
        self.redis = redis if redis is not None else connect_redis(settings.redis)
        self.applier = RedisApplier(self.redis, settings.tables, tombstone_ttl_s=settings.tombstone_ttl_s)
        self.deadletters = DeadLetterStore(self.redis)
        self.wipe = TableWipe(settings.tables, tombstone_ttl_s=settings.tombstone_ttl_s,
                              cluster=bool(settings.redis.cluster))
        # function → table name, or None for the classic bare-payload function.
        self.routes: dict[str, str | None] = dict(settings.functions)
        if settings.classic:
            self.routes[CLASSIC_FUNCTION] = None
        # With {table}/{pk} only, every event of a served table can be keyed: skip the per-event check.
        self._check_key = {name: "{pk." in t.key_template for name, t in settings.tables.items()}
        self.idle_timeout_s = idle_timeout_s
        self.stats = WorkerStats()
        self._stop = asyncio.Event()
        self._stop_deadline: float | None = None
        self._gearman: list[GearmanWorker] = []
        self._lag = metrics.LagTracker()
        # Metrics and /healthz: the table label of each function, the last failure of a batch's
        # Redis write and of the gauge poll (None: the last one worked), when a batch last landed.
        self._labels = {fn: self.dead_letter_name(fn) for fn in self.routes}
        self.redis_error: str | None = None
        self.poll_error: str | None = None
        self.applied_at = time.monotonic()
        metrics.init_tables(self._labels.values(), metrics.jobs_by, metrics.applied_by, metrics.stale_by,
                            metrics.dead_by)

    # -- control -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("worker_stopping", shutdown_timeout_s=self.settings.shutdown_timeout_s)
            self._stop_deadline = time.monotonic() + self.settings.shutdown_timeout_s
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- decode --------------------------------------------------------------------------------
    def decode(self, function: str, workload: bytes) -> ChangeEvent | ClassicSet | TableTruncate:
        """The change a job carries; PayloadError (with the reason) when it can never be applied."""
        workload = self.verifier.open(function.encode(), workload)  # first: nothing unsigned is parsed
        if function not in self.routes:
            raise PayloadError(f"function {function!r} is not served here; expected one of {', '.join(self.routes)}")
        table = self.routes[function]
        if table is None:
            return parse_classic(workload)
        event: ChangeEvent | TableTruncate | None = parse_truncate(workload)
        if event is None:
            event = parse_change(workload)
        return self._checked(function, event)

    def _checked(self, function: str, event: ChangeEvent | TableTruncate) -> ChangeEvent | TableTruncate:
        """`event` if it can be applied as a change of `function`'s table; PayloadError otherwise."""
        table = self.routes[function]
        assert table is not None   # not the classic function
        if event.table != table and not (type(event) is ChangeEvent and event.op is Op.CASCADE):
            # op cascade (a parent that is not synced) arrives on a child's function.
            raise PayloadError(f"table: {event.table!r} arrived on function {function!r}; expected {table!r}")
        if type(event) is ChangeEvent:
            if self._check_key[table]:
                self.applier.check(event)  # {pk.<col>} templates (and cascades) can fail per event
            elif event.refs is not None or event.cascade is not None:
                self.applier.check_cascade(event)
        return event

    def decode_job(self, function: str, workload: bytes) -> list[ChangeEvent | ClassicSet | TableTruncate | BadChange]:
        """The changes a job carries: its one change, or each change of a batch job (sync.events),
        checked as decode() checks a job's; a bad change of a batch is a BadChange (with its
        reason), the others still apply. PayloadError when the job as a whole can never be applied."""
        if self.routes.get(function) is None or b'"changes"' not in workload:
            return [self.decode(function, workload)]   # classic, a single change or a statement
        payload = self.verifier.open(function.encode(), workload)
        batch = parse_batch(payload)
        if batch is None:    # "changes" is in a value of a single change
            return [self.decode(function, workload)]
        out: list[ChangeEvent | ClassicSet | TableTruncate | BadChange] = []
        for i, item in enumerate(batch):
            if isinstance(item, ChangeEvent):
                try:
                    out.append(self._checked(function, item))
                except PayloadError as exc:
                    out.append(BadChange(encode_change(item), f"changes[{i}]: {exc}"))
            else:
                out.append(item)
        return out

    def split_job(self, function: str, workload: bytes
                  ) -> tuple[list[ChangeEvent | ClassicSet | TableTruncate], list[tuple[bytes, str]]]:
        """decode_job() as (the changes to apply, the (raw, reason) to dead-letter): the whole job
        when it can never be applied, else each bad change of a batch as its JSON (signed again when
        a key is set, so that a replay of the dead letter verifies it like a job)."""
        try:
            items = self.decode_job(function, workload)
        except PayloadError as exc:
            return [], [(workload, str(exc))]
        good: list[ChangeEvent | ClassicSet | TableTruncate] = []
        bad: list[tuple[bytes, str]] = []
        for item in items:
            if isinstance(item, BadChange):
                bad.append((self.signer.sign(function.encode(), item.raw) if self.signer else item.raw, item.reason))
            else:
                good.append(item)
        return good, bad

    def dead_letter_name(self, function: str) -> str:
        table = self.routes.get(function)
        return table if table is not None else function

    # -- one batch -----------------------------------------------------------------------------
    async def process(self, gearman: GearmanWorker, jobs: Sequence[Job]) -> bool:
        """Apply a batch and complete its jobs. False when the jobs were given back instead."""
        t0 = time.perf_counter()
        events: list[ChangeEvent | ClassicSet | TableTruncate] = []
        sizes: list[int] = []
        functions: list[str] = []   # of each event, for the per-table counters
        dead: dict[str, list[tuple[bytes, str, str | None, str | None]]] = {}
        for job in jobs:
            good, bad = self.split_job(job.function, job.workload)
            size = len(job.workload) // len(good) + (len(good) > 1) if good else 0   # a batch job's: a change's share
            for event in good:
                events.append(event)
                sizes.append(size)
                functions.append(job.function)
            for raw, reason in bad:
                dead.setdefault(self.dead_letter_name(job.function), []).append((raw, reason, job.function, job.unique))
                log.warning("job_dead_lettered", function=job.function, unique=job.unique, bytes=len(raw),
                            reason=reason[:300])
        outcomes = await self._write(events, sizes, dead, jobs, gearman)
        if outcomes is None:
            return False
        st = self.stats
        applied_flags = [o is Outcome.APPLIED for o in outcomes]
        applied = sum(applied_flags)
        dead_count = sum(len(v) for v in dead.values())
        st.applied += applied
        st.stale += len(outcomes) - applied
        st.dead += dead_count
        st.jobs += len(jobs)
        st.batches += 1
        metrics.record_batch(time.perf_counter() - t0)
        self.applied_at = time.monotonic()
        counts = metrics.TableCounts()
        if len(set(functions)) == 1:
            counts.add(self._labels[functions[0]], len(functions), applied)   # one table: the usual batch
        else:
            labels = self._labels
            counts.outcomes([labels[fn] for fn in functions], applied_flags)
        for name, letters in dead.items():
            counts.add(name, 0, dead=len(letters))
        counts.record_applied(jobs=True)
        lost = await gearman.complete_many(jobs)
        if lost:
            # Their connection died after Redis took the write: gearmand redelivers them and the
            # version fence turns the second apply into a no-op.
            st.lost_completions += len(lost)
        return True

    async def _write(
        self,
        events: list[ChangeEvent | ClassicSet | TableTruncate],
        sizes: list[int],
        dead: dict[str, list[tuple[bytes, str, str | None, str | None]]],
        jobs: Sequence[Job],
        gearman: GearmanWorker,
    ) -> list[Outcome] | None:
        backoff = Backoff(initial_s=0.05, max_s=5.0, jitter=0.5)
        chunks = _chunks_by_bytes(events, sizes, MAX_APPLY_BYTES)

        async def write() -> list[Outcome]:
            t0 = time.perf_counter()
            outcomes: list[Outcome] = []
            for chunk in chunks:
                outcomes += await self.apply(chunk)
            for name, items in dead.items():
                await self.deadletters.put_many(name, items)
            self.stats.redis_s += time.perf_counter() - t0
            if self.redis_error is not None:  # this write ends the worker's episode
                self.redis_error = None
                log.info("redis_recovered", jobs=len(jobs), attempts=backoff.attempts)
            return outcomes

        def on_retry(exc: BaseException, delay: float) -> None:
            self.stats.retries += 1
            # One line per episode of the worker (its first failure in any of its batches in flight;
            # redis_recovered ends it), not one per attempt or per batch: an OOM or an outage of
            # minutes would otherwise log every few seconds per batch.
            first = self.redis_error is None
            self.redis_error = short_error(exc)
            metrics.record_retry()
            (log.warning if first else log.debug)(
                "redis_unavailable", error=short_error(exc), jobs=len(jobs), retry_in_s=round(delay, 3),
                attempt=backoff.attempts)

        try:
            outcomes = await retry_until(write, retry_on=REDIS_ERRORS, backoff=backoff,
                                         deadline=lambda: self._stop_deadline if self.stopping else None,
                                         on_retry=on_retry)
        except DeadlinePassed as gave_up:
            self.stats.retries += 1
            metrics.record_retry()
            log.warning("jobs_given_back", jobs=len(jobs), reason="redis unavailable at shutdown",
                        error=short_error(gave_up.__cause__ or gave_up))
            gearman.release(jobs)
            return None
        return outcomes

    async def apply(self, events: Sequence[ChangeEvent | ClassicSet | TableTruncate]) -> list[Outcome]:
        """The applier's apply(), with each TableTruncate applied in its place (one Outcome each)."""
        if not any(type(ev) is TableTruncate for ev in events):
            return await self.applier.apply(events)  # type: ignore[arg-type]  # no TableTruncate in it
        outcomes: list[Outcome] = []
        run: list[ChangeEvent | ClassicSet] = []
        for ev in events:
            if type(ev) is TableTruncate:
                outcomes += await self.applier.apply(run)
                run = []
                await self.wipe.apply(self.redis, ev)
                outcomes.append(Outcome.APPLIED)
            else:
                run.append(ev)  # type: ignore[arg-type]  # not a TableTruncate
        return outcomes + await self.applier.apply(run)

    # -- loops ---------------------------------------------------------------------------------
    async def _loop(self, gearman: GearmanWorker) -> None:
        batch = self.settings.batch
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            while not self.stopping:
                fetch = asyncio.ensure_future(gearman.fetch_batch(batch, self.idle_timeout_s))
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    # Stopping while waiting for work: anything assigned but unread goes back to
                    # gearmand when the connection closes below.
                    fetch.cancel()
                    await asyncio.gather(fetch, return_exceptions=True)
                    break
                jobs = fetch.result()
                self._lag.note_grab(len(jobs), batch)
                if jobs:
                    await self.process(gearman, jobs)
        finally:
            stop_wait.cancel()
            await gearman.close()

    async def _report(self) -> None:
        def report(d: dict[str, float], cur: dict[str, float], seconds: float) -> None:
            log.info(
                "worker_stats",
                jobs_per_s=round(d["jobs"] / seconds, 1),
                applied=int(d["applied"]),
                stale=int(d["stale"]),
                dead=int(d["dead"]),
                retries=int(d["retries"]),
                redis_ms_per_batch=round(1000 * d["redis_s"] / d["batches"], 2) if d["batches"] else None,
                total_jobs=int(cur["jobs"]),
                gearman_servers=sum(len(g.connected_servers) for g in self._gearman),
            )

        await report_loop(self.stats, self.settings.stats_interval_s, report, self._stop)

    # -- gauges and /healthz ----------------------------------------------------------------------
    async def _monitor(self) -> None:
        """Every POLL_S: gearmand's queue depth of the functions served (admin status) and the dead
        letters stored per table (LLEN), each bounded by POLL_TIMEOUT_S; a Redis poll that fails
        marks Redis unreachable for /healthz even while no batch is in hand. Runs beside the loops:
        a slow server delays the next poll, never a batch."""
        from sync.gearman import GearmanError, admin
        from sync.health import POLL_S, POLL_TIMEOUT_S
        from sync.keys import dead_letter_key

        labels = self._labels
        names = sorted(set(labels.values()))
        while not self.stopping:
            rows = []
            for host, port in self.settings.servers:
                try:
                    rows += await admin.status(host, port, timeout_s=POLL_TIMEOUT_S)
                except GearmanError as exc:
                    log.debug("queue_poll_failed", server=f"{host}:{port}", error=short_error(exc))
            metrics.set_queue_depth(rows, labels)
            try:
                async with asyncio.timeout(POLL_TIMEOUT_S):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for name in names:
                            pipe.llen(dead_letter_key(name))
                        sizes = await pipe.execute()
                for name, size in zip(names, sizes):
                    metrics.dead_letters_by[name].set(size)
                self.poll_error = None
            except (TimeoutError, *REDIS_ERRORS) as exc:
                self.poll_error = short_error(exc) if not isinstance(exc, TimeoutError) else \
                    f"no reply within {POLL_TIMEOUT_S:g} s"
            try:
                await asyncio.wait_for(self._stop.wait(), POLL_S)
            except TimeoutError:
                pass

    def health(self) -> tuple[str | None, dict[str, Any]]:
        """/healthz: connected to gearmand and Redis, and the queue drained or a batch applied
        within PROGRESS_S (sync.health)."""
        from sync.health import PROGRESS_S

        now = time.monotonic()
        gearman = sum(len(g.connected_servers) for g in self._gearman)
        idle_s = now - max(self._lag.drained_at, self.applied_at)
        details = {"command": "sync-worker", "gearman_connections": gearman,
                   "seconds_since_progress": round(idle_s, 1), "jobs": self.stats.jobs}
        error = self.redis_error or self.poll_error
        if error is not None:
            return f"redis: {error}", details
        if not gearman:
            servers = ",".join(f"{h}:{p}" for h, p in self.settings.servers)
            return f"not connected to any gearmand ({servers})", details
        if idle_s > PROGRESS_S:
            return (f"no progress: no batch applied and the queue not drained for {idle_s:.0f} s "
                    f"(limit {PROGRESS_S:.0f} s)"), details
        return None, details

    async def run(self, *, monitor: bool = False) -> int:
        """Serve until request_stop(); returns the exit code (0). `monitor`: poll the gauges and
        register the /healthz check (with --metrics-port)."""
        functions = list(self.routes)
        s = self.settings
        log.info(
            "worker_started",
            functions=functions,
            servers=[f"{h}:{p}" for h, p in s.servers],
            redis=s.redis.display_url,
            batch=s.batch,
            connections=s.connections,
        )
        self._gearman = [
            GearmanWorker(s.servers, functions, client_id=f"{s.client_id}-{i}") for i in range(s.connections)
        ]
        tasks = [asyncio.ensure_future(self._report())]
        if monitor:
            from sync.health import set_check

            metrics.register("sync-worker")
            set_check(self.health)
            tasks.append(asyncio.ensure_future(self._monitor()))
        try:
            await asyncio.gather(*(self._loop(g) for g in self._gearman))
        finally:
            self._stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.aclose()
        log.info("worker_stopped", **{k: int(v) for k, v in self.stats.snapshot().items() if k != "redis_s"})
        return 0

    async def aclose(self) -> None:
        """Close the Redis client (run() does it when it ends; call it after replay_dead())."""
        try:
            await self.redis.aclose()
        except Exception as exc:  # closing a broken connection must not mask the exit
            log.debug("redis_close_failed", error=short_error(exc))

    # -- dead-letter replay ------------------------------------------------------------------
    async def replay_dead(self, batch: int = 200) -> tuple[int, int]:
        """Re-apply every table's dead letters; (applied, still dead). Safe to interrupt: records
        are claimed into a processing list and removed only after the re-apply (or re-dead-letter)."""
        ok = failed = 0
        for function, table in self.routes.items():
            name = table if table is not None else function
            await self.deadletters.restore(name)  # claimed by an interrupted replay
            remaining = await self.deadletters.size(name)
            # Only the letters present now: those that fail again go to the tail and are not retried
            # in this run.
            while remaining > 0:
                letters = await self.deadletters.pop_batch(name, min(batch, remaining))
                if not letters:
                    break
                remaining -= len(letters)
                events: list[ChangeEvent | ClassicSet | TableTruncate] = []
                again: list[tuple[bytes, str, str | None, str | None]] = []
                for letter in letters:
                    good, bad = self.split_job(function, letter.raw)
                    events += good
                    again += [(raw, reason, letter.function, letter.unique) for raw, reason in bad]
                if events:
                    await self.apply(events)
                if again:
                    await self.deadletters.put_many(name, again)
                await self.deadletters.ack(name, letters)
                ok += len(events)
                failed += len(again)
                log.info("dead_letters_replayed", name=name, applied=len(events), still_dead=len(again))
        return ok, failed


def _chunks_by_bytes(events: list[Any], sizes: list[int], limit: int) -> list[list[Any]]:
    """Split a batch so one script call carries at most about `limit` payload bytes (Redis
    bounds a request's size; a few huge rows must not make one giant call) and MAX_APPLY_CHANGES
    changes (batch jobs: --batch jobs can hold a hundred times more changes; one script call
    blocks Redis while it runs)."""
    if sum(sizes) <= limit and len(events) <= MAX_APPLY_CHANGES:
        return [events] if events else []
    chunks: list[list[Any]] = [[]]
    total = 0
    for ev, size in zip(events, sizes):
        if chunks[-1] and (total + size > limit or len(chunks[-1]) >= MAX_APPLY_CHANGES):
            chunks.append([])
            total = 0
        chunks[-1].append(ev)
        total += size
    return chunks


__all__ = ["SyncWorker", "WorkerStats", "DeadLetter"]
