"""The C event loop of the binlog dump connection (sync/capture/binlog/_binloop.c: Loop) on packets
built here byte for byte the way a MariaDB server sends them: MySQL packets (3-byte length,
sequence id, 0xFFFFFF continuation), the 19-byte event header, MariaDB GTID / XID / TABLE_MAP /
WRITE_ROWS_V2 / HEARTBEAT bodies. What the loop returns is what the reader turns into events."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pymysql
import pytest

from sync.capture.binlog import decoders

pytestmark = pytest.mark.skipif(decoders._rowdecode is None, reason="the C extension is not built")

PART = 0xFFFFFF
TABLE_ID = 0x12
SPEC = ((decoders.OP_INT, "id", 4, 0, None), (decoders.OP_STR, "s", 4, 0, "utf8"))


def packets(payload: bytes, seq: int = 1) -> bytes:
    """One MySQL packet, split into 0xFFFFFF-byte parts (and an empty last part when it divides)."""
    out = b""
    while True:
        part, payload = payload[:PART], payload[PART:]
        out += len(part).to_bytes(3, "little") + bytes([seq & 0xFF]) + part
        seq += 1
        if len(part) < PART:
            return out


def event(etype: int, body: bytes, log_pos: int, checksum: bool = False, ts: int = 1700000000) -> bytes:
    size = 19 + len(body) + (4 if checksum else 0)
    data = struct.pack("<IBIIIH", ts, etype, 7, size, log_pos, 0) + body
    return packets(b"\x00" + data + (zlib.crc32(data).to_bytes(4, "little") if checksum else b""))


def gtid(seq: int, domain: int = 0) -> bytes:
    return struct.pack("<QIB", seq, domain, 0) + bytes(6)


def table_map(table_id: int = TABLE_ID) -> bytes:
    return table_id.to_bytes(6, "little") + b"\x01\x00" + b"\x02db\x00\x01t\x00\x02\x03\xfc\x01\x04\x02"


def write_rows(rows: list[tuple[int, str]], table_id: int = TABLE_ID) -> bytes:
    body = table_id.to_bytes(6, "little") + b"\x01\x00" + b"\x02\x00" + b"\x02" + b"\x03"
    for i, s in rows:
        raw = s.encode()
        body += b"\x00" + struct.pack("<i", i) + struct.pack("<I", len(raw)) + raw
    return body


def transaction(seq: int, rows: list[tuple[int, str]], end: int, table_id: int = TABLE_ID) -> bytes:
    return (event(162, gtid(seq), end - 300) + event(19, table_map(table_id), end - 200)
            + event(30, write_rows(rows, table_id), end - 100) + event(16, struct.pack("<Q", seq), end))


def new_loop(checksum: bool = False, max_packet: int = 1 << 30, register: bool = True) -> Any:
    loop = decoders._rowdecode.Loop(checksum, max_packet)
    if register:
        loop.table_map(table_map(), TABLE_ID, decoders._rowdecode.Decoder(SPEC, "n"), "tag")
    return loop


def feed_all(loop: Any, data: bytes, step: int | None = None) -> list[tuple[Any, ...]]:
    """Every item of `data` fed whole or `step` bytes at a time (going on after each pause)."""
    items: list[tuple[Any, ...]] = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        items += loop.feed(data[i:i + step])
        while loop.paused:
            items += loop.feed(b"")
    return items


def row(i: int, s: str) -> dict[str, Any]:
    return {"values": {"id": i, "s": s}, "none_sources": "n"}


def test_a_whole_transaction_is_one_item() -> None:
    items = feed_all(new_loop(), transaction(5, [(1, "a"), (2, "bé")], 1000))
    assert items == [(0, 5, 0, 7, 1000, 1700000000, [("tag", "WriteRowsEvent", [row(1, "a"), row(2, "bé")], 900)])]


@pytest.mark.parametrize("checksum", [False, True])
def test_packets_split_across_reads_byte_by_byte(checksum: bool) -> None:
    data = b"".join(event(t, b, p, checksum) for t, b, p in [
        (162, gtid(5), 100), (19, table_map(), 200), (30, write_rows([(1, "x" * 300)]), 300), (16, bytes(8), 400),
        (27, b"binlog.000001", 0), (162, gtid(6), 500), (30, write_rows([(2, "y")]), 600), (16, bytes(8), 700),
    ])
    whole = feed_all(new_loop(checksum), data)
    assert whole[0] == (0, 5, 0, 7, 400, 1700000000, [("tag", "WriteRowsEvent", [row(1, "x" * 300)], 300)])
    assert whole[1] == (5,)
    assert whole[2] == (0, 6, 0, 7, 700, 1700000000, [("tag", "WriteRowsEvent", [row(2, "y")], 600)])
    loop = new_loop(checksum)
    single = feed_all(loop, data, step=1)
    # A transaction that spans reads comes out in parts: its GTID, its rows, its commit.
    assert (1, 5, 0, 7) in single and (3, 400, 1700000000) in single
    assert (2, "tag", "WriteRowsEvent", [row(1, "x" * 300)], 300) in single
    assert [i for i in single if i[0] == 5] == [(5,)]
    assert loop.buffered() == 0


def test_rows_of_tables_not_registered_are_skipped() -> None:
    items = feed_all(new_loop(), transaction(9, [(1, "a")], 1000, table_id=99))
    # the unknown TABLE_MAP goes to Python (it decides); its rows never do
    assert items[0][0] == 1 and items[1][0] == 4 and items[1][1][5] == 19
    assert items[2:] == [(3, 1000, 1700000000)]
    loop = new_loop()
    loop.table_map(table_map(99), 99, None, None)   # Python: not a synced table
    assert feed_all(loop, transaction(9, [(1, "a")], 1000, table_id=99)) == [(0, 9, 0, 7, 1000, 1700000000, [])]


def test_a_table_map_python_has_not_seen_pauses_the_loop() -> None:
    loop = new_loop(register=False)
    items = loop.feed(transaction(5, [(1, "a")], 1000))
    assert [i[0] for i in items] == [1, 4] and loop.paused   # the rows event waits for the registration
    loop.table_map(table_map(), TABLE_ID, decoders._rowdecode.Decoder(SPEC, "n"), "tag")
    assert loop.feed(b"") == [(2, "tag", "WriteRowsEvent", [row(1, "a")], 900), (3, 1000, 1700000000)]
    loop.clear()   # a DDL statement or a rotation: every table map goes to Python again
    assert [i[0] for i in feed_all(loop, transaction(6, [(1, "a")], 2000))] == [1, 4, 3]


def test_an_event_past_16_mib_in_continuation_packets() -> None:
    big = "z" * (17 << 20)
    data = transaction(5, [(1, big)], 1000)
    assert data.count(b"\xff\xff\xff") >= 1
    items = feed_all(new_loop(), data, step=1 << 20)
    rows = [r for i in items if i[0] == 2 for r in i[3]] + [r for i in items if i[0] == 0 for x in i[6] for r in x[2]]
    assert rows == [row(1, big)]
    assert items[-1][0] in (0, 3)


def test_a_checksum_that_does_not_match_is_one_error_naming_the_position() -> None:
    good = transaction(5, [(1, "a")], 1000)
    items = feed_all(new_loop(checksum=True), b"".join(event(t, b, p, True) for t, b, p in [
        (162, gtid(5), 700), (19, table_map(), 800), (30, write_rows([(1, "a")]), 900), (16, bytes(8), 1000)]))
    assert items == feed_all(new_loop(), good)
    bad = bytearray(event(30, write_rows([(2, "b")]), 1500, True))
    bad[30] ^= 1   # one bit of the body
    items = feed_all(new_loop(checksum=True), event(162, gtid(6), 1400, True) + bytes(bad))
    assert items[-1][0] == 8 and "CRC32" in items[-1][1] and "binlog position 1400" in items[-1][1]


def test_rows_that_do_not_decode_go_to_the_library() -> None:
    body = write_rows([(1, "a")])[:-1] + b"\xff"   # a string that is not UTF-8: the library names it
    items = feed_all(new_loop(), event(162, gtid(5), 100) + event(30, body, 200) + event(16, bytes(8), 300))
    assert [i[0] for i in items] == [1, 4, 3]


def test_a_packet_past_max_packet_is_one_error_naming_the_position() -> None:
    loop = new_loop(max_packet=4096)
    data = transaction(5, [(1, "a")], 1000) + event(30, write_rows([(2, "b" * 5000)]), 1500)
    items = feed_all(loop, data)
    assert items[0][0] == 0
    assert items[-1][0] == 8 and "max_packet 4096" in items[-1][1] and "binlog position 1000" in items[-1][1]
    assert loop.feed(transaction(6, [(1, "a")], 2000)) == []   # nothing after it is read


@pytest.mark.parametrize("bad", [
    struct.pack("<IBIIIH", 0, 16, 7, 999, 100, 0) + bytes(8),   # a size that is not the packet's
    struct.pack("<IBIIIH", 0, 16, 7, 10, 100, 0),               # shorter than its header
    bytes(5),                                                   # shorter than a header
])
def test_malformed_framing_is_one_error(bad: bytes) -> None:
    loop = new_loop()
    items = loop.feed(packets(b"\x00" + bad))
    assert len(items) == 1 and items[0][0] == 8 and "binlog position" in items[0][1]


def test_error_and_eof_packets() -> None:
    err = b"\xff" + struct.pack("<H", 1236) + b"#HY000" + b"Could not find first log file name in binary log index file"
    items = new_loop().feed(transaction(5, [(1, "a")], 1000) + packets(err))
    assert items[-1] == (6, err)
    with pytest.raises(pymysql.err.OperationalError) as caught:
        pymysql.err.raise_mysql_exception(items[-1][1])
    assert caught.value.args[0] == 1236
    assert new_loop().feed(event(162, gtid(5), 100) + packets(b"\xfe\x00\x00\x02\x00")) == [(1, 5, 0, 7), (7,)]
