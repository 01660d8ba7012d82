"""sync-binlog pure parts: positions, versions (incl. the >2**20-rows overflow), event mapping, options."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import pytest

import sync.capture.binlog.decoders as decoders
import sync.capture.binlog.reader as binlog
import sync.position as position
from sync.capture.binlog.preflight import ServerInfo
from sync.capture.binlog.service import BinlogService, BinlogSettings, default_server_id, stream_name
from sync.errors import ConfigError, SourceError
from sync.events import ChangeEvent, Op, Source
from sync.keys import binlog_position_key
from sync.mysql import MySQLSettings
from sync.position import Position, format_mariadb_gtids, parse_mariadb_gtids
from sync.redis_client import RedisSettings
from sync.rows.schema import Column, TableSchema

# -- positions -----------------------------------------------------------------------------------

def test_position_json_round_trip() -> None:
    for p in (Position("mariadb", "0-1-5,2-3-9", "binlog.000002", 77), Position("mariadb", ""),
              Position("mysql", None, "binlog.000001", 4), Position("mysql", "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5")):
        assert Position.from_json(p.to_json()) == p


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"flavor":"oracle","gtid":"x"}', b'{"flavor":"mysql"}', b"nope"])
def test_position_bad_json(raw: bytes) -> None:
    with pytest.raises(SourceError, match="not a binlog position|flavor|expected a GTID"):
        Position.from_json(raw)


def test_mariadb_gtids() -> None:
    assert parse_mariadb_gtids("") == {}
    state = parse_mariadb_gtids("0-1-100, 2-5-7")
    assert state == {0: (1, 100), 2: (5, 7)}
    assert format_mariadb_gtids(state) == "0-1-100,2-5-7"
    for bad in ("0-1", "a-b-c", "0-1-2-3", "0-1-5,0-2-6", "-1-1-1"):
        with pytest.raises(SourceError):
            parse_mariadb_gtids(bad)


def test_position_key_and_names() -> None:
    m = MySQLSettings(host="db", port=3307)
    name = stream_name(m, "app", ["users", "data"])
    assert name == "db:3307/app/data,users"
    assert binlog_position_key(name) == "gearsync:binlog:pos:{db\\:3307/app/data,users}"
    assert default_server_id(name) == default_server_id(name) != default_server_id(name + "x")
    assert 0x47530000 <= default_server_id(name) <= 0x4753FFFF


def test_gtid_version_bounds() -> None:
    assert position.gtid_version(1, 0) == 1 << 20
    assert position.gtid_version(1, 5) < position.gtid_version(2, 0)
    assert position.gtid_version(position.MAX_SEQ, position.ROW_MASK) == 2**64 - 1
    with pytest.raises(SourceError, match="64 bits"):
        position.gtid_version(position.MAX_SEQ + 1)


# -- decoders (byte vectors in MySQL's TIME2/DATETIME2/DATE formats) ------------------------------

class _Packet:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out

    def read_uint24(self) -> int:
        return int.from_bytes(self.read(3), "little")

    def read_uint64(self) -> int:
        return int.from_bytes(self.read(8), "little")


class _Ev:
    def __init__(self, data: bytes) -> None:
        self.packet = _Packet(data)


class _Col:
    def __init__(self, fsp: int) -> None:
        self.fsp = fsp


def _time2_bytes(negative: bool, h: int, m: int, s: int, micro: int, fsp: int) -> bytes:
    """MySQL's TIME2 encoding (my_time_packed_to_binary), written from the format description."""
    packed = ((h << 12 | m << 6 | s) << 24) + micro
    if negative:
        packed = -packed
    if fsp == 0:
        return ((packed >> 24) + 0x800000).to_bytes(3, "big")
    if fsp in (1, 2):
        # Negative values with a fraction: integer part one lower, fraction stored as 0x100 - frac.
        intpart = packed >> 24 if packed >= 0 or not micro else -((-packed) >> 24) - 1
        frac_units = (micro // 10000) if packed >= 0 else ((0x100 - micro // 10000) & 0xFF if micro else 0)
        return (intpart + 0x800000).to_bytes(3, "big") + bytes([frac_units])
    if fsp in (3, 4):
        intpart = packed >> 24 if packed >= 0 or not micro else -((-packed) >> 24) - 1
        frac_units = (micro // 100) if packed >= 0 else ((0x10000 - micro // 100) & 0xFFFF if micro else 0)
        return (intpart + 0x800000).to_bytes(3, "big") + frac_units.to_bytes(2, "big")
    return (packed + 0x800000000000).to_bytes(6, "big")


@pytest.mark.parametrize("fsp", [0, 1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("negative, h, m, s, micro", [
    (False, 0, 0, 0, 0), (False, 838, 59, 59, 0), (True, 838, 59, 59, 0), (True, 0, 0, 0, 500000),
    (True, 1, 2, 3, 40000), (False, 12, 0, 0, 100000), (True, 0, 0, 1, 0),
])
def test_time2_decoder(fsp: int, negative: bool, h: int, m: int, s: int, micro: int) -> None:
    micro = int(str(micro).zfill(6)[:fsp].ljust(6, "0")) if fsp else 0
    got = decoders.decode_time2(_Ev(_time2_bytes(negative, h, m, s, micro, fsp)), _Col(fsp))
    want = dt.timedelta(hours=h, minutes=m, seconds=s, microseconds=micro) * (-1 if negative else 1)
    assert got == want


def _datetime2_bytes(y: int, mo: int, d: int, h: int, mi: int, s: int, micro: int, fsp: int) -> bytes:
    v = ((((y * 13 + mo) << 5 | d) << 17) | (h << 12 | mi << 6 | s)) + 0x8000000000
    out = v.to_bytes(5, "big")
    n = (fsp + 1) // 2
    if n:
        out += (micro // 10 ** (6 - 2 * n)).to_bytes(n, "big")
    return out


def test_datetime2_and_date_decoders_keep_zero_dates() -> None:
    assert decoders.decode_datetime2(_Ev(_datetime2_bytes(2024, 1, 2, 3, 4, 5, 123456, 6)), _Col(6)) == \
        dt.datetime(2024, 1, 2, 3, 4, 5, 123456)
    assert decoders.decode_datetime2(_Ev(_datetime2_bytes(0, 0, 0, 0, 0, 0, 0, 6)), _Col(6)) == "0000-00-00 00:00:00.000000"
    assert decoders.decode_datetime2(_Ev(_datetime2_bytes(2024, 5, 0, 10, 0, 0, 0, 0)), _Col(0)) == "2024-05-00 10:00:00"
    assert decoders.decode_datetime2(_Ev(_datetime2_bytes(1000, 1, 1, 0, 0, 0, 1000, 3)), _Col(3)) == dt.datetime(1000, 1, 1, 0, 0, 0, 1000)
    date = lambda y, m, d: (y << 9 | m << 5 | d).to_bytes(3, "little")  # noqa: E731
    assert decoders.decode_date(_Ev(date(2024, 2, 29))) == dt.date(2024, 2, 29)
    assert decoders.decode_date(_Ev(date(0, 0, 0))) == "0000-00-00"
    assert decoders.decode_date(_Ev(date(2024, 0, 10))) == "2024-00-10"


# -- the event mapping, with hand-made events ------------------------------------------------------

class BCol:
    def __init__(self, name: str, type_: int, charset: str | None = None, set_values: list[str] | None = None) -> None:
        self.name, self.type, self.character_set_name, self.set_values = name, type_, charset, set_values
        self.unsigned = False
        self.fsp = 0


class P:
    def __init__(self, pos: int) -> None:
        self.log_pos = pos


class MariadbGtidEvent:
    def __init__(self, seq: int) -> None:
        self.domain_id, self.server_id, self.gtid_seq_no, self.flags = 0, 1, seq, 0


class XidEvent:
    def __init__(self, pos: int = 100) -> None:
        self.packet = P(pos)


class _Rows:
    def __init__(self, rows: list[dict], cols: list[BCol] | None = None, table: str = "data") -> None:
        self.rows, self.table, self.schema, self.packet = rows, table, "app", P(50)
        self.table_id = 7
        self.columns = cols or COLS


class WriteRowsEvent(_Rows):
    pass


class UpdateRowsEvent(_Rows):
    pass


class DeleteRowsEvent(_Rows):
    pass


LONG, VARCHAR, SET = 3, 15, 248
COLS = [BCol("id", LONG), BCol("v", LONG), BCol("name", VARCHAR, "utf8"), BCol("tags", SET, "utf8", ["z", "a"])]
SCHEMA = TableSchema("app", "data", (Column("id", "int", "int", False, None, None),), ("id",), "PRIMARY")


def _source(columns: tuple[str, ...] | None = None) -> tuple[binlog.BinlogSource, list[binlog.Chunk]]:
    src = binlog.BinlogSource(
        MySQLSettings(), "app", {"data": SCHEMA}, {"data": columns},
        server=ServerInfo("mariadb", "10.11", 1, True), start=Position("mariadb", "0-1-9"), server_id=77,
    )
    out: list[binlog.Chunk] = []
    src._emit = out.append
    return src, out


def _upd(i: int, v0: int, v1: int, name: str = "n") -> dict:
    return {"before_values": {"id": i, "v": v0, "name": name, "tags": {"a"}},
            "after_values": {"id": i, "v": v1, "name": name, "tags": {"a", "z"}}}


def _events(out: list[binlog.Chunk]) -> list[ChangeEvent]:
    return [e for c in out for e in c.events]


def test_rows_to_events_versions_and_position() -> None:
    src, out = _source()
    src._handle(MariadbGtidEvent(10))
    src._handle(WriteRowsEvent([{"values": {"id": 1, "v": 1, "name": "a", "tags": None}, "none_sources": {"tags": "empty set"}},
                                {"values": {"id": 2, "v": None, "name": None, "tags": None}, "none_sources": {"tags": "null"}}]))
    src._handle(UpdateRowsEvent([_upd(1, 1, 2)]))
    src._handle(XidEvent(500))
    src._handle(MariadbGtidEvent(11))
    src._handle(DeleteRowsEvent([{"values": {"id": 2, "v": None, "name": None, "tags": None}}]))
    src._handle(XidEvent(600))
    evs = _events(out)
    assert [e.op for e in evs] == [Op.INSERT, Op.INSERT, Op.UPDATE, Op.DELETE]
    assert [e.version for e in evs] == [10 << 20, (10 << 20) | 1, (10 << 20) | 2, 11 << 20]
    assert evs[0].row == {"id": 1, "v": 1, "name": "a", "tags": ""}          # empty SET is "", not NULL
    assert evs[1].row["tags"] is None
    assert evs[2].row["tags"] == "z,a"                                       # definition order
    assert all(e.source is Source.BINLOG for e in evs)
    assert out[-1].position == Position("mariadb", "0-1-11", None, 600)
    assert src.committed.gtid == "0-1-11"


def test_commits_held_under_the_quiet_hook_go_out_with_their_position() -> None:
    """With the quiet hook on, back-to-back commits are held and emitted together with the last
    one's position (here: before a reconnect, which re-reads from src.committed, so nothing read
    up to it may stay behind); the open transaction's events are not part of that chunk."""
    src, out = _source()
    src._coalesce = True
    src._last_emit = time.monotonic() + 60   # well inside COALESCE_S of the "previous emit"
    for seq, i in ((10, 1), (11, 2)):
        src._handle(MariadbGtidEvent(seq))
        src._handle(UpdateRowsEvent([_upd(i, 1, 2)]))
        src._handle(XidEvent(100 * seq))
    src._handle(MariadbGtidEvent(12))
    src._handle(UpdateRowsEvent([_upd(3, 1, 2)]))
    assert out == []
    src._emit_held()
    assert len(out) == 1 and [e.pk for e in out[0].events] == [(("id", 1),), (("id", 2),)]
    assert out[0].position == src.committed == Position("mariadb", "0-1-11", None, 1100) and out[0].rows == 2
    assert [e.pk for e in src._pending] == [(("id", 3),)] and src._pending_rows == 1
    src._handle(XidEvent(1200))
    src._flush(heartbeat=True)   # what the quiet hook does when the server has nothing more to send
    assert [e.pk for e in out[1].events] == [(("id", 3),)] and out[1].position == Position("mariadb", "0-1-12", None, 1200)


def test_update_of_unchosen_columns_emits_nothing_and_key_change_moves() -> None:
    src, out = _source(columns=("v",))
    src._handle(MariadbGtidEvent(10))
    src._handle(UpdateRowsEvent([{"before_values": {"id": 1, "v": 1, "name": "a", "tags": None},
                                  "after_values": {"id": 1, "v": 1, "name": "b", "tags": None}}]))
    src._handle(UpdateRowsEvent([{"before_values": {"id": 1, "v": 1, "name": "a", "tags": None},
                                  "after_values": {"id": 5, "v": 1, "name": "a", "tags": None}}]))
    src._handle(XidEvent())
    evs = _events(out)
    assert [(e.op, e.pk, e.row) for e in evs] == [
        (Op.DELETE, (("id", 1),), None), (Op.UPDATE, (("id", 5),), {"id": 5, "v": 1})]
    assert evs[0].version == evs[1].version == 10 << 20   # the skipped update took no index


def test_huge_transaction_collapses_past_the_index_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binlog, "ROW_MASK", 3)   # 3 indexes per transaction instead of 2**20 - 1
    src, out = _source()
    src._handle(MariadbGtidEvent(10))
    keys = [1, 2, 1, 3, 1, 2, 3, 1]
    src._handle(UpdateRowsEvent([_upd(k, n, n + 1) for n, k in enumerate(keys)]))
    assert not out or all(not c.events or c.position is None for c in out)
    src._handle(XidEvent())
    src._handle(MariadbGtidEvent(11))
    src._handle(UpdateRowsEvent([_upd(1, 100, 101)]))
    src._handle(XidEvent())
    evs = _events(out)
    base = 10 << 20
    assert [(e.pk[0][1], e.version) for e in evs[:3]] == [(1, base), (2, base | 1), (1, base | 2)]
    collapsed = {e.pk[0][1]: e for e in evs[3:-1]}
    assert len(evs[3:-1]) == 3                                # one per key past the range
    assert {k: (e.version, e.row["v"]) for k, e in collapsed.items()} == {
        1: (base | 3, 8), 2: (base | 3, 6), 3: (base | 3, 7)}  # last change of each key wins
    assert evs[-1].version == 11 << 20 > base | 3              # the next transaction is newer still


def test_gearman_unique_ids_differ_per_change() -> None:
    st = BinlogSettings(mysql=MySQLSettings(database="app"), database="app", tables=("data",),
                        redis=RedisSettings(url="redis://127.0.0.1:1/0"), sink="gearman")
    svc = BinlogService(st, redis=object())
    pk = (("id", 1),)
    a = ChangeEvent("data", Op.DELETE, pk, None, 5 << 20, Source.BINLOG)
    b = ChangeEvent("data", Op.UPDATE, (("id", 2),), {"id": 2}, 5 << 20, Source.BINLOG)
    c1 = ChangeEvent("data", Op.UPDATE, pk, {"id": 1}, (5 << 20) | 0xFFFFF, Source.BINLOG)
    c2 = ChangeEvent("data", Op.UPDATE, (("id", 3),), {"id": 3}, (5 << 20) | 0xFFFFF, Source.BINLOG)
    ids = [svc.unique(e) for e in (a, b, c1, c2)]
    assert len(set(ids)) == 4 and all(len(u) <= 64 for u in ids)
    assert svc.unique(a) == svc.unique(ChangeEvent("data", Op.DELETE, pk, None, 5 << 20, Source.BINLOG))


def test_binlog_column_kinds() -> None:
    from pymysqlreplication.constants import FIELD_TYPE as F

    assert decoders.binlog_column(BCol("b", F.BLOB, "binary")).kind == "binary"
    assert decoders.binlog_column(BCol("t", F.BLOB, "utf8")).kind == "text"
    assert decoders.binlog_column(BCol("c", F.STRING, "binary")).kind == "binary"
    assert decoders.binlog_column(BCol("d", F.NEWDECIMAL)).kind == "decimal"
    u = BCol("u", F.LONGLONG)
    u.unsigned = True
    assert decoders.binlog_column(u).kind == "uint64"
    conv = decoders.column_converter(decoders.binlog_column(BCol("d", F.NEWDECIMAL)), BCol("d", F.NEWDECIMAL), "mariadb")
    assert conv(Decimal("1.2500")) == "1.2500"
    bit = BCol("bt", F.BIT)
    assert decoders.column_converter(decoders.binlog_column(bit), bit, "mariadb")("101") == 5
    js = BCol("j", F.JSON, "utf8")
    assert decoders.column_converter(decoders.binlog_column(js), js, "mysql")({"a": [1, 2.5]}) == '{"a": [1, 2.5]}'


def test_cli_settings() -> None:
    from workers.sync_binlog import build_parser, settings_from_args

    def parse(*argv: str, env: dict | None = None):
        return settings_from_args(build_parser().parse_args(list(argv)), env or {})

    s = parse("--table", "a,b", "--mysql-url", "mysql://u@h:1/app", "--columns", "a.x,b.y,a.z")
    assert s.tables == ("a", "b") and s.columns == {"a": ("x", "z"), "b": ("y",)} and s.database == "app"
    assert parse("--table", "a", "--database", "other", env={"GEARSYNC_MYSQL_URL": "mysql://u@h/app"}).database == "other"
    for argv, msg in [
        (("--table", "a", "--mysql-url", "mysql://u@h:1/"), "--database"),
        (("--table", "a", "--mysql-url", "mysql://u@h/app", "--columns", "b.x"), "names table 'b'"),
        (("--table", "a,b", "--mysql-url", "mysql://u@h/app", "--function", "f"), "--function"),
        (("--table", "a", "--mysql-url", "mysql://u@h/app", "--redis-url", "redis://:pw@h:1/0"), "password"),
        (("--table", "a", "--mysql-url", "mysql://u@h/app", "--batch", "0"), "--batch"),
        (("--table", "a", "--mysql-url", "mysql://u@h/app", "--server-id", "0"), "--server-id"),
        (("--table", "a", "--mysql-url", "mysql://u@h/app", "--key-template", "{nope}"), "placeholder"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse(*argv)
