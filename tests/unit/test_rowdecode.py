"""The C row decoder (sync.capture.binlog._rowdecode) byte for byte against mysql-replication + the
converters of sync.capture.binlog.decoders, on rows events built here: hypothesis-made table layouts
and bodies (valid and malformed); the refusals (DecodeError, never a crash, never a wrong value);
the choice of decoder (GEARSYNC_BINLOG_DECODER); and the reader's one-line error naming the table
and the binlog position. tests/integration/test_rowdecode.py does the same through a real MariaDB."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymysql.protocol import MysqlPacket
from pymysqlreplication.column import Column as BinlogColumn
from pymysqlreplication.constants import FIELD_TYPE as F
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from sync.capture.binlog import decoders
from sync.capture.binlog.preflight import ServerInfo
from sync.capture.binlog.reader import BinlogSource
from sync.errors import ConfigError, SourceError
from sync.mysql import MySQLSettings
from sync.position import Position
from sync.rows.schema import Column, TableSchema

pytestmark = pytest.mark.skipif(decoders.decoder_mode() != "c", reason="the C row decoder is not built")

HEADER = 20   # what BinLogPacketWrapper has read of the packet before the event body


def bcol(name: str, type_: int, **kw: Any) -> Any:
    base = dict(name=name, type=type_, unsigned=False, character_set_name=None, enum_values=None, set_values=None,
                is_primary=False)
    return BinlogColumn(**{**base, **kw})


def rows_event(cls: type, cols: list[Any], body: bytes, bm1: bytes, bm2: bytes | None = None) -> Any:
    """A mysql-replication rows event positioned at its first row, as the stream hands it over."""
    decoders.install_decoders()
    # No checksum after the body: mysql-replication reads a truncated last row on into those 4 bytes
    # (the C decoder stops at the end of the event), so the two agree only without them.
    pkt = MysqlPacket(b"\0" * HEADER + body, "utf8")
    pkt._position = HEADER
    wrapper = BinLogPacketWrapper.__new__(BinLogPacketWrapper)
    wrapper.__dict__.update({"read_bytes": 0, "_BinLogPacketWrapper__data_buffer": b"", "packet": pkt, "log_pos": 4711})
    ev = cls.__new__(cls)
    ev.__dict__.update({
        "packet": wrapper, "event_size": len(body), "complete": True, "table_id": 1, "schema": "app", "table": "t",
        "table_map": {1: type("T", (), {"columns": cols})()}, "columns": cols, "event_type": 30,
        "_ignore_decode_errors": False, "_ctl_connection": None, "columns_present_bitmap": bm1,
        "_RowsEvent__rows": None, "_RowsEvent__none_sources": {}, "_RowsEvent__use_column_name_cache": False,
        "_RowsEvent__enable_logging": False,
    })
    if bm2 is not None:
        ev.columns_present_bitmap2 = bm2
    return ev


def canonical(plan: decoders.RowPlan, rows: list[dict[str, Any]]) -> list[Any]:
    out: list[Any] = []
    for r in rows:
        if "values" in r:
            out.append(plan.row(r["values"], r.get("none_sources")))
        else:
            out.append((plan.row(r["before_values"], r.get("before_none_sources")),
                        plan.row(r["after_values"], r.get("after_none_sources"))))
    return out


def both(cls: type, cols: list[Any], body: bytes, bm1: bytes, bm2: bytes | None = None,
         wanted: frozenset[str] | None = None, flavor: str = "mariadb") -> tuple[Any, Any]:
    """(C result, Python result): the canonical rows, or the exception."""
    results: list[Any] = []
    for mode in ("c", "python"):
        plan = decoders.RowPlan(cols, wanted, (cols[0].name,), flavor, mode)
        assert (plan.decoder is not None) == (mode == "c")
        try:
            results.append(canonical(plan, plan.rows(rows_event(cls, cols, body, bm1, bm2))))
        except Exception as exc:  # the Python path raises what mysql-replication raises
            results.append(exc)
    return results[0], results[1]


# -- hypothesis: table layouts and bodies ------------------------------------------------------------

def _column(i: int) -> st.SearchStrategy[Any]:
    n = f"c{i}"
    charsets = st.sampled_from(["utf8mb4", "latin1", "binary", "ascii", "ucs2", "utf16"])
    return st.one_of(
        st.builds(lambda t, u: bcol(n, t, unsigned=u), st.sampled_from([F.TINY, F.SHORT, F.INT24, F.LONG, F.LONGLONG]),
                  st.booleans()),
        st.sampled_from([bcol(n, t) for t in (F.YEAR, F.FLOAT, F.DOUBLE, F.DATE, F.DATETIME, F.TIMESTAMP, F.TIME)]),
        st.builds(lambda t, fsp: bcol(n, t, fsp=fsp), st.sampled_from([F.DATETIME2, F.TIMESTAMP2, F.TIME2]),
                  st.integers(0, 6)),
        st.integers(1, 65).flatmap(lambda p: st.builds(lambda d: bcol(n, F.NEWDECIMAL, precision=p, decimals=d),
                                                          st.integers(0, min(p, 30)))),
        st.integers(1, 64).map(lambda bits: bcol(n, F.BIT, bits=bits, bytes=(bits + 7) // 8)),
        st.builds(lambda k, s: bcol(n, F.ENUM, size=s, enum_values=[""] + ["a", "b", "ç"][:k], character_set_name="utf8mb4"),
                  st.integers(0, 3), st.sampled_from([1, 2])),
        st.builds(lambda k, s: bcol(n, F.SET, size=s, set_values=["x", "y", "z", "ü"][:k], character_set_name="utf8mb4"),
                  st.integers(0, 4), st.sampled_from([1, 2, 8])),
        st.builds(lambda t, cs, m: bcol(n, t, character_set_name=cs, max_length=m),
                  st.sampled_from([F.VARCHAR, F.STRING]), charsets, st.sampled_from([4, 255, 300])),
        st.builds(lambda cs, ls: bcol(n, F.BLOB, character_set_name=cs, length_size=ls), charsets, st.integers(1, 4)),
        st.integers(1, 4).map(lambda ls: bcol(n, F.GEOMETRY, length_size=ls)),
    )


layouts = st.integers(1, 8).flatmap(lambda k: st.tuples(*(_column(i) for i in range(k)))).map(list)


def _bitmap(k: int) -> st.SearchStrategy[bytes]:
    # at least one column present: a row of none reads no bytes, and mysql-replication loops forever on it
    return st.integers(1, 2 ** k - 1).map(lambda v: v.to_bytes((k + 7) // 8, "little"))


# what the C decoder refuses and the Python path turns into some value
STRICTER = ("DECIMAL digit group out of range", "TIMESTAMP fraction past")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cols=layouts, kind=st.sampled_from([WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent]),
       body=st.binary(min_size=0, max_size=200), wanted_all=st.booleans())
def test_generated_events_c_equals_python(data: st.DataObject, cols: list[Any], kind: type, body: bytes,
                                          wanted_all: bool) -> None:
    k = len(cols)
    bm1 = data.draw(_bitmap(k))
    bm2 = data.draw(_bitmap(k)) if kind is UpdateRowsEvent else None
    wanted = None if wanted_all else frozenset(c.name for c in cols[: max(1, k // 2)])
    c_out, py_out = both(kind, cols, body, bm1, bm2, wanted)
    if isinstance(c_out, Exception):
        assert isinstance(c_out, ValueError) and type(c_out).__name__ == "DecodeError", repr(c_out)
        if not isinstance(py_out, Exception):
            assert any(s in str(c_out) for s in STRICTER), (c_out, py_out)
    else:
        assert not isinstance(py_out, Exception), (c_out, py_out)
        assert c_out == py_out


def test_valid_rows_of_every_column_kind_decode_as_python_does() -> None:
    cols = [bcol("id", F.LONG, unsigned=True), bcol("d", F.NEWDECIMAL, precision=10, decimals=4),
            bcol("t", F.TIME2, fsp=3), bcol("s", F.SET, size=1, set_values=["x", "y"]),
            bcol("bn", F.STRING, character_set_name="binary", max_length=4),
            bcol("l", F.VARCHAR, character_set_name="latin1", max_length=20)]
    dec = bytes([0x80, 0x00, 0x0C, 0x04, 0xD2])                        # 12.1234: 6 digits in 3 bytes, 4 in 2
    neg_time = (0x800000 - 1).to_bytes(3, "big") + (0x10000 - 10).to_bytes(2, "big")   # -00:00:00.001
    row = bytes([0b100000]) + struct.pack("<I", 7) + dec + neg_time + b"\x00" + b"\x02\x00\x01"   # l: NULL
    c_out, py_out = both(WriteRowsEvent, cols, row, b"\x3f")
    assert c_out == py_out == [{"id": 7, "d": "12.1234", "t": "-00:00:00.001", "s": "", "bn": "\x00\x01\x00\x00", "l": None}]


# -- refusals --------------------------------------------------------------------------------------

INT_COLS = [bcol("id", F.LONG), bcol("v", F.VARCHAR, character_set_name="utf8mb4", max_length=20)]
GOOD = bytes([0]) + struct.pack("<i", 5) + bytes([3]) + b"abc"


def test_every_truncation_is_a_decode_error_naming_the_column() -> None:
    plan = decoders.RowPlan(INT_COLS, None, ("id",), "mariadb", "c")
    assert canonical(plan, plan.rows(rows_event(WriteRowsEvent, INT_COLS, GOOD * 2, b"\x03"))) == [{"id": 5, "v": "abc"}] * 2
    for cut in range(1, len(GOOD)):
        with pytest.raises(ValueError, match=r"column 'id'|column 'v'|NULL bitmap") as err:
            plan.rows(rows_event(WriteRowsEvent, INT_COLS, GOOD + GOOD[:cut], b"\x03"))
        assert "ends early" in str(err.value)


@pytest.mark.parametrize(("cols", "body", "message"), [
    ([bcol("e", F.ENUM, size=1, enum_values=["", "a"])], b"\x00\x02", "ENUM index past"),
    ([bcol("d", F.NEWDECIMAL, precision=9, decimals=0)], b"\x00" + b"\xbb\x9a\xca\x00", "DECIMAL digit group"),
    ([bcol("ts", F.TIMESTAMP2, fsp=6)], b"\x00" + b"\x00\x00\x00\x01" + b"\x7f\xff\xff", "TIMESTAMP fraction"),
    ([bcol("v", F.VARCHAR, character_set_name="utf8mb4", max_length=9)], b"\x00\x02\xc3\x28", "utf-8"),
    ([bcol("b", F.BLOB, character_set_name="binary", length_size=4)], b"\x00\xff\xff\xff\x7f", "ends early"),
])
def test_malformed_values_refused(cols: list[Any], body: bytes, message: str) -> None:
    plan = decoders.RowPlan(cols, None, (cols[0].name,), "mariadb", "c")
    with pytest.raises(ValueError, match=message):
        plan.rows(rows_event(WriteRowsEvent, cols, body, b"\x01"))


def test_short_bitmap_and_row_of_no_columns_refused() -> None:
    plan = decoders.RowPlan(INT_COLS, None, ("id",), "mariadb", "c")
    with pytest.raises(ValueError, match="a row of no columns"):
        plan.rows(rows_event(WriteRowsEvent, INT_COLS, b"\x00\x00", b"\x00"))
    wide = INT_COLS + [bcol(f"x{i}", F.TINY) for i in range(8)]
    plan = decoders.RowPlan(wide, None, ("id",), "mariadb", "c")
    with pytest.raises(ValueError, match="bitmap of 1 bytes for 10 columns"):
        plan.rows(rows_event(WriteRowsEvent, wide, GOOD, b"\x03"))


def test_spec_checked_and_unsupported_types_take_the_python_path() -> None:
    from sync.capture.binlog import _rowdecode

    with pytest.raises(ValueError, match="integer width"):
        _rowdecode.Decoder(((decoders.OP_INT, "a", 5, 0, None),), None)
    with pytest.raises(ValueError, match="fsp"):
        _rowdecode.Decoder(((decoders.OP_TIME2, "a", 7, 0, None),), None)
    # a string column without charset metadata: the whole table on the Python path; MySQL's binary JSON: C
    assert decoders.RowPlan([INT_COLS[0], bcol("v", F.VARCHAR, max_length=9)], None, ("id",), "mysql", "c").decoder is None
    assert decoders.RowPlan([INT_COLS[0], bcol("j", F.JSON, length_size=4)], None, ("id",), "mysql", "c").decoder is not None
    assert decoders.RowPlan(INT_COLS, None, ("id",), "mariadb", "c").decoder is not None


def test_decoder_choice_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(decoders.DECODER_ENV, "python")
    assert decoders.select_decoder() == "python"
    assert decoders.RowPlan(INT_COLS, None, ("id",), "mariadb").decoder is None
    monkeypatch.setenv(decoders.DECODER_ENV, "C")
    assert decoders.select_decoder() == "c"
    monkeypatch.setenv(decoders.DECODER_ENV, "fast")
    with pytest.raises(ConfigError, match=r"GEARSYNC_BINLOG_DECODER='fast': expected one of auto, c, python"):
        decoders.select_decoder()


def test_reader_stops_with_one_line_naming_table_and_position(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(decoders.DECODER_ENV, raising=False)
    schema = TableSchema("app", "t", (Column("id", "int", "int", False, None, None),), ("id",), "PRIMARY")
    src = BinlogSource(MySQLSettings(), "app", {"t": schema}, {"t": None},
                       server=ServerInfo("mariadb", "10.11", 1, True), start=Position("mariadb", "0-1-9", "binlog.000003"),
                       server_id=77)
    src._emit = lambda chunk: None
    ev = rows_event(WriteRowsEvent, INT_COLS, GOOD[:-1], b"\x03")
    with pytest.raises(SourceError) as err:
        src._handle(ev)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("table app.t: cannot decode the rows event ending at binlog position binlog.000003:4711: "
                          "column 'v': row data ends early")


def test_compressed_row_data_inflated_or_refused() -> None:
    """MariaDB's compressed rows events: 0x80 | n, the length in n big-endian bytes, zlib."""
    rows = GOOD * 3
    packed = bytes([0x82]) + len(rows).to_bytes(2, "big") + zlib.compress(rows)
    plan = decoders.RowPlan(INT_COLS, None, ("id",), "mariadb", "c")
    ev = rows_event(WriteRowsEvent, INT_COLS, packed, b"\x03")
    decoders.inflate_compressed_rows(ev)
    assert canonical(plan, plan.rows(ev)) == [{"id": 5, "v": "abc"}] * 3
    for bad, why in ((b"\x00" + packed[1:], "bad header byte 00"), (packed[:-2], "bytes inflated, the header says"),
                     (bytes([0x82, 0, 99]) + packed[3:], "bytes inflated, the header says 99")):
        with pytest.raises((ValueError, zlib.error), match=why):
            decoders.inflate_compressed_rows(rows_event(WriteRowsEvent, INT_COLS, bad, b"\x03"))


def test_without_the_extension_one_warning_and_the_python_path() -> None:
    """A build without the C decoder: sync-binlog decodes in Python, says so once; =c refuses."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['sync.capture.binlog._rowdecode'] = None\n"
            "from sync.logging import setup_logging; setup_logging('info', 'json')\n"
            "from sync.capture.binlog import decoders\n"
            "print(decoders.select_decoder(), decoders.select_decoder(), flush=True)\n"
            "import os; os.environ['GEARSYNC_BINLOG_DECODER'] = 'c'\n"
            "decoders.select_decoder()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in __import__("os").environ.items() if k != decoders.DECODER_ENV})
    out = r.stdout + r.stderr
    assert "python python" in out
    assert out.count("binlog_c_decoder_unavailable") == 1
    assert r.returncode != 0 and "GEARSYNC_BINLOG_DECODER=c: the C row decoder is not built" in out
