"""Asyncio Gearman client: background and foreground submits, pipelined bulk submits, several servers.

    async with GearmanClient([("127.0.0.1", 4730), ("10.0.0.2", 4730)]) as client:
        handle = await client.submit_background("sync_data", payload)
        handles = await client.submit_background_many("sync_data", payloads, priority="high")
        result = await client.submit("resize", image, timeout_s=30)

Every submit carries a unique id (a fresh one when none is given): gearmand merges a submit whose unique matches a
queued or running job of the same function into that job and discards its payload.

Servers: the client sticks to one server while it works. A connection error closes that connection, puts the
server into a capped, jittered exponential back-off, and the request is retried on the next server not in
back-off. When no server can take it, GearmanUnavailableError is raised at once (``retry_after_s`` says when the
next server leaves its back-off): the caller decides whether to wait, so a request never blocks for long.
Delivery on failover is at least once: a submit written just before a connection died may exist twice.

Deadlines: connecting is bounded by ``connect_timeout_s``; each write and each wait for the server's answers
(JOB_CREATED, OPTION_RES, ECHO_RES) by ``io_timeout_s``. A missed deadline closes the connection and fails over.
A foreground job's result is awaited for ``timeout_s`` of the submit call (GearmanJobTimeoutError).

One connection per server is shared by all concurrent callers: the server answers requests in order, so answers
are matched with a FIFO of waiters; foreground results are matched by job handle.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Literal, TypeVar

import structlog

from sync.gearman.connection import GearmanConnection
from sync.gearman.errors import (
    GearmanConnectionError,
    GearmanJobFailed,
    GearmanJobTimeoutError,
    GearmanServerError,
    GearmanUnavailableError,
)
from sync.gearman.protocol import (
    DEFAULT_MAX_PACKET_BYTES,
    Packet,
    PacketType,
    encode_function,
    encode_unique,
    pack_request,
    pack_submit,
)
from sync.retry import Backoff
from sync.signing import Signer

__all__ = ["GearmanClient", "Priority", "encode_function", "encode_unique"]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

Priority = Literal["normal", "high", "low"]

_BG_TYPES = {
    "normal": PacketType.SUBMIT_JOB_BG,
    "high": PacketType.SUBMIT_JOB_HIGH_BG,
    "low": PacketType.SUBMIT_JOB_LOW_BG,
}
_FG_TYPES = {
    "normal": PacketType.SUBMIT_JOB,
    "high": PacketType.SUBMIT_JOB_HIGH,
    "low": PacketType.SUBMIT_JOB_LOW,
}
_IDLE_READ_S = 60.0


class _UniqueIds:
    """Fresh unique ids: 80 random bits per client instance + a counter (cheaper than uuid4 per job)."""

    __slots__ = ("_prefix", "_next")

    def __init__(self) -> None:
        self._prefix = os.urandom(10).hex() + "-"
        self._next = 0

    def __call__(self) -> bytes:
        self._next += 1
        return f"{self._prefix}{self._next:x}".encode("ascii")


class _Foreground:
    """State of one foreground job: its data chunks and the future of its final result."""

    __slots__ = ("future", "chunks", "handle")

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        self.future = future
        self.chunks: list[bytes] = []
        self.handle = b""


class _Waiter:
    __slots__ = ("future", "expect", "foreground")

    def __init__(self, future: asyncio.Future[bytes], expect: PacketType, foreground: _Foreground | None) -> None:
        self.future = future
        self.expect = expect
        self.foreground = foreground


class _ClientSession:
    """One live connection to one server plus the task reading its answers."""

    def __init__(self, conn: GearmanConnection) -> None:
        self.conn = conn
        self.waiters: deque[_Waiter] = deque()
        self.foreground: dict[bytes, _Foreground] = {}
        self.reader_task: asyncio.Task[None] | None = None
        self.error: GearmanConnectionError | None = None

    @property
    def alive(self) -> bool:
        return self.error is None and not self.conn.closed

    async def start(self) -> None:
        await self.conn.connect()
        self.reader_task = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"gearman-client-reader-{self.conn.host}:{self.conn.port}"
        )
        # Ask for WORK_EXCEPTION forwarding; the answer also proves the server is responsive.
        await self.request([pack_request(PacketType.OPTION_REQ, b"exceptions")], PacketType.OPTION_RES)

    def close(self, reason: str) -> None:
        self._fail_all(GearmanConnectionError(f"{self.conn.host}:{self.conn.port}: {reason}", self.conn.address))
        self.conn.close(reason)
        if self.reader_task is not None and not self.reader_task.done():
            self.reader_task.cancel()

    def _fail_all(self, error: GearmanConnectionError) -> None:
        if self.error is None:
            self.error = error
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error)
        for fg in self.foreground.values():
            if not fg.future.done():
                fg.future.set_exception(error)
        self.foreground.clear()

    def _register(
        self, count: int, expect: PacketType, foreground: _Foreground | None = None
    ) -> list[asyncio.Future[bytes]]:
        loop = asyncio.get_running_loop()
        futures = []
        append = self.waiters.append
        for _ in range(count):
            future: asyncio.Future[bytes] = loop.create_future()
            append(_Waiter(future, expect, foreground))
            futures.append(future)
        return futures

    async def request(
        self, packets: list[bytes], expect: PacketType, foreground: _Foreground | None = None
    ) -> list[bytes]:
        """Send packets in one write; return the first argument of each answer, in order. Any failure (write,
        deadline, lost connection) closes the session and raises GearmanConnectionError; an ERROR answer raises
        GearmanServerError for that request only."""
        if self.error is not None:
            raise GearmanConnectionError(str(self.error), self.conn.address)
        # Register before writing, with no await in between: answers are matched in order.
        futures = self._register(len(packets), expect, foreground)
        try:
            await self.conn.send(b"".join(packets) if len(packets) > 1 else packets[0])
            # Answers come in request order, so once the last one is there all are.
            async with asyncio.timeout(self.conn.io_timeout_s):
                await asyncio.wait((futures[-1],))
            return [future.result() for future in futures]
        except TimeoutError:
            self._abandon(futures)
            self.close(f"no answer within {self.conn.io_timeout_s}s")
            raise GearmanConnectionError(
                f"{self.conn.host}:{self.conn.port}: no answer within {self.conn.io_timeout_s}s", self.conn.address
            ) from None
        except GearmanConnectionError as exc:
            self._abandon(futures)
            self.close(str(exc))
            raise
        except BaseException:
            # GearmanServerError for one request (the others' answers are dropped), or our own cancellation.
            self._abandon(futures)
            raise

    @staticmethod
    def _abandon(futures: list[asyncio.Future[bytes]]) -> None:
        """Nobody will read these futures any more: cancel the pending ones, mark errors as retrieved."""
        for future in futures:
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()

    async def _read_loop(self) -> None:
        conn = self.conn
        try:
            while True:
                packets = await conn.poll_packets(_IDLE_READ_S)
                for packet in packets:
                    self._dispatch(packet)
        except GearmanConnectionError as exc:
            log.warning("gearman_client_connection_lost", host=conn.host, port=conn.port, error=str(exc))
            self._fail_all(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave waiters hanging
            log.exception("gearman_client_reader_crashed", host=conn.host, port=conn.port)
            error = GearmanConnectionError(f"{conn.host}:{conn.port}: reader crashed: {exc!r}", conn.address)
            self._fail_all(error)
            conn.close("reader crashed")

    def _dispatch(self, packet: Packet) -> None:
        ptype = packet.type
        if ptype is PacketType.ERROR:
            code = packet.args[0].decode("utf-8", "replace")
            text = packet.args[1].decode("utf-8", "replace")
            if not self.waiters:
                raise GearmanConnectionError(
                    f"{self.conn.host}:{self.conn.port}: unsolicited ERROR {code}: {text}", self.conn.address
                )
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(GearmanServerError(code, text, self.conn.address))
            return
        if ptype in (PacketType.JOB_CREATED, PacketType.OPTION_RES, PacketType.ECHO_RES, PacketType.STATUS_RES):
            if not self.waiters:
                raise GearmanConnectionError(
                    f"{self.conn.host}:{self.conn.port}: unexpected {ptype.name}", self.conn.address
                )
            waiter = self.waiters.popleft()
            if waiter.expect is not ptype:
                raise GearmanConnectionError(
                    f"{self.conn.host}:{self.conn.port}: expected {waiter.expect.name}, got {ptype.name}",
                    self.conn.address,
                )
            value = packet.args[0]
            if waiter.foreground is not None:
                # Register here, not in the submitting coroutine: the result may be in this very read.
                waiter.foreground.handle = value
                self.foreground[value] = waiter.foreground
            if not waiter.future.done():
                waiter.future.set_result(value)
            return
        fg = self.foreground.get(packet.args[0]) if packet.args else None
        if fg is None:
            if ptype is not PacketType.NOOP:
                log.debug("gearman_client_packet_ignored", type=ptype.name)
            return
        if ptype is PacketType.WORK_DATA:
            fg.chunks.append(packet.args[1])
        elif ptype is PacketType.WORK_COMPLETE:
            fg.chunks.append(packet.args[1])
            del self.foreground[fg.handle]
            if not fg.future.done():
                fg.future.set_result(b"".join(fg.chunks))
        elif ptype is PacketType.WORK_FAIL:
            del self.foreground[fg.handle]
            if not fg.future.done():
                fg.future.set_exception(GearmanJobFailed(fg.handle, None, b"".join(fg.chunks)))
        elif ptype is PacketType.WORK_EXCEPTION:
            del self.foreground[fg.handle]
            if not fg.future.done():
                fg.future.set_exception(GearmanJobFailed(fg.handle, packet.args[1], b"".join(fg.chunks)))
        # WORK_STATUS, WORK_WARNING: informational, ignored.


class GearmanClient:
    """Submit jobs to one of several gearmand servers (see the module docstring for failover and deadlines).

    ``servers``: list of (host, port), tried in order. ``chunk_size``: requests per write in
    submit_background_many. Use as ``async with GearmanClient(...) as client`` or call ``close()``.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        *,
        connect_timeout_s: float = 2.0,
        io_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 10.0,
        backoff_jitter: float = 0.5,
        chunk_size: int = 256,
        max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
        signer: Signer | None = None,
    ) -> None:
        if not servers:
            raise ValueError("servers: expected at least one (host, port)")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.servers = [(str(h), int(p)) for h, p in servers]
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self.chunk_size = chunk_size
        self.max_packet_bytes = max_packet_bytes
        n = len(self.servers)
        self._sessions: list[_ClientSession | None] = [None] * n
        self._locks = [asyncio.Lock() for _ in range(n)]
        self._backoffs = [Backoff(backoff_initial_s, backoff_max_s, backoff_jitter) for _ in range(n)]
        self._retry_at = [0.0] * n
        self._current = 0
        self._closed = False
        self._new_unique = _UniqueIds()
        self.signer = signer  # signs every workload submitted (sync.signing); None: sent as given

    async def __aenter__(self) -> GearmanClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; pending requests fail with GearmanConnectionError."""
        self._closed = True
        tasks = []
        for i, session in enumerate(self._sessions):
            if session is not None:
                session.close("client closed")
                if session.reader_task is not None:
                    tasks.append(session.reader_task)
                self._sessions[i] = None
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def new_unique(self) -> str:
        """A fresh unique id as used for submits without one."""
        return self._new_unique().decode("ascii")

    # ---- server selection -------------------------------------------------------------------------------------

    async def _session(self, index: int) -> _ClientSession:
        session = self._sessions[index]
        if session is not None and session.alive:
            return session
        async with self._locks[index]:
            session = self._sessions[index]
            if session is not None and session.alive:
                return session
            host, port = self.servers[index]
            conn = GearmanConnection(
                host,
                port,
                connect_timeout_s=self.connect_timeout_s,
                io_timeout_s=self.io_timeout_s,
                max_packet_bytes=self.max_packet_bytes,
            )
            session = _ClientSession(conn)
            try:
                await session.start()
            except BaseException:
                session.close("connect failed")
                raise
            self._sessions[index] = session
            self._backoffs[index].reset()
            log.info("gearman_client_connected", host=host, port=port)
            return session

    def _mark_down(self, index: int, error: BaseException) -> None:
        session = self._sessions[index]
        if session is not None:
            session.close(f"failed: {error}")
            self._sessions[index] = None
        delay = self._backoffs[index].next_delay()
        self._retry_at[index] = time.monotonic() + delay
        host, port = self.servers[index]
        log.warning("gearman_client_server_down", host=host, port=port, error=str(error), retry_in_s=round(delay, 3))

    async def _run(self, op: Callable[[_ClientSession], Awaitable[_T]]) -> _T:
        """Run ``op(session)`` on the current server, failing over to the next ones on connection errors."""
        if self._closed:
            raise GearmanConnectionError("client is closed")
        n = len(self.servers)
        errors = []
        for step in range(n):
            index = (self._current + step) % n
            now = time.monotonic()
            held = self._sessions[index]
            if self._retry_at[index] > now and not (held is not None and held.alive):
                errors.append(f"{self.servers[index][0]}:{self.servers[index][1]} in back-off")
                continue
            try:
                session = await self._session(index)
                result = await op(session)
            except GearmanConnectionError as exc:
                self._mark_down(index, exc)
                errors.append(str(exc))
                continue
            self._current = index
            return result
        retry_after = max(0.0, min(self._retry_at) - time.monotonic())
        raise GearmanUnavailableError(
            f"no gearman server available ({'; '.join(errors)})", retry_after_s=retry_after
        )

    # ---- submits ---------------------------------------------------------------------------------------------

    def _pack_one(self, ptype: PacketType, function: str, workload: bytes, unique: str | None) -> bytes:
        fn = encode_function(function)
        if self.signer is not None:
            workload = self.signer.sign(fn, workload)
        return pack_request(ptype, fn, self._new_unique() if unique is None else encode_unique(unique), workload)

    async def submit_background(
        self,
        function: str,
        workload: bytes,
        unique: str | None = None,
        priority: Priority = "normal",
    ) -> bytes:
        """Queue a background job; returns its job handle (e.g. b"H:host:42") once gearmand created it."""
        packet = self._pack_one(_BG_TYPES[priority], function, workload, unique)

        async def op(session: _ClientSession) -> bytes:
            return (await session.request([packet], PacketType.JOB_CREATED))[0]

        return await self._run(op)

    async def submit_background_many(
        self,
        function: str,
        workloads: Iterable[bytes],
        priority: Priority = "normal",
        uniques: Iterable[str] | None = None,
    ) -> list[bytes]:
        """Queue many background jobs, ``chunk_size`` submits per write; returns their handles in input order.

        Each job gets a fresh unique id unless ``uniques`` gives one per workload. A failure mid-way retries the
        failed chunk on the next server (chunks already created stay where they are). An ERROR answer (e.g.
        QUEUE_FULL) raises GearmanServerError; the chunks before it are queued.
        """
        ptype = _BG_TYPES[priority]
        fn = encode_function(function)
        new_unique = self._new_unique
        uniq_iter = iter(uniques) if uniques is not None else None
        signer = self.signer
        handles: list[bytes] = []
        chunk: list[bytes] = []

        async def flush(packets: list[bytes]) -> None:
            async def op(session: _ClientSession) -> list[bytes]:
                return await session.request(packets, PacketType.JOB_CREATED)

            handles.extend(await self._run(op))

        for workload in workloads:
            if uniq_iter is not None:
                try:
                    unique = encode_unique(next(uniq_iter))
                except StopIteration:
                    raise ValueError("uniques: fewer unique ids than workloads") from None
            else:
                unique = new_unique()
            if signer is not None:
                workload = signer.sign(fn, workload)
            chunk.append(pack_submit(ptype, fn, unique, workload))
            if len(chunk) >= self.chunk_size:
                await flush(chunk)
                chunk = []
        if chunk:
            await flush(chunk)
        return handles

    async def submit(
        self,
        function: str,
        workload: bytes,
        unique: str | None = None,
        priority: Priority = "normal",
        timeout_s: float | None = 60.0,
    ) -> bytes:
        """Run a foreground job and return its result (all WORK_DATA chunks + the WORK_COMPLETE data).

        Raises GearmanJobFailed on WORK_FAIL / WORK_EXCEPTION, GearmanJobTimeoutError when no result came within
        ``timeout_s`` (None: wait forever), GearmanConnectionError when the connection died after the job was
        created (the job is not resubmitted: it may have run).
        """
        packet = self._pack_one(_FG_TYPES[priority], function, workload, unique)
        loop = asyncio.get_running_loop()
        state: list[tuple[_ClientSession, _Foreground]] = []

        async def op(session: _ClientSession) -> bytes:
            fg = _Foreground(loop.create_future())
            state.append((session, fg))
            return (await session.request([packet], PacketType.JOB_CREATED, foreground=fg))[0]

        try:
            handle = await self._run(op)
            session, fg = state[-1]
            try:
                async with asyncio.timeout(timeout_s):
                    return await fg.future
            except TimeoutError:
                raise GearmanJobTimeoutError(handle, timeout_s or 0.0) from None
        finally:
            # Forget every attempt's result slot (failed-over attempts too): nobody reads them any more.
            for attempt_session, attempt_fg in state:
                if attempt_fg.handle:
                    attempt_session.foreground.pop(attempt_fg.handle, None)
                _ClientSession._abandon([attempt_fg.future])

    async def echo(self, data: bytes = b"ping") -> bytes:
        """Round trip through the current server (health check)."""
        packet = pack_request(PacketType.ECHO_REQ, data)

        async def op(session: _ClientSession) -> bytes:
            return (await session.request([packet], PacketType.ECHO_RES))[0]

        return await self._run(op)
