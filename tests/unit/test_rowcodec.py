"""Row -> Redis value mapping and DB value normalization."""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.events import ChangeEvent, Op, Source, encode_change, parse_change
from sync.rows.rowcodec import decode_json, encode_hash, encode_json, normalize_row, normalize_value


def test_encode_json_sorted_compact_deterministic() -> None:
    a = encode_json({"b": 1, "a": "x", "c": None})
    b = encode_json({"c": None, "a": "x", "b": 1})
    assert a == b == b'{"a":"x","b":1,"c":null}'
    assert decode_json(a) == {"a": "x", "b": 1, "c": None}


def test_encode_json_keeps_b64_and_big_ints() -> None:
    row = {"id": 2**64 - 1, "bin": {"$b64": "//4="}}
    assert encode_json(row) == b'{"bin":{"$b64":"//4="},"id":18446744073709551615}'


def test_encode_hash() -> None:
    row = {"id": 5, "name": "h\u00e9", "price": 1.5, "big": 1e16, "note": None, "bin": {"$b64": "//4="}}
    assert encode_hash(row) == {
        b"id": b"5",
        b"name": "h\u00e9".encode(),
        b"price": b"1.5",
        b"big": b"1e+16",
        b"bin": b"\xff\xfe",
    }


def test_hash_and_json_print_floats_alike() -> None:
    for f in (0.1, 1e16, -2.5e-8, 123456789.125):
        assert encode_hash({"x": f})[b"x"] == orjson.dumps(f)
        assert encode_json({"x": f}) == b'{"x":' + orjson.dumps(f) + b"}"


def test_encode_hash_rejects_unknown() -> None:
    with pytest.raises(TypeError):
        encode_hash({"x": [1]})


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        (5, 5),
        (True, 1),
        (-(2**63), -(2**63)),
        (1.25, 1.25),
        ("x", "x"),
        (Decimal("12.50"), "12.50"),
        (Decimal("0.000"), "0.000"),
        (Decimal("-1E+2"), "-100"),
        (Decimal("1E-7"), "0.0000001"),
        (b"abc", "abc"),
        (bytearray(b"\xc3\xa9"), "\u00e9"),
        (b"\xff\x00", {"$b64": base64.b64encode(b"\xff\x00").decode()}),
        (memoryview(b"\x80"), {"$b64": "gA=="}),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02 03:04:05"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, 60), "2024-01-02 03:04:05.000060"),
        (dt.date(999, 1, 2), "0999-01-02"),
        (dt.time(1, 2, 3), "01:02:03"),
        (dt.time(1, 2, 3, 500000), "01:02:03.500000"),
        (dt.timedelta(hours=838, minutes=59, seconds=59), "838:59:59"),
        (dt.timedelta(hours=-1, minutes=-30), "-01:30:00"),
        (dt.timedelta(seconds=-1, microseconds=500000), "-00:00:00.500000"),
        (dt.timedelta(0), "00:00:00"),
    ],
)
def test_normalize_value(value: object, expected: object) -> None:
    out = normalize_value(value)
    assert out == expected and type(out) is type(expected)


def test_normalize_fsp() -> None:
    assert normalize_value(dt.datetime(2024, 1, 2, 3, 4, 5), fsp=3) == "2024-01-02 03:04:05.000"
    assert normalize_value(dt.datetime(2024, 1, 2, 3, 4, 5, 123456), fsp=2) == "2024-01-02 03:04:05.12"
    assert normalize_value(dt.datetime(2024, 1, 2, 3, 4, 5, 123456), fsp=0) == "2024-01-02 03:04:05"
    assert normalize_value(dt.timedelta(seconds=1), fsp=6) == "00:00:01.000000"
    with pytest.raises(ValueError):
        normalize_value(dt.time(1), fsp=7)
    assert normalize_row({"a": dt.time(1), "b": b"x"}, {"a": 1}) == {"a": "01:00:00.0", "b": "x"}


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), Decimal("NaN"), dt.datetime(2024, 1, 1, tzinfo=dt.UTC), [1], {"a": 1}]
)
def test_normalize_rejects(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        normalize_value(bad)


db_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.binary(max_size=16),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.timedeltas(min_value=dt.timedelta(hours=-838), max_value=dt.timedelta(hours=838)),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(st.characters(min_codepoint=32, blacklist_characters="\x7f", blacklist_categories=("Cs",)),
                               min_size=1, max_size=10),
                       db_values, max_size=6))
def test_normalized_rows_survive_the_wire(row: dict[str, object]) -> None:
    """A row normalized from DB values travels through wire format v1 unchanged, so snapshot,
    binlog and trigger paths produce the same Redis value."""
    norm = normalize_row(row)
    norm["id"] = 1
    ev = ChangeEvent("t", Op.UPDATE, (("id", 1),), norm, 1, Source.SNAPSHOT)
    back = parse_change(encode_change(ev))
    assert back.row == norm
    assert encode_json(back.row) == encode_json(norm)
    assert encode_hash(back.row) == encode_hash(norm)
