"""sync.gearman.protocol: packing, incremental parsing, limits, admin text parsing. Pure, no sockets."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.errors import ProtocolError
from sync.gearman.protocol import (
    ARG_COUNTS,
    REQ_MAGIC,
    RES_MAGIC,
    FunctionStatus,
    JobInfo,
    Packet,
    PacketParser,
    PacketType,
    WorkerInfo,
    pack_request,
    pack_response,
    pack_submit,
    pack_work_complete,
    parse_admin_error,
    parse_show_jobs,
    parse_show_unique_jobs,
    parse_status,
    parse_version,
    parse_workers,
)
from sync.retry import Backoff

PAYLOAD = b"\x00\xff caf\xc3\xa9 \x00\x00 end\x00"


def header(magic: bytes, ptype: int, size: int) -> bytes:
    return magic + struct.pack(">II", ptype, size)


def test_pack_request_layout() -> None:
    raw = pack_request(PacketType.SUBMIT_JOB_BG, b"fn", b"u1", PAYLOAD)
    body = b"fn\0u1\0" + PAYLOAD
    assert raw == b"\0REQ" + struct.pack(">II", 18, len(body)) + body


def test_pack_request_zero_args_and_str_int_args() -> None:
    assert pack_request(PacketType.GRAB_JOB_UNIQ) == b"\0REQ\x00\x00\x00\x1e\x00\x00\x00\x00"
    raw = pack_request(PacketType.CAN_DO_TIMEOUT, "fné", 30)
    assert raw.endswith("fné".encode() + b"\x0030")


def test_pack_submit_matches_generic() -> None:
    for ptype in (PacketType.SUBMIT_JOB, PacketType.SUBMIT_JOB_LOW_BG):
        assert pack_submit(ptype, b"fn", b"u-1", PAYLOAD) == pack_request(ptype, b"fn", b"u-1", PAYLOAD)


def test_pack_work_complete_matches_generic() -> None:
    assert pack_work_complete(b"H:x:1", PAYLOAD) == pack_request(PacketType.WORK_COMPLETE, b"H:x:1", PAYLOAD)
    assert pack_work_complete(b"H:x:1") == pack_request(PacketType.WORK_COMPLETE, b"H:x:1", b"")


@pytest.mark.parametrize(
    "ptype,args",
    [
        (PacketType.CAN_DO, ()),
        (PacketType.CAN_DO, (b"a", b"b")),
        (PacketType.NOOP, (b"x",)),
        (PacketType.SUBMIT_JOB, (b"f", b"data")),
    ],
)
def test_pack_wrong_arg_count(ptype: PacketType, args: tuple[bytes, ...]) -> None:
    with pytest.raises(ProtocolError, match=ptype.name):
        pack_request(ptype, *args)


def test_pack_rejects_nul_in_non_last_arg_and_unknown_type() -> None:
    with pytest.raises(ProtocolError, match="NUL"):
        pack_request(PacketType.SUBMIT_JOB_BG, b"f\0n", b"u", b"x")
    with pytest.raises(ProtocolError, match="unknown packet type 5"):
        pack_request(5)
    with pytest.raises(TypeError):
        pack_request(PacketType.CAN_DO, 1.5)


def sample_packets() -> list[Packet]:
    return [
        Packet(PacketType.JOB_CREATED, (b"H:vm:1",)),
        Packet(PacketType.NOOP, ()),
        Packet(PacketType.JOB_ASSIGN_UNIQ, (b"H:vm:2", b"sync_data", b"u-1", PAYLOAD)),
        Packet(PacketType.NO_JOB, ()),
        Packet(PacketType.WORK_COMPLETE, (b"H:vm:2", b"")),
        Packet(PacketType.ERROR, (b"QUEUE_FULL", b"queue is full")),
        Packet(PacketType.JOB_ASSIGN_UNIQ, (b"H:vm:3", b"f", b"", b"")),
        Packet(PacketType.STATUS_RES, (b"H:vm:2", b"1", b"0", b"3", b"10")),
        Packet(PacketType.ECHO_RES, (b"\0" * 10,)),
    ]


def stream(packets: list[Packet]) -> bytes:
    return b"".join(pack_response(p.type, *p.args) for p in packets)


def test_round_trip_all_at_once() -> None:
    packets = sample_packets()
    assert PacketParser().feed(stream(packets)) == packets


def test_round_trip_every_type() -> None:
    for ptype, argc in ARG_COUNTS.items():
        args = tuple(f"a{i}".encode() for i in range(argc - 1)) + ((b"last\0raw",) if argc else ())
        parser = PacketParser(REQ_MAGIC)
        assert parser.feed(pack_request(ptype, *args)) == [Packet(ptype, args)], ptype
        assert parser.buffered_bytes == 0


def test_one_byte_at_a_time() -> None:
    packets = sample_packets()
    parser = PacketParser()
    out: list[Packet] = []
    for b in stream(packets):
        out += parser.feed(bytes([b]))
    assert out == packets
    assert parser.buffered_bytes == 0


@pytest.mark.parametrize("seed", range(20))
def test_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    packets = sample_packets() * 5
    rng.shuffle(packets)
    data = stream(packets)
    parser = PacketParser()
    out: list[Packet] = []
    pos = 0
    while pos < len(data):
        step = rng.randint(0, 40)
        out += parser.feed(memoryview(data)[pos : pos + step])
        pos += step
    assert out == packets


def test_truncated_packet_waits_for_more() -> None:
    raw = pack_response(PacketType.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u", b"x" * 100)
    parser = PacketParser()
    for cut in (1, 4, 11, 12, 13, len(raw) - 1):
        parser = PacketParser()
        assert parser.feed(raw[:cut]) == []
        assert parser.buffered_bytes == cut
        assert len(parser.feed(raw[cut:])) == 1


def test_bad_magic_shows_hex() -> None:
    with pytest.raises(ProtocolError, match=r"00 52 45 51"):  # a request where a response was expected
        PacketParser(RES_MAGIC).feed(pack_request(PacketType.NOOP))
    # Detected from the first wrong byte, before a full header arrived.
    with pytest.raises(ProtocolError, match="bad packet magic.*48 54"):
        PacketParser().feed(b"HT")
    with pytest.raises(ProtocolError, match="bad packet magic"):
        PacketParser().feed(b"\0RE" + b"X")


def test_parser_poisoned_after_error() -> None:
    parser = PacketParser()
    with pytest.raises(ProtocolError):
        parser.feed(b"garbage!garbage!")
    with pytest.raises(ProtocolError, match="already failed"):
        parser.feed(pack_response(PacketType.NOOP))


@pytest.mark.parametrize("ptype", [0, 5, 37, 38, 43, 999, 2**32 - 1])
def test_unknown_type_named(ptype: int) -> None:
    with pytest.raises(ProtocolError, match=f"unknown packet type {ptype}"):
        PacketParser().feed(header(RES_MAGIC, ptype, 0))


def test_oversized_size_rejected_from_header_alone() -> None:
    parser = PacketParser(max_packet_bytes=1024)
    with pytest.raises(ProtocolError, match="JOB_ASSIGN_UNIQ packet of 4294967295 bytes exceeds max_packet_bytes=1024"):
        parser.feed(header(RES_MAGIC, PacketType.JOB_ASSIGN_UNIQ, 2**32 - 1))
    assert parser.buffered_bytes == 0
    # At the limit is fine.
    ok = PacketParser(max_packet_bytes=5)
    assert ok.feed(pack_response(PacketType.ECHO_RES, b"12345")) == [Packet(PacketType.ECHO_RES, (b"12345",))]


def test_default_limit_is_1_gib_plus_the_job_header() -> None:
    parser = PacketParser()
    assert parser.max_packet_bytes == (1 << 30) + (64 << 10)
    with pytest.raises(ProtocolError, match="exceeds"):
        parser.feed(header(RES_MAGIC, PacketType.ECHO_RES, (1 << 30) + (64 << 10) + 1))


@pytest.mark.parametrize(
    "ptype,payload",
    [
        (PacketType.JOB_ASSIGN_UNIQ, b"H:1\0fn\0unique-without-data-separator"),
        (PacketType.JOB_ASSIGN_UNIQ, b"no separators"),
        (PacketType.ERROR, b"CODE_ONLY"),
        (PacketType.NOOP, b"x"),
        (PacketType.WORK_COMPLETE, b""),
    ],
)
def test_wrong_arg_count(ptype: PacketType, payload: bytes) -> None:
    with pytest.raises(ProtocolError, match=ptype.name):
        PacketParser().feed(header(RES_MAGIC, ptype, len(payload)) + payload)


def test_last_arg_keeps_nuls_and_one_arg_types_take_all() -> None:
    parser = PacketParser()
    data = b"\0\0a\0"
    (p,) = parser.feed(pack_response(PacketType.WORK_DATA, b"H:1", data))
    assert p.args == (b"H:1", data)
    (p,) = parser.feed(header(RES_MAGIC, PacketType.ECHO_RES, 3) + b"a\0b")
    assert p.args == (b"a\0b",)


def test_packet_repr_and_eq() -> None:
    p = Packet(PacketType.JOB_CREATED, [b"H:1"])
    assert p == Packet(PacketType.JOB_CREATED, (b"H:1",))
    assert hash(p) == hash(Packet(PacketType.JOB_CREATED, (b"H:1",)))
    assert "JOB_CREATED" in repr(p)
    assert "<100 bytes>" in repr(Packet(PacketType.ECHO_RES, (b"x" * 100,)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_fuzz_random_bytes(data: bytes, cuts: list[int]) -> None:
    """Random input never hangs, raises only ProtocolError, and the buffer stays bounded."""
    limit = 256
    parser = PacketParser(max_packet_bytes=limit)
    pos = 0
    cuts = cuts + [len(data)]
    try:
        for cut in cuts:
            parser.feed(data[pos : pos + cut])
            pos += cut
            # Only an incomplete packet stays buffered, and its size field was checked already.
            assert parser.buffered_bytes < 12 + limit
    except ProtocolError:
        pass


def _packet_spec(ptype: PacketType) -> st.SearchStrategy[tuple[PacketType, list[bytes], bytes]]:
    n_head = max(ARG_COUNTS[ptype] - 1, 0)
    head = st.lists(st.binary(max_size=8).filter(lambda b: b"\0" not in b), min_size=n_head, max_size=n_head)
    return st.tuples(st.just(ptype), head, st.binary(max_size=30))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(sorted(ARG_COUNTS)).flatmap(_packet_spec), max_size=15),
    st.randoms(use_true_random=False),
)
def test_fuzz_round_trip(spec: list[tuple[PacketType, list[bytes], bytes]], rnd: random.Random) -> None:
    packets = [Packet(t, tuple(head) + ((last,) if ARG_COUNTS[t] else ())) for t, head, last in spec]
    data = stream(packets)
    parser = PacketParser()
    out: list[Packet] = []
    pos = 0
    while pos < len(data):
        step = rnd.randint(1, 50)
        out += parser.feed(data[pos : pos + step])
        pos += step
    assert out == packets
    assert parser.buffered_bytes == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(min_value=0, max_value=199))
def test_fuzz_corrupted_stream(noise: bytes, at: int) -> None:
    """A valid stream with bytes overwritten: either parses or raises ProtocolError, never anything else."""
    data = bytearray(stream(sample_packets()))
    at = at % len(data)
    data[at : at + len(noise)] = noise
    try:
        PacketParser(max_packet_bytes=4096).feed(bytes(data))
    except ProtocolError:
        pass


# ---- admin text protocol --------------------------------------------------------------------------------------


def test_parse_status() -> None:
    assert parse_status(["f1\t3\t1\t2", "other fn\t0\t0\t0"]) == [
        FunctionStatus("f1", 3, 1, 2),
        FunctionStatus("other fn", 0, 0, 0),
    ]
    assert parse_status([]) == []
    with pytest.raises(ProtocolError, match="4 tab-separated"):
        parse_status(["f1\t3\t1"])
    with pytest.raises(ProtocolError, match="integer.*'x'"):
        parse_status(["f1\tx\t1\t1"])


def test_parse_workers_accepts_a_closing_connection() -> None:
    # gearmand 1.1.20 lists a connection it is tearing down with fd -1 (seen in a CI run)
    (row,) = parse_workers(["-1 127.0.0.1 - :"])
    assert row.fd == -1 and row.functions == () and row.client_id == "-"
    with pytest.raises(ProtocolError, match="-2"):
        parse_workers(["-2 127.0.0.1 - :"])


def test_parse_workers() -> None:
    rows = parse_workers(["21 127.0.0.1 w1 : f1 f2", "20 127.0.0.1 - :"])
    assert rows == [
        WorkerInfo(21, "127.0.0.1", "w1", ("f1", "f2")),
        WorkerInfo(20, "127.0.0.1", "-", ()),
    ]
    with pytest.raises(ProtocolError, match="workers"):
        parse_workers(["nonsense"])


def test_parse_show_jobs_unique_version_error() -> None:
    assert parse_show_jobs(["H:vm:1\t0\t0\t1", "H:vm:2\t2\t1\t0"]) == [
        JobInfo("H:vm:1", 0, False, True),
        JobInfo("H:vm:2", 2, True, False),
    ]
    assert parse_show_unique_jobs(["", "u1"]) == ["", "u1"]
    assert parse_version("OK 1.1.20+ds\n") == "1.1.20+ds"
    with pytest.raises(ProtocolError, match="version"):
        parse_version("ERR x y")
    assert parse_admin_error("ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n") == (
        "UNKNOWN_COMMAND",
        "Unknown server commandbogus",
    )
    assert parse_admin_error("OK 1") is None


# ---- back-off -------------------------------------------------------------------------------------------------


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(initial_s=0.1, max_s=1.0, jitter=0.0)
    assert [round(b.next_delay(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert b.attempts == 6
    b.reset()
    assert b.next_delay() == 0.1
    huge = Backoff(initial_s=1.0, max_s=5.0, jitter=0.0, multiplier=1e10)
    assert [huge.next_delay() for _ in range(100)][-1] == 5.0
    for _ in range(10_000):
        b.next_delay()  # no overflow after many attempts
    assert b.next_delay() == 1.0


def test_backoff_jitter_bounds() -> None:
    b = Backoff(initial_s=1.0, max_s=8.0, jitter=0.5, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(200)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100
    for bad in ({"initial_s": 0}, {"max_s": 0.01}, {"jitter": 2}, {"multiplier": 0.5}):
        with pytest.raises(ValueError):
            Backoff(**bad)
