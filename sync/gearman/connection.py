"""One asyncio TCP connection to gearmand, speaking binary packets, with a deadline on every await.

Rules:

* ``connect()``, ``send()`` and ``read_packets()`` each run under ``asyncio.timeout``; a missed deadline raises
  GearmanTimeoutError.
* Any socket error, EOF, timeout or malformed packet closes the connection and raises a GearmanConnectionError
  subclass. A closed connection refuses further use (GearmanConnectionError); make a new one to reconnect.
* A cancelled read or write (the caller's own cancellation) does NOT close the connection: a read cancelled while
  waiting leaves the bytes in the stream; nothing half-parsed is lost.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque

import structlog

from sync.errors import ProtocolError
from sync.gearman.errors import GearmanConnectionError, GearmanProtocolError, GearmanTimeoutError
from sync.gearman.protocol import DEFAULT_MAX_PACKET_BYTES, RES_MAGIC, Packet, PacketParser

__all__ = ["GearmanConnection"]

log = structlog.get_logger(__name__)

READ_CHUNK_BYTES = 256 * 1024


class GearmanConnection:
    """A client/worker-side connection: sends requests (``\\0REQ``), parses responses (``\\0RES``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float = 5.0,
        io_timeout_s: float = 10.0,
        max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self._parser = PacketParser(RES_MAGIC, max_packet_bytes)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: deque[Packet] = deque()
        self._closed = False
        self.close_reason: str | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("closed" if self._closed else "new")
        return f"<GearmanConnection {self.host}:{self.port} {state}>"

    async def connect(self) -> None:
        if self._closed:
            raise GearmanConnectionError(f"{self.host}:{self.port}: connection already closed", self.address)
        if self._writer is not None:
            return
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_CHUNK_BYTES)
        except TimeoutError:
            self._mark_closed("connect timeout")
            raise GearmanTimeoutError(
                f"{self.host}:{self.port}: connect timed out after {self.connect_timeout_s}s", self.address
            ) from None
        except OSError as exc:
            self._mark_closed(f"connect failed: {exc}")
            raise GearmanConnectionError(f"{self.host}:{self.port}: connect failed: {exc}", self.address) from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:  # not fatal; only latency/keepalive tuning
                log.debug("gearman_sockopt_failed", host=self.host, port=self.port)
        self._reader, self._writer = reader, writer

    def _mark_closed(self, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self.close_reason = reason
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.transport.abort()

    def close(self, reason: str = "closed by caller") -> None:
        """Close at once (abort: unsent bytes are dropped). Idempotent."""
        self._mark_closed(reason)

    def _check_open(self) -> asyncio.StreamWriter:
        writer = self._writer
        if writer is None:
            if self._closed:
                raise GearmanConnectionError(
                    f"{self.host}:{self.port}: connection closed ({self.close_reason})", self.address
                )
            raise GearmanConnectionError(f"{self.host}:{self.port}: not connected", self.address)
        return writer

    def _fail(
        self, reason: str, exc_type: type[GearmanConnectionError] = GearmanConnectionError
    ) -> GearmanConnectionError:
        self._mark_closed(reason)
        return exc_type(f"{self.host}:{self.port}: {reason}", self.address)

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` (one or many packed packets) and wait until the transport buffer drained."""
        writer = self._check_open()
        reader = self._reader
        if writer.transport.is_closing() or (reader is not None and reader.at_eof()):
            # The peer hung up while we were not reading; asyncio would drop the bytes silently.
            raise self._fail("connection closed by server")
        try:
            writer.write(data)
            async with asyncio.timeout(self.io_timeout_s):
                await writer.drain()
        except TimeoutError:
            raise self._fail(f"write timed out after {self.io_timeout_s}s", GearmanTimeoutError) from None
        except (OSError, RuntimeError) as exc:
            # RuntimeError: write on a transport that was closed underneath us.
            raise self._fail(f"write failed: {exc!r}") from exc

    def unread(self, packets: list[Packet]) -> None:
        """Give back packets a caller read but does not own; the next read returns them first."""
        self._pending.extend(packets)

    def take_buffered(self) -> list[Packet]:
        """Packets already parsed but not yet returned (never waits)."""
        if not self._pending:
            return []
        out = list(self._pending)
        self._pending.clear()
        return out

    async def read_packets(self, timeout_s: float | None = None) -> list[Packet]:
        """Wait (at most ``timeout_s``, default io_timeout_s) until at least one packet is complete; return all
        packets complete so far. A timeout raises GearmanTimeoutError and closes the connection; use
        ``poll_packets`` for a wait whose expiry is normal."""
        if self._pending:
            return self.take_buffered()
        packets = await self._read_some(self.io_timeout_s if timeout_s is None else timeout_s, close_on_timeout=True)
        assert packets is not None
        return packets

    async def poll_packets(self, timeout_s: float) -> list[Packet]:
        """Like read_packets but an expired wait returns [] and keeps the connection open."""
        if self._pending:
            return self.take_buffered()
        packets = await self._read_some(timeout_s, close_on_timeout=False)
        return packets or []

    async def _read_some(self, timeout_s: float, close_on_timeout: bool) -> list[Packet] | None:
        self._check_open()
        reader = self._reader
        assert reader is not None
        parser = self._parser
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    chunk = await reader.read(READ_CHUNK_BYTES)
                    if not chunk:
                        raise self._fail("connection closed by server")
                    packets = parser.feed(chunk)
                    if packets:
                        return packets
        except TimeoutError:
            if close_on_timeout:
                raise self._fail(f"read timed out after {timeout_s}s", GearmanTimeoutError) from None
            return None
        except ProtocolError as exc:
            raise self._fail(f"protocol error: {exc}", GearmanProtocolError) from exc
        except OSError as exc:
            raise self._fail(f"read failed: {exc!r}") from exc
