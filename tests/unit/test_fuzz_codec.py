"""The Gearman codec on a real socket, fed garbage by a local TCP server (hypothesis-generated).

tests/unit/test_gearman_protocol.py fuzzes the pure parser. Here the bytes arrive through asyncio
exactly as from a broken or hostile gearmand: random bytes, valid packets cut short, wrong magic,
unknown types, a header announcing gigabytes, a peer that trickles or goes silent, a peer that
floods harmless packets forever. Each case must end, within its deadline, with the connection
closed and a GearmanConnectionError naming what was wrong, the parser's buffer bounded by
header + max_packet_bytes, and memory that does not grow with the amount of garbage.
"""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.errors import ProtocolError
from sync.gearman.connection import GearmanConnection
from sync.gearman.errors import GearmanConnectionError, GearmanProtocolError, GearmanTimeoutError
from sync.gearman.protocol import ARG_COUNTS, RES_MAGIC, PacketParser, PacketType, pack_response
from sync.gearman.worker import GearmanWorkerConnection

LIMIT = 4096          # max_packet_bytes of the connections under test
IO_TIMEOUT_S = 0.3

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def with_server(serve: Serve, body: Callable[[int], Awaitable[None]]) -> None:
    """Run body(port) against a loopback server whose every connection is handled by serve."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await body(port)
    finally:
        server.close()
        await server.wait_closed()


def sender(data: bytes, *, chunk: int = 0, then: str = "close") -> Serve:
    """A server that sends data (in chunks of `chunk` bytes, 0 = at once), then closes or stays silent."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        step = chunk or max(len(data), 1)
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
            await writer.drain()
        if then == "silent":
            await asyncio.sleep(30)
    return serve


def packet(ptype: PacketType, *args: bytes) -> bytes:
    return pack_response(ptype, *args)


VALID = packet(PacketType.NOOP) + packet(PacketType.JOB_CREATED, b"H:x:1") + packet(
    PacketType.JOB_ASSIGN_UNIQ, b"H:x:2", b"fn", b"u", b"payload\0with nul")


def _header(ptype: int, size: int, magic: bytes = RES_MAGIC) -> bytes:
    return magic + struct.pack(">II", ptype, size)


garbage = st.one_of(
    st.binary(min_size=1, max_size=2000),                                         # random bytes
    st.integers(min_value=1, max_value=len(VALID) - 1).map(lambda n: VALID[:n]),  # truncated
    st.binary(min_size=1, max_size=64).map(lambda b: VALID + b),                  # valid, then noise
    st.integers(min_value=LIMIT + 1, max_value=2**32 - 1).map(
        lambda n: _header(int(PacketType.JOB_ASSIGN_UNIQ), n) + b"x" * 100),      # oversized header
    st.integers(min_value=0, max_value=2**32 - 1).filter(
        lambda t: t >= 64 or t not in {int(p) for p in PacketType}).map(
        lambda t: _header(t, 0)),                                                 # unknown type
    st.sampled_from([b"\0REQ", b"RES\0", b"HTTP/1.1 200 OK\r\n", b"-ERR\r\n", b"\0RE"]).map(
        lambda m: m + b"\0" * 12),                                                # wrong magic / protocol
    st.sampled_from(sorted(t for t, n in ARG_COUNTS.items() if n >= 2)).map(
        lambda t: _header(int(t), 3) + b"abc"),                                   # too few NULs
)


async def drain_until_error(conn: GearmanConnection) -> BaseException:
    """Read until the connection fails; every read is bounded by IO_TIMEOUT_S."""
    await conn.connect()
    for _ in range(1000):
        try:
            await conn.read_packets()
        except GearmanConnectionError as exc:
            return exc
        assert conn._parser.buffered_bytes <= 12 + LIMIT + 256 * 1024
    raise AssertionError("1000 reads without an error")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=garbage, chunk=st.sampled_from([0, 1, 7, 512]), then=st.sampled_from(["close", "silent"]))
def test_garbage_from_the_server_closes_the_connection_with_an_error(data: bytes, chunk: int, then: str) -> None:
    async def body(port: int) -> None:
        conn = GearmanConnection("127.0.0.1", port, connect_timeout_s=2, io_timeout_s=IO_TIMEOUT_S,
                                 max_packet_bytes=LIMIT)
        exc = await asyncio.wait_for(drain_until_error(conn), 20)
        assert conn.closed and conn.close_reason
        # the error names the cause: protocol (with the detail), timeout or the peer closing
        assert isinstance(exc, (GearmanProtocolError, GearmanTimeoutError)) or "closed by server" in str(exc), exc
        assert f"127.0.0.1:{port}" in str(exc)
        with pytest.raises(GearmanConnectionError):   # a closed connection refuses further use
            await conn.send(b"\0REQ" + struct.pack(">II", 22, 0))

    asyncio.run(with_server(sender(data, chunk=chunk, then=then), body))


def test_oversized_header_is_refused_before_the_payload_is_buffered() -> None:
    """A header announcing 4 GiB - 1, then megabytes trickling: refused from the header alone."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_header(int(PacketType.JOB_ASSIGN_UNIQ), 2**32 - 1))
        for _ in range(64):
            writer.write(b"\0" * 65536)
            await writer.drain()
            await asyncio.sleep(0.001)

    async def body(port: int) -> None:
        conn = GearmanConnection("127.0.0.1", port, io_timeout_s=2, max_packet_bytes=LIMIT)
        exc = await asyncio.wait_for(drain_until_error(conn), 10)
        assert isinstance(exc, GearmanProtocolError), exc
        assert "4294967295 bytes exceeds max_packet_bytes=4096" in str(exc)
        assert conn._parser.buffered_bytes == 0

    asyncio.run(with_server(serve, body))


def test_slow_drip_of_a_big_packet_times_out() -> None:
    """Slowloris: a packet just under the limit, one byte every 50 ms. The io timeout is per read
    (bytes keep arriving), so the bound is the buffer, never more than header + limit."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_header(int(PacketType.WORK_DATA), LIMIT))
        for _ in range(40):
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(0.05)
        await asyncio.sleep(30)

    async def body(port: int) -> None:
        conn = GearmanConnection("127.0.0.1", port, io_timeout_s=0.5, max_packet_bytes=LIMIT)
        exc = await asyncio.wait_for(drain_until_error(conn), 15)
        assert isinstance(exc, GearmanTimeoutError), exc
        assert conn.closed

    asyncio.run(with_server(serve, body))


def test_parser_memory_stays_flat_under_a_long_stream() -> None:
    """64 MiB of valid packets fed in odd-sized chunks: the parser keeps at most one partial packet,
    and Python's allocations do not grow with the stream."""
    one = packet(PacketType.JOB_ASSIGN_UNIQ, b"H:x:1", b"gearsync.data", b"u" * 40, b"x" * 300)
    block = one * 1000
    parser = PacketParser(max_packet_bytes=LIMIT)
    tracemalloc.start()
    try:
        peak_after_warmup = None
        fed = 0
        i = 0
        while fed < 64 * 1024 * 1024:
            cut = 997 + (i % 13) * 311
            for pos in range(0, len(block), cut):
                parser.feed(block[pos : pos + cut])
                assert parser.buffered_bytes < len(one) + cut
            fed += len(block)
            i += 1
            if i == 5:
                tracemalloc.reset_peak()
                peak_after_warmup = tracemalloc.get_traced_memory()[0]
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_after_warmup is not None
    assert peak - peak_after_warmup < 4 * 1024 * 1024, (peak_after_warmup, peak)


def test_garbage_in_the_middle_of_a_valid_stream_poisons_the_parser() -> None:
    parser = PacketParser()
    assert len(parser.feed(VALID)) == 3
    with pytest.raises(ProtocolError, match="bad packet magic"):
        parser.feed(b"GET / HTTP/1.0\r\n")
    with pytest.raises(ProtocolError, match="already failed"):
        parser.feed(VALID)


# -- the worker side: what sync-worker's connection does with a hostile "gearmand" ---------------

def grab_server(reply: Callable[[int], bytes], *, forever: bool = False) -> Serve:
    """Answers each GRAB_JOB_UNIQ batch with reply(n) (n = GRAB requests in the read)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            n = data.count(b"\0REQ")
            if forever:
                while True:
                    writer.write(reply(n))
                    await writer.drain()
                    await asyncio.sleep(0)
            writer.write(reply(n))
            await writer.drain()
    return serve


@pytest.mark.parametrize("reply, error", [
    (lambda n: b"\xff" * 40, GearmanProtocolError),
    (lambda n: _header(int(PacketType.JOB_ASSIGN_UNIQ), 2**31), GearmanProtocolError),
    (lambda n: packet(PacketType.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u", b"w")[:-3], GearmanTimeoutError),
    (lambda n: b"", GearmanTimeoutError),
])
def test_worker_grab_against_garbage_fails_fast(reply: Callable[[int], bytes], error: type) -> None:
    async def body(port: int) -> None:
        w = GearmanWorkerConnection("127.0.0.1", port, io_timeout_s=IO_TIMEOUT_S, max_packet_bytes=LIMIT)
        await w.connect()
        with pytest.raises(error):
            await asyncio.wait_for(w.grab_jobs(8), 10)
        assert w.closed

    asyncio.run(with_server(grab_server(reply), body))


def test_worker_grab_against_an_endless_noop_flood_is_bounded() -> None:
    """A peer that answers GRAB_JOB_UNIQ with NOOPs forever (never NO_JOB / JOB_ASSIGN): every read
    returns a packet, so no read times out; the grab must still end within its own deadline."""
    async def body(port: int) -> None:
        w = GearmanWorkerConnection("127.0.0.1", port, io_timeout_s=IO_TIMEOUT_S, max_packet_bytes=LIMIT)
        await w.connect()
        try:
            await asyncio.wait_for(w.grab_jobs(8), 10)
        except GearmanProtocolError as exc:
            assert "answer no GRAB_JOB_UNIQ" in str(exc) and w.closed
        except TimeoutError:  # before the fix in GearmanWorkerConnection._grab it read forever
            w.close("test")
            pytest.fail("grab_jobs kept reading an endless NOOP flood for 10 s")
        else:
            pytest.fail("grab_jobs returned from a NOOP flood")

    asyncio.run(with_server(grab_server(lambda n: packet(PacketType.NOOP) * 64, forever=True), body))
