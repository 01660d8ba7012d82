"""Asyncio Gearman worker: pipelined grabs, batched completes, one connection per server.

Low level, one server: GearmanWorkerConnection

    conn = GearmanWorkerConnection("127.0.0.1", 4730)
    await conn.connect()
    await conn.can_do("sync_data")
    jobs = await conn.grab_jobs(128)          # one write of 128 GRAB_JOB_UNIQ, 128 answers read
    if not jobs:
        await conn.wait_for_work(1.0)         # PRE_SLEEP, wait for NOOP at most 1 s
    ...apply jobs...
    lost = await conn.complete_many(jobs)     # one write of WORK_COMPLETE packets

High level, several servers: GearmanWorker

    async with GearmanWorker(servers, functions=["sync_data"], client_id="sync-worker-1") as worker:
        while running:
            jobs = await worker.fetch_batch(max_jobs=128, idle_timeout_s=1.0)
            ok, failed = await apply_to_redis(jobs)          # caller's code
            lost = await worker.complete_many(ok)            # ack only what Redis acknowledged

At-least-once contract: gearmand hands a job to another worker when the connection that holds it closes. A job is
completed on the connection that assigned it (``job.connection``); if that connection is gone, completing it is
impossible: complete()/complete_many() then return the job as lost (and log ``gearman_job_complete_lost``) instead
of raising; gearmand redelivers it, so the apply must be idempotent. Never call fail() for a job that could not be
applied because Redis is down: WORK_FAIL drops a background job for good. To give jobs back to the queue without
finishing them, close their connection (``GearmanWorker.release``).

Deadlines: connect_timeout_s bounds each connect, io_timeout_s each write and each wait for grab answers. A
connection error or missed deadline closes that connection; GearmanWorker then reconnects it with capped, jittered
back-off while the other servers keep working, and never raises because a server is down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import structlog

from sync.gearman.connection import GearmanConnection
from sync.gearman.errors import GearmanConnectionError, GearmanProtocolError
from sync.gearman.protocol import (
    DEFAULT_MAX_PACKET_BYTES,
    PacketType,
    encode_function,
    pack_request,
    pack_work_complete,
)
from sync.retry import Backoff

__all__ = ["GearmanWorker", "GearmanWorkerConnection", "Job"]

log = structlog.get_logger(__name__)

_GRAB_JOB_UNIQ = pack_request(PacketType.GRAB_JOB_UNIQ)
_PRE_SLEEP = pack_request(PacketType.PRE_SLEEP)
_JOB_ASSIGN_UNIQ = PacketType.JOB_ASSIGN_UNIQ
_NO_JOB = PacketType.NO_JOB
_NOOP = PacketType.NOOP
_ERROR = PacketType.ERROR


@dataclass(slots=True, eq=False)
class Job:
    """A job assigned to this worker. ``connection`` is the connection that must complete it."""

    handle: bytes
    function: str
    unique: str
    workload: bytes
    connection: GearmanWorkerConnection = field(repr=False)


class GearmanWorkerConnection:
    """A worker's connection to one gearmand. One instance = one TCP session: after any connection error it is
    closed for good (its jobs are requeued by gearmand); make a new instance to reconnect (GearmanWorker does).

    grab_jobs() and wait_for_work() read answers and must not run concurrently with each other (a lock enforces
    it); complete*/fail/send_data only write and may be called at any time, also while a grab is in flight.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float = 2.0,
        io_timeout_s: float = 5.0,
        max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
    ) -> None:
        self.conn = GearmanConnection(
            host,
            port,
            connect_timeout_s=connect_timeout_s,
            io_timeout_s=io_timeout_s,
            max_packet_bytes=max_packet_bytes,
        )
        self.functions: set[str] = set()
        self._read_lock = asyncio.Lock()
        self._names: dict[bytes, str] = {}

    @property
    def host(self) -> str:
        return self.conn.host

    @property
    def port(self) -> int:
        return self.conn.port

    @property
    def address(self) -> tuple[str, int]:
        return self.conn.address

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def __repr__(self) -> str:
        return f"<GearmanWorkerConnection {self.host}:{self.port} {'closed' if self.closed else 'open'}>"

    async def connect(self) -> None:
        """Open the TCP connection (GearmanConnectionError / GearmanTimeoutError on failure)."""
        await self.conn.connect()

    def close(self, reason: str = "closed by caller") -> None:
        """Close at once; gearmand requeues every job this connection holds and has not completed."""
        self.conn.close(reason)

    async def set_client_id(self, client_id: str) -> None:
        """Name shown by the admin ``workers`` command."""
        await self.conn.send(pack_request(PacketType.SET_CLIENT_ID, client_id.encode("utf-8")))

    async def can_do(self, function: str) -> None:
        await self.conn.send(pack_request(PacketType.CAN_DO, encode_function(function)))
        self.functions.add(function)

    def _name(self, raw: bytes) -> str:
        name = self._names.get(raw)
        if name is None:
            name = raw.decode("utf-8", "surrogateescape")
            if len(self._names) < 1024:
                self._names[raw] = name
        return name

    async def grab_jobs(self, n: int) -> list[Job]:
        """Send ``n`` GRAB_JOB_UNIQ in one write, read the ``n`` answers; return the jobs assigned (0..n, in
        order). NOOPs in between are skipped; an ERROR packet (e.g. the answer to completing an unknown handle) is
        logged and skipped. Raises GearmanConnectionError (connection closed, its jobs requeued by gearmand)."""
        if n < 1:
            return []
        async with self._read_lock:
            try:
                return await self._grab(n)
            except asyncio.CancelledError:
                # Answers are still in flight; they would be mistaken for the next grab's. Close: gearmand
                # requeues whatever it assigned to us.
                self.close("grab cancelled")
                raise

    async def _grab(self, n: int) -> list[Job]:
        conn = self.conn
        await conn.send(_GRAB_JOB_UNIQ * n)
        jobs: list[Job] = []
        answers = 0
        # A peer that answers with NOOP/ERROR/anything else forever never lets a read time out;
        # bound the packets that are not answers (a real gearmand sends at most a few NOOPs here).
        others, max_others = 0, 64 + 4 * n
        name = self._name
        while answers < n:
            packets = await conn.read_packets()
            others += len(packets)
            for packet in packets:
                ptype = packet.type
                if ptype is _JOB_ASSIGN_UNIQ:
                    handle, function, unique, workload = packet.args
                    jobs.append(
                        Job(handle, name(function), unique.decode("utf-8", "surrogateescape"), workload, self)
                    )
                    answers += 1
                elif ptype is _NO_JOB:
                    answers += 1
                elif ptype is _NOOP:
                    pass
                else:
                    self._unexpected(packet.type, packet.args)
            if others - answers > max_others:
                self.close(f"{others - answers} packets that answer no GRAB_JOB_UNIQ")
                raise GearmanProtocolError(
                    f"{self.host}:{self.port}: {others - answers} packets that answer no GRAB_JOB_UNIQ "
                    f"(expected NO_JOB or JOB_ASSIGN_UNIQ); connection closed", self.address)
        return jobs

    async def echo(self, data: bytes = b"ping") -> bytes:
        """ECHO_REQ round trip: proves the server answers (bounded by io_timeout_s)."""
        async with self._read_lock:
            await self.conn.send(pack_request(PacketType.ECHO_REQ, data))
            while True:
                for packet in await self.conn.read_packets():
                    if packet.type is PacketType.ECHO_RES:
                        return packet.args[0]
                    if packet.type is not _NOOP:
                        self._unexpected(packet.type, packet.args)

    def _unexpected(self, ptype: PacketType, args: tuple[bytes, ...]) -> None:
        if ptype is _ERROR:
            log.warning(
                "gearman_worker_server_error",
                host=self.host,
                port=self.port,
                code=args[0].decode("utf-8", "replace"),
                text=args[1].decode("utf-8", "replace"),
            )
        else:
            log.warning("gearman_worker_unexpected_packet", host=self.host, port=self.port, type=ptype.name)

    async def wait_for_work(self, timeout_s: float) -> bool:
        """Send PRE_SLEEP and wait up to ``timeout_s`` for the server's NOOP (sent when a job for one of our
        functions is queued, at once if one already is). Returns True when woken, False on timeout (the
        connection stays open; grab again anyway, a wake-up can be missed)."""
        async with self._read_lock:
            conn = self.conn
            await conn.send(_PRE_SLEEP)
            deadline = time.monotonic() + timeout_s
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                packets = await conn.poll_packets(remaining)
                woken = False
                for packet in packets:
                    if packet.type is _NOOP:
                        woken = True
                    else:
                        self._unexpected(packet.type, packet.args)
                if woken:
                    return True

    def _lost(self, jobs: Sequence[Job], what: str, error: BaseException | None = None) -> None:
        log.warning(
            "gearman_job_complete_lost",
            host=self.host,
            port=self.port,
            action=what,
            jobs=len(jobs),
            first_handle=jobs[0].handle.decode("ascii", "replace") if jobs else None,
            reason=str(error) if error is not None else self.conn.close_reason,
        )

    def _check_owner(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            if job.connection is not self:
                raise ValueError(
                    f"job {job.handle!r} was assigned by {job.connection!r}, not by {self!r}; complete it there"
                )

    async def _send_for(self, jobs: Sequence[Job], data: bytes, what: str) -> bool:
        if self.conn.closed:
            self._lost(jobs, what)
            return False
        try:
            await self.conn.send(data)
        except GearmanConnectionError as exc:
            self._lost(jobs, what, exc)
            return False
        return True

    async def complete(self, job: Job, data: bytes = b"") -> bool:
        """WORK_COMPLETE for one job. False (logged) when this connection is closed: gearmand will redeliver."""
        self._check_owner((job,))
        return await self._send_for((job,), pack_work_complete(job.handle, data), "complete")

    async def complete_many(self, jobs: Sequence[Job]) -> list[Job]:
        """WORK_COMPLETE (empty result) for every job, in one write. Returns the jobs that could not be completed
        (all of them when the connection is closed or the write fails; they will be redelivered), else []."""
        if not jobs:
            return []
        self._check_owner(jobs)
        data = b"".join([pack_work_complete(job.handle) for job in jobs])
        return [] if await self._send_for(jobs, data, "complete") else list(jobs)

    async def fail(self, job: Job, exception: bytes | None = None) -> bool:
        """End a job unsuccessfully: WORK_FAIL, or WORK_EXCEPTION carrying ``exception`` when given. gearmand
        drops a failed background job for good (use it only for poison jobs, after dead-lettering them)."""
        self._check_owner((job,))
        if exception is None:
            packet = pack_request(PacketType.WORK_FAIL, job.handle)
        else:
            packet = pack_request(PacketType.WORK_EXCEPTION, job.handle, exception)
        return await self._send_for((job,), packet, "fail")

    async def send_data(self, job: Job, data: bytes) -> bool:
        """WORK_DATA: a partial result for a foreground job (the client concatenates them)."""
        self._check_owner((job,))
        return await self._send_for((job,), pack_request(PacketType.WORK_DATA, job.handle, data), "data")


class _ServerSlot:
    __slots__ = ("host", "port", "conn", "backoff", "retry_at", "connecting")

    def __init__(self, host: str, port: int, backoff: Backoff) -> None:
        self.host = host
        self.port = port
        self.conn: GearmanWorkerConnection | None = None
        self.backoff = backoff
        self.retry_at = 0.0
        self.connecting: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self.conn is not None and not self.conn.closed


class GearmanWorker:
    """A worker over several servers: one GearmanWorkerConnection per server, each reconnected independently
    with back-off. Nothing here raises because a server is down, at start or later; fetch_batch() then just
    returns fewer (or no) jobs. See the module docstring for the completion contract.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        functions: Iterable[str] = (),
        *,
        client_id: str | None = None,
        connect_timeout_s: float = 2.0,
        io_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 10.0,
        backoff_jitter: float = 0.5,
        max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
    ) -> None:
        if not servers:
            raise ValueError("servers: expected at least one (host, port)")
        self.functions: list[str] = []
        for function in functions:
            encode_function(function)
            if function not in self.functions:
                self.functions.append(function)
        self.client_id = client_id
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self.max_packet_bytes = max_packet_bytes
        self._slots = [
            _ServerSlot(str(h), int(p), Backoff(backoff_initial_s, backoff_max_s, backoff_jitter)) for h, p in servers
        ]
        self._rotation = 0
        self._closed = False

    async def __aenter__(self) -> GearmanWorker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection (uncompleted jobs go back to gearmand's queue)."""
        self._closed = True
        tasks = []
        for slot in self._slots:
            if slot.connecting is not None:
                slot.connecting.cancel()
                tasks.append(slot.connecting)
            if slot.conn is not None:
                slot.conn.close("worker closed")
                slot.conn = None
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def connected_servers(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self._slots if s.live]

    def _mark_down(self, slot: _ServerSlot, error: BaseException) -> None:
        if slot.conn is not None:
            slot.conn.close(f"failed: {error}")
            slot.conn = None
        delay = slot.backoff.next_delay()
        slot.retry_at = time.monotonic() + delay
        log.warning(
            "gearman_worker_server_down", host=slot.host, port=slot.port, error=str(error), retry_in_s=round(delay, 3)
        )

    async def _connect(self, slot: _ServerSlot) -> None:
        """Connect, register, and check with an ECHO round trip that the server answers; runs as a background
        task so a slow or hung server never holds up the others."""
        conn = GearmanWorkerConnection(
            slot.host,
            slot.port,
            connect_timeout_s=self.connect_timeout_s,
            io_timeout_s=self.io_timeout_s,
            max_packet_bytes=self.max_packet_bytes,
        )
        try:
            await conn.connect()
            if self.client_id:
                await conn.set_client_id(self.client_id)
            for function in self.functions:
                await conn.can_do(function)
            await conn.echo(b"gearsync")
        except GearmanConnectionError as exc:
            conn.close(str(exc))
            self._mark_down(slot, exc)
            return
        except BaseException:  # cancelled (worker closed) mid-connect: leave no socket behind
            conn.close("connect cancelled")
            raise
        finally:
            slot.connecting = None
        if self._closed:
            conn.close("worker closed")
            return
        slot.conn = conn
        slot.backoff.reset()
        log.info("gearman_worker_connected", host=slot.host, port=slot.port, functions=len(self.functions))

    async def _ensure_connected(self, wait_s: float) -> list[_ServerSlot]:
        """Start a reconnect for every server whose back-off expired; return the live ones. With none live, wait
        (at most wait_s) for a connect attempt to finish or the next back-off to expire."""
        now = time.monotonic()
        for slot in self._slots:
            if not slot.live and slot.connecting is None and slot.retry_at <= now:
                slot.connecting = asyncio.get_running_loop().create_task(
                    self._connect(slot), name=f"gearman-worker-connect-{slot.host}:{slot.port}"
                )
        live = [s for s in self._slots if s.live]
        if live:
            return live
        attempts = [s.connecting for s in self._slots if s.connecting is not None]
        if attempts:
            await asyncio.wait(attempts, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(min(wait_s, self._next_retry_in()))
        return [s for s in self._slots if s.live]

    def _next_retry_in(self) -> float:
        waiting = [s.retry_at for s in self._slots if not s.live]
        return max(0.0, min(waiting) - time.monotonic()) if waiting else 0.0

    # ---- jobs ------------------------------------------------------------------------------------------------

    async def _grab_round(self, live: list[_ServerSlot], max_jobs: int) -> list[Job]:
        jobs: list[Job] = []
        n = len(live)
        start = self._rotation % n
        self._rotation += 1
        for i in range(n):
            remaining = max_jobs - len(jobs)
            if remaining <= 0:
                break
            slot = live[(start + i) % n]
            conn = slot.conn
            if conn is None or conn.closed:
                continue
            try:
                jobs.extend(await conn.grab_jobs(remaining))
            except GearmanConnectionError as exc:
                self._mark_down(slot, exc)
        return jobs

    async def _sleep(self, live: list[_ServerSlot], timeout_s: float) -> None:
        """PRE_SLEEP on every live connection; return at the first NOOP or after timeout_s."""
        if len(live) == 1:
            slot = live[0]
            try:
                await slot.conn.wait_for_work(timeout_s)  # type: ignore[union-attr]  # `live` slots have a conn (s.live)
            except GearmanConnectionError as exc:
                self._mark_down(slot, exc)
            return
        tasks = {asyncio.ensure_future(s.conn.wait_for_work(timeout_s)): s for s in live}  # type: ignore[union-attr]  # as above
        try:
            done, pending = await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task, slot in tasks.items():
            if task.done() and not task.cancelled():
                error = task.exception()
                if isinstance(error, GearmanConnectionError):
                    self._mark_down(slot, error)
                elif error is not None:
                    raise error

    async def fetch_batch(self, max_jobs: int = 128, idle_timeout_s: float = 1.0) -> list[Job]:
        """Up to ``max_jobs`` jobs from whichever servers have work, pipelined per server.

        When no server has work: PRE_SLEEP on every live connection, wait for the first NOOP (at most
        ``idle_timeout_s``), then grab once more, so the call returns within about idle_timeout_s (+ io_timeout_s
        for a connected server that stopped answering: it is then closed and reconnected in the background) and
        may return []. Reconnects run as background tasks (connect + ECHO round trip), so a down or hung server
        never delays the others; with no server live the call waits for a reconnect attempt (at most
        idle_timeout_s) and returns []. Never raises for server trouble.
        """
        if self._closed:
            raise GearmanConnectionError("worker is closed")
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")
        live = await self._ensure_connected(idle_timeout_s)
        if not live:
            return []
        jobs = await self._grab_round(live, max_jobs)
        if jobs:
            return jobs
        live = [s for s in live if s.live]
        if not live:
            return []
        await self._sleep(live, idle_timeout_s)
        live = [s for s in live if s.live]
        if not live:
            return []
        return await self._grab_round(live, max_jobs)

    async def complete(self, job: Job, data: bytes = b"") -> bool:
        """Complete one job on the connection that assigned it; False (logged) when that connection is gone."""
        done = await job.connection.complete(job, data)
        if not done:
            self._note_failed(job.connection)
        return done

    async def complete_many(self, jobs: Sequence[Job]) -> list[Job]:
        """Complete jobs, one write per connection that assigned them. Returns the jobs that could not be
        completed (their connection died: gearmand redelivers them), [] when all went out."""
        if not jobs:
            return []
        by_conn: dict[GearmanWorkerConnection, list[Job]] = {}
        for job in jobs:
            by_conn.setdefault(job.connection, []).append(job)
        lost: list[Job] = []
        for conn, group in by_conn.items():
            lost.extend(await conn.complete_many(group))
            if conn.closed:
                self._note_failed(conn)
        return lost

    def _note_failed(self, conn: GearmanWorkerConnection) -> None:
        for slot in self._slots:
            if slot.conn is conn:
                self._mark_down(slot, GearmanConnectionError(conn.conn.close_reason or "connection closed"))

    async def fail(self, job: Job, exception: bytes | None = None) -> bool:
        """WORK_FAIL / WORK_EXCEPTION on the assigning connection (drops a background job for good)."""
        done = await job.connection.fail(job, exception)
        if not done:
            self._note_failed(job.connection)
        return done

    def release(self, jobs: Sequence[Job]) -> None:
        """Give jobs back to the queue without finishing them: closes the connections that assigned them (the
        other jobs these connections hold are requeued too); they reconnect on the next fetch_batch."""
        for conn in {job.connection for job in jobs}:
            conn.close("released jobs")
            self._note_closed(conn)

    def _note_closed(self, conn: GearmanWorkerConnection) -> None:
        for slot in self._slots:
            if slot.conn is conn:
                slot.conn = None
                slot.retry_at = 0.0
