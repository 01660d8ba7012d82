"""--sink redis on a standalone Redis: the batches written from the reader thread itself
(RedisWriter; the design: sync.capture.binlog.service).

A batch is sent when it holds --batch events, when its oldest change has waited --flush-ms (20 ms),
or when the server went quiet: the dump connection's reads first try without waiting, and when
nothing is there the reader sends what it holds and reads the reply before it waits
(BinlogSource._hook_quiet). So a trickle of changes is applied within about a Redis round trip
after the server sent it, and a backlog goes in batches of --flush-ms worth of changes, each
costing this thread one packed write and one (by then ready) reply. Why one thread: with the
writes on an asyncio loop thread, every socket operation there waited for the GIL held by the
CPU-bound reader (~5 ms switch interval each); the decoding alone was the limit anyway.

A chunk with table statements (TRUNCATE/DROP, sync.capture.binlog.reader) is a barrier: the batch
gathered so far is sent and its reply read, then each table is wiped (sync.apply.truncate, retried
like a batch), and only then does the statement's position join the next batch.

A batch with FK cascades (events carrying "cascade", sync.capture.binlog.reader) cannot be one
packed write: a cascade reads the children's state in Redis first. It goes, after the batch in
flight has landed, through the applier's apply() (reads, then the guarded script call, retried
when a child changed in between), on the same private event loop and client as the table wipes.

While Redis is down, the failed batch is sent again with back-off (50 ms … 5 s) from the reader
thread, which therefore stops reading (the binlog waits in the server, nothing is lost).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis.exceptions
import structlog

from sync import metrics
from sync.apply.applier import Outcome, RedisApplier
from sync.capture.binlog.reader import Chunk
from sync.errors import ApplyError
from sync.events import ChangeEvent, TableTruncate
from sync.position import Position
from sync.redis_client import connect_redis
from sync.retry import Backoff, DeadlinePassed, retry_until_sync

if TYPE_CHECKING:  # the service creates the writer; no import at run time
    from sync.capture.binlog.service import BinlogService

log = structlog.get_logger(__name__)

T = TypeVar("T")

__all__ = ["RedisWriter"]

SEND_ERRORS = (ApplyError, redis.exceptions.RedisError, OSError)   # a batch that did not land: send it again


class RedisWriter:
    """--sink redis on a standalone Redis, inside the reader thread (see the module docstring):
    `add` takes the source's chunks into a batch and sends it when it is full or old enough, `idle`
    (the server went quiet) sends what is held and reads the reply; at most one batch in flight.
    A failed batch is sent again with back-off until it lands, which keeps the reader from reading
    meanwhile, or, once a stop is requested, until the shutdown deadline: then it is dropped
    (`gave_up`) with the position not advanced."""

    def __init__(self, service: BinlogService) -> None:
        import redis as redis_sync

        s = service.settings
        self.service = service
        assert service.applier is not None  # --sink redis (the only user of RedisWriter): the service made one
        self.applier: RedisApplier = service.applier
        self.limit = s.batch
        self.flush_s = s.flush_ms / 1000.0
        self.client = redis_sync.Redis.from_url(s.redis.url, **s.redis.client_kwargs(), socket_timeout=5.0,
                                                socket_connect_timeout=2.0)
        self.conn: Any = self.client.connection_pool.make_connection()  # connects at its first send
        self.events: list[ChangeEvent] = []       # the batch being gathered
        self.position: Position | None = None     # ... and the last commit it covers
        self.rows = 0
        self.first_t = 0.0
        # The batch sent and not yet acknowledged: (events, position, packed request, sent, client s)
        self.inflight: tuple[list[ChangeEvent], Position | None, bytes, bool, float] | None = None
        self.gave_up = False
        # Statements and cascades run on a private event loop with a client of its own (they are
        # rare; this thread has no loop and the service's client belongs to the main one).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aclient: Any = None
        self._async_applier: RedisApplier | None = None

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
        """Deliver what is held (bounded by the shutdown deadline), then close the connection."""
        try:
            self.idle()
        finally:
            self.conn.disconnect()
            self.client.close()
            if self._loop is not None:
                if self._aclient is not None:
                    self._loop.run_until_complete(self._aclient.aclose())
                self._loop.close()

    def statements(self, chunk: Chunk) -> None:
        """TRUNCATE/DROP of tables: what came before lands first, then the tables are wiped; the
        statement's position is saved with the next batch (a restart before that repeats the wipe,
        which the versions make harmless)."""
        self.events.extend(chunk.events)
        self.rows += chunk.rows
        if self.events or self.position is not None:
            self.send()
        if self.inflight is not None:
            self.finish()
        wipe = self.service.wipe
        assert wipe is not None  # --sink redis: the service made one
        for st in chunk.statements:
            def attempt(st: TableTruncate = st) -> int:
                return self._run_async(lambda client: wipe.apply(client, st))

            if self.gave_up or self._retry(attempt, "truncate", 1) is None:
                return
        self.position = chunk.position

    # -- batches -------------------------------------------------------------------------------
    def send(self) -> None:
        """Send the gathered batch (its position as the script call's last item); the reply of the
        batch before it is read first."""
        if self.inflight is not None:
            self.finish()
            if self.gave_up:
                return
        events, position = self.events, self.position
        self.events, self.position = [], None
        self.service.stats.rows += self.rows
        self.rows = 0
        t0 = time.perf_counter()
        batch: list[Any] = events
        if position is not None:
            batch = [*events, self.service.positions.set_command(position)]
        if any(ev.cascade is not None for ev in events):
            self._apply_cascades(events, position, batch, t0)
            return
        packed = self.applier.pack_apply(batch)
        sent = True
        try:
            self.conn.send_packed_command((packed,), check_health=False)
        except (redis.exceptions.RedisError, OSError):
            self.conn.disconnect()   # finish() sends it again
            sent = False
        self.inflight = (events, position, packed, sent, time.perf_counter() - t0)

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
                    batch: list[Any] = list(events)
                    if position is not None:
                        batch.append(self.service.positions.set_command(position))
                    return self._run_async(lambda client: self._applier_on(client).apply(batch))
                return self.applier.parse_reply(reply, n)
            except SEND_ERRORS:
                self.conn.disconnect()
                sent = False   # the next attempt sends it again
                raise

        outcomes = self._retry(attempt, "deliver", len(events))
        self.inflight = None
        # Batch latency: this thread's time on the batch (build and send, then the wait for the
        # reply), not the decoding of the next batch that overlapped the round trip.
        self._landed(events, position, outcomes, spent + time.perf_counter() - t1)

    def _apply_cascades(self, events: list[ChangeEvent], position: Position | None, batch: list[Any],
                        t0: float) -> None:
        """A batch with cascades, through apply() (see the module docstring); nothing in flight."""
        def attempt() -> list[Outcome]:
            return self._run_async(lambda client: self._applier_on(client).apply(batch))

        outcomes = self._retry(attempt, "deliver", len(events))
        self._landed(events, position, outcomes, time.perf_counter() - t0)

    def _landed(self, events: list[ChangeEvent], position: Position | None, outcomes: list[Outcome] | None,
                spent: float) -> None:
        """A batch's outcomes (None: given up at shutdown) into the stats; its position saved."""
        if outcomes is None:
            return
        svc = self.service
        svc.count_outcomes(events, outcomes)
        metrics.record_batch(spent)
        if position is not None:
            svc.advanced(position)

    def _applier_on(self, client: Any) -> RedisApplier:
        if self._async_applier is None:
            self._async_applier = self.applier.with_redis(client)
        return self._async_applier

    def _run_async(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """work(client) on the private event loop and client (both made at the first use)."""
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
