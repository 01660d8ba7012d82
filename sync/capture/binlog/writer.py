"""The sinks of sync-binlog, written from the reader thread itself (the design:
sync.capture.binlog.service): RedisWriter (--sink redis) and GearmanWriter (--sink gearman), both
on one BatchWriter that gathers the reader's chunks into batches.

A batch is sent when it holds --batch events, when its oldest change has waited --flush-ms (20 ms),
or when the server went quiet: the dump connection's reads first try without waiting, and when
nothing is there the reader sends what it holds and reads the reply before it waits
(BinlogSource._hook_quiet). So a trickle of changes is delivered within about one round trip
after the server sent it, and a backlog goes in batches of --flush-ms worth of changes, each
costing this thread one packed write and one (by then ready) reply. Why one thread: with the
writes on an asyncio loop thread, every socket operation there waited for the GIL held by the
CPU-bound reader (~5 ms switch interval each); the decoding alone was the limit anyway.

--sink redis, standalone Redis: the batch and its position are one EVALSHA (the position as its
last item, atomic with the rows), sent on a synchronous redis-py connection without waiting; the
reply is read before the next batch is sent. On a Redis Cluster the batch is split by slot: it goes
through the applier's apply() (a private event loop in this thread, nothing in flight meanwhile)
and the position is a separate SET after it: at least once, the replay harmless (STALE).

--sink gearman: the batch's jobs are pipelined SUBMIT_JOB_BG packets in one write on a blocking
socket (sync.gearman.blocking), sent without waiting; before the next batch (or when the server
went quiet) every JOB_CREATED is read and only then is the position SET in Redis: never a
position ahead of jobs gearmand does not hold. A crash in between resubmits those jobs; their
unique ids are derived from (stream, version, op), so gearmand merges a resubmission into a
still-queued copy, and one that already ran is applied again as STALE.

A job carries up to --job-changes consecutive changes of one function (the batch payload of
sync.events; at most JOB_BYTES, and a job of one change is a plain v1 job): gearmand's cost is per
job (receive, queue, hash the unique id), the same on the 2 cores the reader runs on. Its unique
id is (stream, first version, last version) (_batch_unique): the same changes read again after a
crash merge into a queued copy; batched differently (another flush moment) they are another job,
and its changes already applied are STALE (the version fence). --job-changes 1: a job per change.

A chunk with table statements (TRUNCATE/DROP, sync.capture.binlog.reader) is a barrier: the batch
gathered so far is sent and its reply read, then each statement is delivered (retried like a
batch), and only then does the statement's position join the next batch. --sink redis wipes the
table's older keys (sync.apply.truncate); --sink gearman waits until gearmand holds no job of the
table's function (queued or running: every earlier change of the table is in Redis or
dead-lettered), then submits the statement as a "truncate" job that sync-worker applies.

A batch with FK cascades (events carrying "cascade", sync.capture.binlog.reader) cannot be one
packed write: a cascade reads the children's state in Redis first. --sink redis: after the batch
in flight has landed, it goes through apply() (reads, then the guarded script call, retried when a
child changed in between). --sink gearman: the events up to a run of cascading events are
submitted first, then the run waits until the functions it touches are drained (jobs of different
functions run in any order), then it is submitted.

While the sink is down, the failed batch is sent again with back-off (50 ms … 5 s) from the reader
thread, which therefore stops reading (the binlog waits in the server, nothing is lost). Once a
stop is requested, a batch that cannot land by the shutdown deadline is dropped (`gave_up`), its
position not saved.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.exceptions
import structlog

from sync import metrics
from sync.apply.applier import Outcome, RedisApplier
from sync.capture.binlog.reader import Chunk
from sync.errors import ApplyError
from sync.events import ChangeEvent, TableTruncate, encode_batch, encode_change, encode_truncate
from sync.gearman import GearmanError
from sync.gearman.blocking import BlockingSubmitter
from sync.gearman.protocol import encode_function
from sync.position import Position
from sync.redis_client import connect_redis
from sync.retry import Backoff, DeadlinePassed, retry_until_sync

if TYPE_CHECKING:  # the service creates the writer; no import at run time
    from sync.capture.binlog.service import BinlogService

log = structlog.get_logger(__name__)

T = TypeVar("T")

__all__ = ["BatchWriter", "GearmanWriter", "RedisWriter", "make_writer"]

# A delivery that did not land: send it again.
SEND_ERRORS = (ApplyError, redis.exceptions.RedisError, OSError, GearmanError)
DRAIN_POLL_S = 0.02
JOB_BYTES = 256 * 1024   # --sink gearman: most payload bytes of a batch job (one bigger change goes alone)


def make_writer(service: BinlogService) -> BatchWriter:
    """The writer of the service's sink."""
    if service.settings.sink == "gearman":
        return GearmanWriter(service)
    return RedisWriter(service)


class BatchWriter:
    """Gathers the source's chunks into batches in the reader thread (see the module docstring):
    `add` sends a batch when it is full or old enough, `idle` (the server went quiet) sends what is
    held and waits for its acknowledgement; at most one batch in flight. A failed delivery is
    retried with back-off until it lands, which keeps the reader from reading meanwhile, or, once a
    stop is requested, until the shutdown deadline: then it is dropped (`gave_up`) with the position
    not advanced. Subclasses: _send (start a batch, maybe leaving it in flight), finish (wait for
    the one in flight), _statement, _close."""

    def __init__(self, service: BinlogService) -> None:
        s = service.settings
        self.service = service
        self.limit = s.batch
        self.flush_s = s.flush_ms / 1000.0
        self.events: list[ChangeEvent] = []       # the batch being gathered
        self.position: Position | None = None     # ... and the last commit it covers
        self.rows = 0
        self.first_t = 0.0
        self.inflight: Any = None                 # the batch sent and not yet acknowledged
        self.gave_up = False
        self.client: Any = None                   # sync_client()
        # Statements, cascades and (on a cluster) batches run on a private event loop with a Redis
        # client of its own (this thread has no loop; the service's client belongs to the main one).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aclient: Any = None

    # -- called by BinlogSource.run ------------------------------------------------------------
    def add(self, chunk: Chunk) -> None:
        if self.gave_up:
            return
        if chunk.statements:
            self.statements(chunk)
            return
        events = chunk.events
        if events:
            if not self.events:
                self.first_t = chunk.t
                self.events = events  # the chunk's own list: no copy
            else:
                self.events.extend(events)
        if chunk.position is not None:
            self.position = chunk.position
        self.rows += chunk.rows
        if self.events and (len(self.events) >= self.limit or chunk.t - self.first_t >= self.flush_s):
            self.send()

    def idle(self) -> None:
        if self.gave_up:
            return
        if self.events or self.position is not None:
            self.send()
        if self.inflight is not None:
            self.finish()

    def close(self) -> None:
        """Deliver what is held (bounded by the shutdown deadline), then close the connections."""
        try:
            self.idle()
        finally:
            self._close()
            if self.client is not None:
                self.client.close()
            if self._loop is not None:
                if self._aclient is not None:
                    self._loop.run_until_complete(self._aclient.aclose())
                self._loop.close()

    def statements(self, chunk: Chunk) -> None:
        """TRUNCATE/DROP of tables: what came before lands first, then each statement; the
        statement's position is saved with the next batch (a restart before that repeats the
        statement, which the versions make harmless)."""
        self.events.extend(chunk.events)
        self.rows += chunk.rows
        self.idle()
        for st in chunk.statements:
            if self.gave_up or not self._done(lambda st=st: self._statement(st), "truncate", 1):  # type: ignore[misc]
                return
        self.position = chunk.position

    # -- batches -------------------------------------------------------------------------------
    def send(self) -> None:
        """Send the gathered batch; the one in flight before it is acknowledged first."""
        if self.inflight is not None:
            self.finish()
            if self.gave_up:
                return
        events, position = self.events, self.position
        self.events, self.position = [], None
        self.service.stats.rows += self.rows
        self.rows = 0
        self._send(events, position, time.perf_counter())

    def _send(self, events: list[ChangeEvent], position: Position | None, t0: float) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def _statement(self, st: TableTruncate) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _landed(self, events: list[ChangeEvent], position: Position | None, spent: float) -> None:
        """A delivered batch: its time into the metrics, its position saved."""
        metrics.record_batch(spent)
        if position is not None:
            self.service.advanced(position)

    def _save_position(self, position: Position) -> bool:
        """SET the position in Redis (a separate write, after its batch landed); False: given up."""
        key, value = self.service.positions.key, position.to_json()
        return self._done(lambda: self.sync_client().set(key, value), "position", 0)

    def sync_client(self) -> Any:
        """A synchronous redis-py client of the settings (a cluster client on a cluster), made at
        the first use: one blocking round trip per call, no event loop."""
        if self.client is None:
            s = self.service.settings.redis
            kwargs: dict[str, Any] = dict(**s.client_kwargs(), socket_timeout=5.0, socket_connect_timeout=2.0)
            if s.cluster:
                from redis.cluster import RedisCluster

                self.client = RedisCluster.from_url(s.url, **kwargs)
            else:
                import redis as redis_sync

                self.client = redis_sync.Redis.from_url(s.url, **kwargs)
        return self.client

    # -- helpers -------------------------------------------------------------------------------
    def _run_async(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """work(client) on the private event loop and Redis client (both made at the first use)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        if self._aclient is None:
            self._aclient = connect_redis(self.service.settings.redis)
        return self._loop.run_until_complete(work(self._aclient))

    def _retry(self, attempt: Callable[[], T], what: str, n_events: int) -> T | None:
        """attempt() until it succeeds, with back-off; None (and `gave_up`) when a stop was requested
        and its deadline passed first."""
        svc = self.service
        backoff = Backoff(initial_s=0.05, max_s=5.0, jitter=0.5)
        try:
            result = retry_until_sync(attempt, retry_on=SEND_ERRORS, backoff=backoff, deadline=svc.shutdown_deadline,
                                      on_retry=svc.sink_retry(what, backoff, events=n_events))
        except DeadlinePassed as gave_up:
            svc.sink_given_up(what, gave_up, events=n_events)
            self.gave_up = True
            return None
        if backoff.attempts:
            svc.sink_recovered(what, backoff.attempts)
        return result

    def _done(self, attempt: Callable[[], object], what: str, n_events: int) -> bool:
        """_retry of an attempt without a result: True once it succeeded, False when given up."""
        def run() -> bool:
            attempt()
            return True

        return self._retry(run, what, n_events) is not None


class RedisWriter(BatchWriter):
    """--sink redis (see the module docstring)."""

    def __init__(self, service: BinlogService) -> None:
        super().__init__(service)
        assert service.applier is not None  # --sink redis: the service made one
        self.applier: RedisApplier = service.applier
        self.cluster = bool(service.settings.redis.cluster)
        self.conn: Any = None
        if not self.cluster:
            self.conn = self.sync_client().connection_pool.make_connection()  # connects at its first send
        self._async_applier: RedisApplier | None = None

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.disconnect()

    def _statement(self, st: TableTruncate) -> None:
        wipe = self.service.wipe
        assert wipe is not None  # --sink redis: the service made one
        self._run_async(lambda client: wipe.apply(client, st))

    def _send(self, events: list[ChangeEvent], position: Position | None, t0: float) -> None:
        """Pack the batch (its position as the script call's last item) and send it, not waiting for
        the reply; a batch with cascades, or any batch on a cluster, goes through apply() at once."""
        if self.cluster or any(ev.cascade is not None for ev in events):
            self._apply_now(events, position, t0)
            return
        packed = self.applier.pack_apply(self._with_position(events, position))
        sent = True
        try:
            self.conn.send_packed_command((packed,), check_health=False)
        except (redis.exceptions.RedisError, OSError):
            self.conn.disconnect()   # finish() sends it again
            sent = False
        self.inflight = (events, position, packed, sent, time.perf_counter() - t0)

    def _with_position(self, events: list[ChangeEvent], position: Position | None) -> list[Any]:
        """The batch with the position's SET as its last item (standalone Redis: one atomic call)."""
        if position is None or self.cluster:
            return events
        return [*events, self.service.positions.set_command(position)]

    def finish(self) -> None:
        """Read the reply of the batch in flight; on failure send it again (with back-off) until it
        lands or the shutdown deadline passes."""
        assert self.inflight is not None
        events, position, packed, sent, spent = self.inflight
        t1 = time.perf_counter()
        n = len(events) + (position is not None)

        def attempt() -> list[Outcome]:
            nonlocal sent
            try:
                if not sent:
                    self.conn.send_packed_command((packed,), check_health=False)  # connects first
                    sent = True
                reply = self._reply(packed)
                if self.applier.late_reply(reply):
                    # Nothing written: a change is older than a cascade record (e.g. replayed after
                    # a restart); apply() moves it as that cascade did.
                    return self._apply_async(self._with_position(events, position))
                return self.applier.parse_reply(reply, n)
            except SEND_ERRORS:
                self.conn.disconnect()
                sent = False   # the next attempt sends it again
                raise

        outcomes = self._retry(attempt, "deliver", len(events))
        self.inflight = None
        # Batch latency: this thread's time on the batch (build and send, then the wait for the
        # reply), not the decoding of the next batch that overlapped the round trip.
        self._counted(events, position, outcomes, spent + time.perf_counter() - t1)

    def _apply_now(self, events: list[ChangeEvent], position: Position | None, t0: float) -> None:
        """A batch through apply() (see the module docstring); nothing in flight."""
        batch = self._with_position(events, position)
        outcomes = self._retry(lambda: self._apply_async(batch), "deliver", len(events))
        if outcomes is not None and position is not None and self.cluster and not self._save_position(position):
            return
        self._counted(events, position, outcomes, time.perf_counter() - t0)

    def _apply_async(self, batch: list[Any]) -> list[Outcome]:
        return self._run_async(lambda client: self._applier_on(client).apply(batch))

    def _counted(self, events: list[ChangeEvent], position: Position | None, outcomes: list[Outcome] | None,
                 spent: float) -> None:
        """A batch's outcomes (None: given up at shutdown) into the stats; its position saved."""
        if outcomes is None:
            return
        self.service.count_outcomes(events, outcomes)
        self._landed(events, position, spent)

    def _applier_on(self, client: Any) -> RedisApplier:
        if self._async_applier is None:
            self._async_applier = self.applier.with_redis(client)
        return self._async_applier

    def _reply(self, packed: bytes) -> Any:
        """The reply to `packed` (already sent); NOSCRIPT: load the script and send it again."""
        conn = self.conn
        try:
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            conn.send_packed_command((RedisApplier.pack_script_load(),), check_health=False)
            conn.read_response()
            conn.send_packed_command((packed,), check_health=False)
            return conn.read_response()
        except redis.exceptions.ResponseError as exc:
            raise ApplyError(f"redis apply failed: {exc}") from exc


class GearmanWriter(BatchWriter):
    """--sink gearman (see the module docstring)."""

    def __init__(self, service: BinlogService) -> None:
        super().__init__(service)
        s = service.settings
        self.submitter = BlockingSubmitter(list(s.servers), connect_timeout_s=2.0, io_timeout_s=5.0,
                                           signer=service.signer)
        self._functions: dict[str, bytes] = {}
        self.job_changes = s.job_changes
        self.cluster = bool(s.redis.cluster)
        self.conn: Any = None        # standalone Redis: the position SETs, pipelined
        self.saving: tuple[Position, Any, bool] | None = None   # the SET sent: (position, packed, sent)

    def _close(self) -> None:
        self.submitter.close()
        if self.conn is not None:
            self.conn.disconnect()

    def _packets(self, events: Sequence[ChangeEvent]) -> list[bytes]:
        """The batch's SUBMIT_JOB_BG packets (signed): each function's changes, in their order, in
        jobs of up to --job-changes changes and JOB_BYTES (a job of one change is a plain v1 job).
        The unique ids are hex, colons and letters, at most 64 bytes (BinlogService.unique,
        _batch_unique); each function name is checked once."""
        svc = self.service
        pack = self.submitter.pack_checked
        functions = self._functions
        limit = self.job_changes
        out: list[bytes] = []
        # function -> its changes not yet packed, their payloads and the payloads' bytes
        open_jobs: dict[bytes, tuple[list[ChangeEvent], list[bytes], list[int]]] = {}

        def flush(fn: bytes, evs: list[ChangeEvent], payloads: list[bytes]) -> None:
            if len(evs) == 1:
                out.append(pack(fn, payloads[0], svc.unique(evs[0]).encode("ascii")))
            else:
                out.append(pack(fn, encode_batch(payloads), self._batch_unique(evs)))

        for ev in events:
            name = svc.event_function(ev)
            fn = functions.get(name)
            if fn is None:
                fn = functions[name] = encode_function(name)
            payload = encode_change(ev)
            job = open_jobs.get(fn)
            if job is None:
                job = open_jobs[fn] = ([], [], [0])
            evs, payloads, size = job
            if evs and size[0] + len(payload) + 1 > JOB_BYTES:
                flush(fn, evs, payloads)
                evs.clear()
                payloads.clear()
                size[0] = 0
            evs.append(ev)
            payloads.append(payload)
            size[0] += len(payload) + 1
            if len(evs) >= limit:
                flush(fn, evs, payloads)
                del open_jobs[fn]
        for fn, (evs, payloads, _size) in open_jobs.items():
            flush(fn, evs, payloads)
        return out

    def _batch_unique(self, events: Sequence[ChangeEvent]) -> bytes:
        """The unique id of a batch job: the stream, its first and last versions (the same changes
        when read again: the stream's versions only grow, and a job holds consecutive changes of
        its function). A version ending in 0xFFF may be an overflow-collapsed one shared by many
        rows (BinlogService.unique): then the rows' keys are hashed in too."""
        first, last = events[0].version, events[-1].version
        u = f"bl:{self.service.tag}:{first:x}:{last:x}:b"
        if first & 0xFFF == 0xFFF or last & 0xFFF == 0xFFF:
            u += ":" + hashlib.blake2b(repr([(ev.table, ev.pk) for ev in events]).encode(), digest_size=6).hexdigest()
        return u.encode("ascii")

    def _send(self, events: list[ChangeEvent], position: Position | None, t0: float) -> None:
        """Send the batch's jobs, not waiting for JOB_CREATED; a batch with cascades goes in runs at
        once (see the module docstring)."""
        if any(ev.cascade is not None for ev in events):
            self._send_runs(events, position, t0)
            return
        packets = self._packets(events)
        sent = True
        try:
            self.submitter.send(packets)
        except GearmanError:
            sent = False   # finish() sends it again
        self.inflight = (events, position, packets, sent, time.perf_counter() - t0)

    def finish(self) -> None:
        """Wait for every JOB_CREATED of the batch in flight (sending it again, with back-off, while
        gearmand fails), then save its position."""
        assert self.inflight is not None
        events, position, packets, sent, spent = self.inflight
        t1 = time.perf_counter()

        def attempt() -> None:
            nonlocal sent
            was_sent, sent = sent, False   # a failure: the next attempt sends it again
            self._submit_wait(packets, send=not was_sent)

        done = self._done(attempt, "deliver", len(events))
        self.inflight = None
        if done:
            self._submitted(events, position, spent + time.perf_counter() - t1, len(packets))

    def _submit_now(self, packets: list[bytes], what: str, n_events: int) -> bool:
        """Submit and wait for every JOB_CREATED, retried; False: given up."""
        return self._done(lambda: self._submit_wait(packets), what, n_events)

    def _submit_wait(self, packets: list[bytes], send: bool = True) -> None:
        """Send `packets` (unless already sent) and wait for every JOB_CREATED; on failure the
        connection is closed (the next send reconnects, to the next server)."""
        try:
            if send:
                self.submitter.send(packets)
            self.submitter.wait()
        except SEND_ERRORS:
            self.submitter.close()
            raise

    def _send_runs(self, events: list[ChangeEvent], position: Position | None, t0: float) -> None:
        # A cascade reads the children in Redis: every earlier job of the tables it touches must
        # be applied before it. So the events up to a run of cascading events go first, then the
        # run waits for those functions to drain.
        start, n, jobs = 0, len(events), 0
        while start < n:
            end = start
            while end < n and events[end].cascade is not None:
                end += 1
            while end < n and events[end].cascade is None:
                end += 1
            run = events[start:end]
            if run[0].cascade is not None:
                functions = self.service.cascade_functions(run)
                before = f"a cascade of {run[0].table}"
                if not self._done(lambda: self._drained(functions, before), "drain", len(run)):  # noqa: B023
                    return
            packets = self._packets(run)
            if not self._submit_now(packets, "deliver", len(run)):
                return
            jobs += len(packets)
            start = end
        self._submitted(events, position, time.perf_counter() - t0, jobs)

    def _submitted(self, events: list[ChangeEvent], position: Position | None, spent: float, jobs: int) -> None:
        """gearmand holds every job of the batch: the stats counted, the position's SET sent (its
        reply is read before the next SET, or when the server goes quiet: only then is the
        position saved)."""
        st = self.service.stats
        st.events += len(events)
        st.jobs += jobs
        st.batches += 1
        metrics.TableCounts().outcomes([ev.table for ev in events], [False] * len(events)).record_applied(
            read=True, submitted=True)
        self._landed(events, None, spent)
        if position is not None:
            self._collect()
            if self.gave_up:
                return
            if self.cluster:
                if self._save_position(position):
                    self.service.advanced(position)
                return
            packed = self._conn().pack_command("SET", self.service.positions.key, position.to_json())
            sent = True
            try:
                self._conn().send_packed_command(packed, check_health=False)
            except (redis.exceptions.RedisError, OSError):
                self._conn().disconnect()   # _collect() sends it again
                sent = False
            self.saving = (position, packed, sent)

    def _collect(self) -> None:
        """Read the reply of the position SET in flight (sending it again, with back-off, while Redis
        fails): then the position is saved."""
        if self.saving is None:
            return
        position, packed, sent = self.saving
        conn = self._conn()

        def attempt() -> None:
            nonlocal sent
            try:
                if not sent:
                    conn.send_packed_command(packed, check_health=False)
                    sent = True
                conn.read_response()
            except SEND_ERRORS:
                conn.disconnect()
                sent = False
                raise

        done = self._done(attempt, "position", 0)
        self.saving = None
        if done:
            self.service.advanced(position)

    def _conn(self) -> Any:
        if self.conn is None:
            self.conn = self.sync_client().connection_pool.make_connection()  # connects at its first send
        return self.conn

    def idle(self) -> None:
        super().idle()
        if not self.gave_up:
            self._collect()

    def _statement(self, st: TableTruncate) -> None:
        """Once gearmand holds no job of the table's function, submit the statement."""
        svc = self.service
        fn = svc.function(st.table)
        self._drained({fn}, f"the truncate of {st.table}")
        packet = self.submitter.pack(fn, encode_truncate(st), f"bl:{svc.tag}:{st.version:x}:t:{st.table}")
        self._submit_wait([packet])
        svc.stats.jobs += 1
        log.info("binlog_truncate_submitted", table=st.table, function=fn, version=st.version)

    def _drained(self, functions: set[str], before: str) -> None:
        """Wait until gearmand holds no job (queued or running) of `functions`: every earlier job of
        theirs is in Redis or dead-lettered. ApplyError when the shutdown deadline passes first."""
        from sync.gearman import admin

        svc = self.service
        waited = False
        while True:
            busy = 0
            for host, port in svc.settings.servers:
                status = self._run_async(lambda _client, h=host, p=port: admin.status(h, p))  # type: ignore[misc]
                busy += sum(f.queued for f in status if f.name in functions)
            if not busy:
                return
            if not waited:
                log.info("binlog_sink_draining", functions=sorted(functions), jobs=busy, before=before,
                         note="the earlier jobs are applied first")
                waited = True
            deadline = svc.shutdown_deadline()
            if deadline is not None and time.monotonic() > deadline:
                raise ApplyError(f"stopping: the jobs of {', '.join(sorted(functions))} were not done before {before}")
            time.sleep(DRAIN_POLL_S)

