"""Background submits over a blocking socket, for a thread that has no event loop (sync-binlog's
binlog-reader thread: sync.capture.binlog.writer).

    sub = BlockingSubmitter([("127.0.0.1", 4730)], signer=keys.signer)
    sub.send([sub.pack("gearsync.data", payload, "bl:1a2b:…:u"), …])   # one write, no wait
    …                                                                  # decode the next batch
    sub.wait()                                                         # every JOB_CREATED is there

`send` writes the SUBMIT_JOB_BG packets (unique ids given by the caller, workloads signed as
GearmanClient does) in one write and returns; `wait` reads until gearmand answered each of them
with JOB_CREATED, so the caller saves its position only after gearmand holds every job. Several
sends may precede one wait (the answers come in request order).

Deadlines: connecting is bounded by connect_timeout_s, each write by io_timeout_s, and `wait` by
io_timeout_s without a new answer. Any failure (refused, reset, timeout, garbage, an ERROR answer
such as QUEUE_FULL) closes the connection, forgets the answers still owed and raises a
GearmanError; the next send connects again, to the next server in the list (failover). The caller
retries with back-off and sends the unacknowledged jobs again: their unique ids make gearmand merge
a resubmission into a job still queued.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

import structlog

from sync.errors import ProtocolError
from sync.gearman.errors import (
    GearmanConnectionError,
    GearmanProtocolError,
    GearmanServerError,
    GearmanTimeoutError,
)
from sync.gearman.protocol import (
    DEFAULT_MAX_PACKET_BYTES,
    RES_MAGIC,
    Packet,
    PacketParser,
    PacketType,
    encode_function,
    encode_unique,
    pack_submit,
)
from sync.signing import Signer

__all__ = ["BlockingSubmitter"]

log = structlog.get_logger(__name__)

READ_BYTES = 256 * 1024


class BlockingSubmitter:
    """Pipelined background submits to one of several gearmand servers; see the module docstring."""

    def __init__(self, servers: Sequence[tuple[str, int]], *, connect_timeout_s: float = 2.0,
                 io_timeout_s: float = 5.0, signer: Signer | None = None,
                 max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES) -> None:
        if not servers:
            raise ValueError("servers: expected at least one (host, port)")
        self.servers = [(str(h), int(p)) for h, p in servers]
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self.signer = signer
        self.max_packet_bytes = max_packet_bytes
        self._index = 0                     # the server in use (or to connect to next)
        self._sock: socket.socket | None = None
        self._parser = PacketParser(RES_MAGIC, max_packet_bytes)
        self._owed = 0                      # JOB_CREATEDs sent for and not yet read
        self._functions: dict[str, bytes] = {}

    @property
    def address(self) -> tuple[str, int]:
        return self.servers[self._index]

    @property
    def owed(self) -> int:
        """Submits written whose JOB_CREATED has not been read yet."""
        return self._owed

    def pack(self, function: str, workload: bytes, unique: str) -> bytes:
        """One SUBMIT_JOB_BG packet, the workload signed when a signer is set; ValueError for a
        function name or unique id gearmand would refuse."""
        fn = self._functions.get(function)
        if fn is None:
            fn = self._functions[function] = encode_function(function)
        return self.pack_checked(fn, workload, encode_unique(unique))

    def pack_checked(self, function: bytes, workload: bytes, unique: bytes) -> bytes:
        """pack() for a function and unique id already checked (encode_function, encode_unique, or
        made of characters known to be valid and short enough): the hot path of a batch."""
        if self.signer is not None:
            workload = self.signer.sign(function, workload)
        return pack_submit(PacketType.SUBMIT_JOB_BG, function, unique, workload)

    def send(self, packets: Sequence[bytes]) -> None:
        """Write `packets` (packed submits) in one write, connecting first if needed; no wait."""
        if not packets:
            return
        sock = self._connect()
        data = b"".join(packets) if len(packets) > 1 else packets[0]
        try:
            sock.settimeout(self.io_timeout_s)
            sock.sendall(data)
        except TimeoutError:
            raise self._fail(f"write timed out after {self.io_timeout_s}s", GearmanTimeoutError) from None
        except OSError as exc:
            raise self._fail(f"write failed: {exc!r}") from exc
        self._owed += len(packets)

    def wait(self) -> int:
        """Read until every submit sent so far has its JOB_CREATED; returns how many were read."""
        got = 0
        sock = self._sock
        while self._owed:
            assert sock is not None  # owed > 0 only while connected
            deadline = time.monotonic() + self.io_timeout_s   # renewed by every read that completes packets
            packets: list[Packet] = []
            while not packets:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._fail(f"no answer within {self.io_timeout_s}s", GearmanTimeoutError)
                try:
                    sock.settimeout(left)
                    chunk = sock.recv(READ_BYTES)
                except TimeoutError:
                    raise self._fail(f"no answer within {self.io_timeout_s}s", GearmanTimeoutError) from None
                except OSError as exc:
                    raise self._fail(f"read failed: {exc!r}") from exc
                if not chunk:
                    raise self._fail("connection closed by server")
                try:
                    packets = self._parser.feed(chunk)
                except ProtocolError as exc:
                    raise self._fail(f"protocol error: {exc}", GearmanProtocolError) from exc
            for packet in packets:
                if packet.type is PacketType.JOB_CREATED:
                    self._owed -= 1
                    got += 1
                elif packet.type is PacketType.ERROR:
                    code = packet.args[0].decode("utf-8", "replace")
                    text = packet.args[1].decode("utf-8", "replace")
                    self._fail(f"ERROR {code}: {text}")
                    raise GearmanServerError(code, text, self.address)
                elif packet.type is not PacketType.NOOP:
                    raise self._fail(f"expected JOB_CREATED, got {packet.type.name}", GearmanProtocolError)
            if self._owed < 0:
                raise self._fail("more JOB_CREATED answers than submits", GearmanProtocolError)
        return got

    def close(self) -> None:
        """Close the connection (submits still owed an answer are forgotten). Idempotent."""
        sock, self._sock = self._sock, None
        self._owed = 0
        self._parser = PacketParser(RES_MAGIC, self.max_packet_bytes)
        if sock is not None:
            try:
                sock.close()
            except OSError:  # closing a broken socket: nothing left to do
                log.debug("gearman_close_failed", host=self.address[0], port=self.address[1])

    # -- internals -----------------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        host, port = self.address
        try:
            sock = socket.create_connection((host, port), timeout=self.connect_timeout_s)
        except TimeoutError:
            self._next_server()
            raise GearmanTimeoutError(f"{host}:{port}: connect timed out after {self.connect_timeout_s}s",
                                      (host, port)) from None
        except OSError as exc:
            self._next_server()
            raise GearmanConnectionError(f"{host}:{port}: connect failed: {exc}", (host, port)) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:  # latency/keepalive tuning only
            log.debug("gearman_sockopt_failed", host=host, port=port)
        self._sock = sock
        log.info("gearman_client_connected", host=host, port=port)
        return sock

    def _next_server(self) -> None:
        self._index = (self._index + 1) % len(self.servers)

    def _fail(self, reason: str,
              exc_type: type[GearmanConnectionError] = GearmanConnectionError) -> GearmanConnectionError:
        """Close, move on to the next server, and the error to raise."""
        host, port = self.address
        self.close()
        self._next_server()
        log.warning("gearman_client_server_down", host=host, port=port, error=reason)
        return exc_type(f"{host}:{port}: {reason}", (host, port))
