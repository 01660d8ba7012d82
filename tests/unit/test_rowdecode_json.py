"""MySQL's binary JSON (a JSON column of the MySQL flavor) decoded by the C row decoder
(sync/capture/binlog/_rowdecode_json.c) against mysql-replication's parser + decoders.json_text, on
documents written by the small encoder below (our own, from the format's description in MySQL's
json_binary.h): hypothesis-made documents of every value kind, small and large containers; a few
exact texts; malformed documents are DecodeErrors naming the column, never a crash."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymysqlreplication.constants import FIELD_TYPE as F
from pymysqlreplication.row_event import UpdateRowsEvent, WriteRowsEvent

from sync.capture.binlog import decoders
from tests.unit.test_rowdecode import bcol, both, canonical, rows_event

pytestmark = pytest.mark.skipif(decoders.decoder_mode() != "c", reason="the C row decoder is not built")

# -- the encoder ------------------------------------------------------------------------------------

SMALL_OBJECT, LARGE_OBJECT, SMALL_ARRAY, LARGE_ARRAY, LITERAL = 0, 1, 2, 3, 4
INT16, UINT16, INT32, UINT32, INT64, UINT64, DOUBLE, STRING, OPAQUE = 5, 6, 7, 8, 9, 10, 11, 12, 15


class Unsigned(int):
    """An integer stored as uint16/uint32/uint64 (MySQL's unsigned JSON integers)."""


class Opaque:
    """An opaque value: a MySQL field type and its bytes."""

    def __init__(self, field_type: int, data: bytes) -> None:
        self.field_type, self.data = field_type, data


DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def decimal_bytes(precision: int, scale: int, digits: str, negative: bool) -> bytes:
    """MySQL's binary DECIMAL(precision, scale) of the digits (precision of them, scale after the point)."""
    intg, frac = digits[: precision - scale], digits[precision - scale:]
    groups = []
    lead = len(intg) % 9
    if lead:
        groups.append((intg[:lead], DIG2BYTES[lead]))
    groups += [(intg[i:i + 9], 4) for i in range(lead, len(intg), 9)]
    groups += [(frac[i:i + 9], 4) for i in range(0, len(frac) - len(frac) % 9, 9)]
    if len(frac) % 9:
        groups.append((frac[len(frac) - len(frac) % 9:], DIG2BYTES[len(frac) % 9]))
    out = bytearray(b"".join(int(g).to_bytes(n, "big") for g, n in groups))
    out[0] ^= 0x80
    return bytes(b ^ 0xFF for b in out) if negative else bytes(out)


def packed_datetime(y: int, mo: int, d: int, h: int, mi: int, s: int, us: int) -> bytes:
    v = (((((y * 13 + mo) << 5) | d) << 17 | (h << 12 | mi << 6 | s)) << 24) + us
    return v.to_bytes(8, "little", signed=True)


def packed_time(negative: bool, h: int, mi: int, s: int, us: int) -> bytes:
    v = ((h << 12 | mi << 6 | s) << 24) + us
    return (-v if negative else v).to_bytes(8, "little", signed=True)


def varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _int(v: int) -> tuple[int, bytes]:
    if isinstance(v, Unsigned):
        for t, fmt, top in ((UINT16, "<H", 2 ** 16), (UINT32, "<I", 2 ** 32), (UINT64, "<Q", 2 ** 64)):
            if v < top:
                return t, struct.pack(fmt, v)
    for t, fmt, top in ((INT16, "<h", 2 ** 15), (INT32, "<i", 2 ** 31), (INT64, "<q", 2 ** 63)):
        if -top <= v < top:
            return t, struct.pack(fmt, v)
    return UINT64, struct.pack("<Q", v)


def encode(v: Any, large: bool = False) -> tuple[int, bytes]:
    """(type byte, value bytes) of a Python value; containers large when asked or when they need it."""
    if v is None or isinstance(v, bool):
        return LITERAL, bytes([0 if v is None else 1 if v else 2])
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, float):
        return DOUBLE, struct.pack("<d", v)
    if isinstance(v, (str, bytes)):
        b = v.encode() if isinstance(v, str) else v
        return STRING, varlen(len(b)) + b
    if isinstance(v, Opaque):
        return OPAQUE, bytes([v.field_type]) + varlen(len(v.data)) + v.data
    if isinstance(v, (dict, list)):
        body = None if large else _container(v, False)
        wide = body is None                      # asked for, or the small offsets cannot reach
        body = body if body is not None else _container(v, True)
        assert body is not None
        return (SMALL_OBJECT if isinstance(v, dict) else SMALL_ARRAY) + int(wide), body
    raise TypeError(v)


def _container(v: dict[str, Any] | list[Any], large: bool) -> bytes | None:
    osz = 4 if large else 2
    # an object's keys sorted as MySQL writes them: by length, then bytes
    items = sorted(v.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode())) if isinstance(v, dict) \
        else [(None, x) for x in v]
    keys = [k.encode() for k, _ in items if k is not None]
    header = 2 * osz + len(items) * ((osz + 2 if isinstance(v, dict) else 0) + 1 + osz)
    key_entries, tail, off = b"", b"", header
    for k in keys:
        key_entries += off.to_bytes(osz, "little") + len(k).to_bytes(2, "little")
        tail += k
        off += len(k)
    value_entries = b""
    for _, x in items:
        t, data = encode(x, large)
        if t in (LITERAL, INT16, UINT16) or (large and t in (INT32, UINT32)):
            value_entries += bytes([t]) + data.ljust(osz, b"\0")
            continue
        if off >= 2 ** (8 * osz):
            return None
        value_entries += bytes([t]) + off.to_bytes(osz, "little")
        tail += data
        off += len(data)
    if off >= 2 ** (8 * osz):
        return None
    return len(items).to_bytes(osz, "little") + off.to_bytes(osz, "little") + key_entries + value_entries + tail


def document(v: Any, large: bool = False) -> bytes:
    t, data = encode(v, large)
    return bytes([t]) + data


JCOLS = [bcol("id", F.LONG), bcol("j", F.JSON, length_size=4)]


def row(doc: bytes | None, ident: int = 1) -> bytes:
    if doc is None:
        return bytes([0b10]) + struct.pack("<i", ident)
    return bytes([0]) + struct.pack("<i", ident) + struct.pack("<I", len(doc)) + doc


def decoded(body: bytes, mode: str = "c") -> list[Any]:
    plan = decoders.RowPlan(JCOLS, None, ("id",), "mysql", mode)
    return canonical(plan, plan.rows(rows_event(WriteRowsEvent, JCOLS, body, b"\x03")))


# -- documents --------------------------------------------------------------------------------------

def st_decimal_type(negative: bool) -> int:
    return F.DECIMAL if negative else F.NEWDECIMAL   # both type codes mean DECIMAL


scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-2 ** 63, 2 ** 64 - 1),
    st.sampled_from([-2 ** 63, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, -32768, 32767, 65535, -2 ** 31, 2 ** 32 - 1]),
    st.integers(0, 2 ** 64 - 1).map(Unsigned),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=12),                       # not UTF-8: decoded with errors="replace"
    st.sampled_from(["", "\"\\\b\f\n\r\t\x00\x1f\x7f", "ünï\u2028çødé 🙂", "a" * 300]),
    st.builds(Opaque, st.sampled_from([F.VARCHAR, F.BLOB, F.STRING, F.GEOMETRY]), st.binary(max_size=10)),
    st.just(Opaque(F.DATETIME, bytes(8))),        # the zero DATETIME
    st.integers(1, 65).flatmap(lambda p: st.builds(
        lambda s, digits, neg: Opaque(st_decimal_type(neg), bytes([p, s]) + decimal_bytes(p, s, digits, neg)),
        st.integers(0, min(p, 30)), st.text("0123456789", min_size=p, max_size=p), st.booleans())),
    st.builds(lambda t, *f: Opaque(t, packed_datetime(*f)), st.sampled_from([F.DATE, F.DATETIME, F.DATETIME2,
                                                                              F.TIMESTAMP, F.TIMESTAMP2]),
              st.integers(0, 9999), st.integers(0, 12), st.integers(0, 31), st.integers(0, 23), st.integers(0, 59),
              st.integers(0, 59), st.integers(0, 999999)),
    st.builds(lambda t, *f: Opaque(t, packed_time(*f)), st.sampled_from([F.TIME, F.TIME2]), st.booleans(),
              st.integers(0, 838), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999999)),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=6)),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(st.tuples(documents, st.booleans()), min_size=1, max_size=3), nulls=st.booleans())
def test_generated_documents_c_equals_python(docs: list[tuple[Any, bool]], nulls: bool) -> None:
    body = b"".join(row(document(v, large), i) for i, (v, large) in enumerate(docs))
    if nulls:
        body += row(None, 99)
    c_out, py_out = both(WriteRowsEvent, JCOLS, body, b"\x03", flavor="mysql")
    assert not isinstance(c_out, Exception), c_out
    assert c_out == py_out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(v=documents, wrap=st.sampled_from(["object", "array"]))
def test_large_containers_past_64_kib_c_equals_python(v: Any, wrap: str) -> None:
    pad = "p" * 70000
    doc = {"pad": pad, "v": v, "after": [1, "x"]} if wrap == "object" else [pad, v, {"after": 1}]
    raw = document(doc)
    assert raw[0] in (LARGE_OBJECT, LARGE_ARRAY)
    before, after = row(document([v]), 1), row(raw, 2)
    c_out, py_out = both(UpdateRowsEvent, JCOLS, before + after, b"\x03", b"\x03", flavor="mysql")
    assert not isinstance(c_out, Exception), c_out
    assert c_out == py_out
    assert c_out[0][1]["j"].startswith('{"v": ' if wrap == "object" else '["ppp')
    assert '"pad": "ppp' in c_out[0][1]["j"] or wrap == "array"


@pytest.mark.parametrize(("value", "large", "text"), [
    ({"a": [1, 2.5, "x", None, True, False], "b": {}, "c": []}, False,
     '{"a": [1, 2.5, "x", null, true, false], "b": {}, "c": []}'),
    ({"a": [1, 2.5, "x", None, True, False], "b": {}, "c": []}, True,
     '{"a": [1, 2.5, "x", null, true, false], "b": {}, "c": []}'),
    ([-2 ** 63, 2 ** 64 - 1, Unsigned(7), 1e100, -0.0, math.inf, 0.1], False,
     "[-9223372036854775808, 18446744073709551615, 7, 1e+100, -0.0, Infinity, 0.1]"),
    (["tab\there \"q\" \\ \x01", "ü🙂", b"\xff\xfeok"], False, '["tab\\there \\"q\\" \\\\ \\u0001", "ü🙂", "\ufffd\ufffdok"]'),
    ([Opaque(F.VARCHAR, b"op\xffaque"), Opaque(F.DATETIME2, bytes(8))], False,
     '["opaque", "0000-00-00 00:00:00.000000"]'),
    ({"d": Opaque(F.NEWDECIMAL, bytes([5, 2]) + decimal_bytes(5, 2, "00150", False)),
      "n": Opaque(F.NEWDECIMAL, bytes([12, 4]) + decimal_bytes(12, 4, "000012345678", True)),
      "at": Opaque(F.DATETIME, packed_datetime(2024, 5, 1, 13, 2, 3, 45)),
      "day": Opaque(F.DATE, packed_datetime(2024, 5, 1, 0, 0, 0, 0)),
      "t": Opaque(F.TIME, packed_time(True, 101, 2, 3, 500000))}, False,
     '{"d": 1.50, "n": -1234.5678, "t": "-101:02:03.500000", "at": "2024-05-01 13:02:03.000045", "day": "2024-05-01"}'),
    (Opaque(F.NEWDECIMAL, bytes([5, 2]) + decimal_bytes(5, 2, "00150", False)), False, "1.50"),
    (Opaque(F.DATETIME2, packed_datetime(1999, 12, 31, 23, 59, 59, 0)), False, "1999-12-31 23:59:59.000000"),
    (42, False, "42"), (Unsigned(2 ** 64 - 1), False, "18446744073709551615"), (2.5, False, "2.5"),
    (True, False, "true"), (False, False, "false"),
    ("top string", False, "top string"),               # the Python path: the string itself, unquoted
    (b"\xff\x00", False, {"$b64": "/wA="}),
    (Opaque(F.VARCHAR, b"raw"), False, "raw"), (Opaque(F.DATE, bytes(8)), False, "0000-00-00"),
    (None, False, None),                                # JSON null at the top: the Python path gives None
])
def test_known_documents(value: Any, large: bool, text: Any) -> None:
    body = row(document(value, large))
    c_out, py_out = both(WriteRowsEvent, JCOLS, body, b"\x03", flavor="mysql")
    assert c_out == py_out == [{"id": 1, "j": text}]


def test_unsorted_keys_decoded_repeated_keys_refused() -> None:
    def obj(*keys: bytes) -> bytes:
        header = 4 + len(keys) * 7
        entries, off = b"", header
        for k in keys:
            entries += off.to_bytes(2, "little") + len(k).to_bytes(2, "little")
            off += len(k)
        values = b"".join(bytes([5]) + i.to_bytes(2, "little") for i in range(len(keys)))
        return b"\x00" + len(keys).to_bytes(2, "little") + off.to_bytes(2, "little") + entries + values + b"".join(keys)

    c_out, py_out = both(WriteRowsEvent, JCOLS, row(obj(b"b", b"a", b"cc")), b"\x03", flavor="mysql")
    assert c_out == py_out == [{"id": 1, "j": '{"b": 0, "a": 1, "cc": 2}'}]
    for keys in ((b"a", b"a"), (b"b", b"a", b"b")):
        with pytest.raises(ValueError, match=r"column 'j': malformed JSON document \(object key repeated\)"):
            decoded(row(obj(*keys)))


def test_empty_document_and_sql_null_are_none() -> None:
    body = bytes([0]) + struct.pack("<i", 1) + struct.pack("<I", 0) + row(None, 2)
    assert decoded(body) == decoded(body, "python") == [{"id": 1, "j": None}, {"id": 2, "j": None}]


def test_nesting_limit_is_100_containers() -> None:
    def nested(depth: int) -> Any:
        v: Any = []
        for _ in range(depth - 1):
            v = [v]
        return v

    assert decoded(row(document(nested(100))))[0]["j"] == "[" * 100 + "]" * 100
    with pytest.raises(ValueError, match=r"column 'j': malformed JSON document \(nested deeper than 100\)"):
        decoded(row(document(nested(101))))


def _obj_doc() -> bytes:
    return document({"key": [1, "two", 3.0], "k2": "v"})


@pytest.mark.parametrize(("mutate", "why"), [
    (lambda d: d[:1] + b"\x09\x00" + d[3:], "container entries past its size"),       # count 9
    (lambda d: d[:3] + b"\xff\x7f" + d[5:], "container size past the end"),
    (lambda d: d[:5] + b"\xf0\x00" + d[7:], "object key past the container's size"),  # first key offset 240
    (lambda d: b"\x0e" + d[1:], "unknown value type"),
    (lambda d: b"\x04\x07", "unknown literal"),
    (lambda d: b"\x0c\x05ab", "string past the end"),
    (lambda d: b"\x0c\x80\x80\x80\x80\x80\x01", "string size unterminated"),
    (lambda d: b"\x0f" + bytes([F.NEWDECIMAL]) + b"\x02\x00\x00", "opaque DECIMAL without a valid precision"),
    (lambda d: b"\x0f" + bytes([F.NEWDECIMAL]) + b"\x03\x04\x02\x80", "DECIMAL data ends early"),
    (lambda d: b"\x0f" + bytes([F.DATETIME]) + b"\x04" + bytes(4), "opaque date/time shorter than 8 bytes"),
    (lambda d: b"\x02" + (1).to_bytes(2, "little") + (7).to_bytes(2, "little") + b"\x0c\xff\x00", "value offset past"),
    # one member: key entry (offset 11, length 1), inlined null, the key byte 0xff
    (lambda d: bytes.fromhex("00 0100 0c00 0b00 0100 040000 ff"), "object key not UTF-8"),
])
def test_malformed_documents_refused_naming_the_column(mutate: Any, why: str) -> None:
    with pytest.raises(ValueError, match=rf"column 'j': malformed JSON document \({why}"):
        decoded(row(mutate(_obj_doc())))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v=documents, large=st.booleans(), flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                                                         min_size=1, max_size=4), cut=st.integers(0, 10 ** 6))
def test_corrupt_documents_decode_error_or_value_never_a_crash(v: Any, large: bool, flips: list[tuple[int, int]],
                                                                cut: int) -> None:
    doc = bytearray(document(v, large))
    for at, byte in flips:
        doc[at % len(doc)] = byte
    doc = doc[: max(1, cut % (len(doc) + 1))]
    try:
        out = decoded(row(bytes(doc)))
    except ValueError as exc:
        assert type(exc).__name__ == "DecodeError" and "column 'j'" in str(exc), exc
    else:
        j = out[0]["j"]
        assert j is None or isinstance(j, str) or (isinstance(j, dict) and set(j) == {"$b64"})


def test_truncated_event_is_a_decode_error() -> None:
    body = row(_obj_doc())
    for cut in range(1, len(body)):
        with pytest.raises(ValueError, match=r"column 'id'|column 'j'|NULL bitmap"):
            decoded(body[:cut])


def test_column_not_synced_is_skipped_unparsed() -> None:
    plan = decoders.RowPlan(JCOLS, frozenset({"id"}), ("id",), "mysql", "c")
    body = row(b"\x0e garbage", 1) + row(_obj_doc(), 2)
    assert canonical(plan, plan.rows(rows_event(WriteRowsEvent, JCOLS, body, b"\x03"))) == [{"id": 1}, {"id": 2}]


def test_json_spec_checked_and_mysql_json_tables_stay_on_the_c_path() -> None:
    from sync.capture.binlog import _rowdecode

    with pytest.raises(ValueError, match="JSON length width"):
        _rowdecode.Decoder(((decoders.OP_JSON, "j", 5, 0, None),), None)
    assert decoders.native_spec(JCOLS[1], "j", None) == (decoders.OP_JSON, "j", 4, 0, None)
    assert decoders.native_spec(bcol("j", F.JSON, length_size=8), "j", None) is None
