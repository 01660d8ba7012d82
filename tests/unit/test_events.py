"""ChangeEvent, wire format v1 parsing/encoding, classic payloads."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sync.events as events_module
from sync.errors import PayloadError, SyncError
from sync.events import (
    MAX_PAYLOAD_BYTES,
    ChangeEvent,
    ClassicSet,
    Op,
    Source,
    encode_change,
    parse_change,
    parse_classic,
)

GOOD = {
    "v": 1,
    "table": "data",
    "op": "update",
    "pk": {"id": 5},
    "row": {"id": 5, "volume": 3, "name": "x", "price": 1.5, "note": None},
    "version": 123456789012345678,
    "source": "trigger",
}


def payload(**changes: object) -> bytes:
    obj = dict(GOOD)
    for k, v in changes.items():
        if v is KeyError:
            obj.pop(k, None)
        else:
            obj[k] = v
    return orjson.dumps(obj)


def reason(raw: bytes) -> str:
    with pytest.raises(PayloadError) as info:
        parse_change(raw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_parse_good() -> None:
    ev = parse_change(payload())
    assert ev.table == "data" and ev.op is Op.UPDATE and ev.source is Source.TRIGGER
    assert ev.pk == (("id", 5),) and ev.pk_dict == {"id": 5}
    assert ev.row == GOOD["row"]
    assert ev.version == 123456789012345678


def test_event_is_frozen_and_slotted() -> None:
    ev = parse_change(payload())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.version = 1
    assert not hasattr(ev, "__dict__")
    assert isinstance(hash(ev), int)


def test_payload_error_is_sync_error() -> None:
    assert issubclass(PayloadError, SyncError)


def test_version_bounds_exact() -> None:
    top = 2**64 - 1
    assert parse_change(payload(version=top)).version == top
    assert parse_change(payload(version=0)).version == 0
    # 2**53 + 1 is not representable as a float: must survive exactly
    assert parse_change(payload(version=2**53 + 1)).version == 2**53 + 1
    raw = payload().replace(b"123456789012345678", b"18446744073709551616")
    assert "version" in reason(raw) and "2**64" in reason(raw)


@pytest.mark.parametrize("bad", [-1, 1.0, True, "5", None, [1]])
def test_version_rejected(bad: object) -> None:
    msg = reason(payload(version=bad))
    assert msg.startswith("version:") and "non-negative integer" in msg


def test_composite_pk_keeps_order() -> None:
    ev = parse_change(payload(pk={"b": "x", "a": 2}, row={"a": 2, "b": "x", "c": None}))
    assert ev.pk == (("b", "x"), ("a", 2))
    assert orjson.loads(encode_change(ev))["pk"] == {"b": "x", "a": 2}
    assert list(orjson.loads(encode_change(ev))["pk"]) == ["b", "a"]


def test_delete_without_row() -> None:
    ev = parse_change(payload(op="delete", row=KeyError))
    assert ev.op is Op.DELETE and ev.row is None
    assert parse_change(payload(op="delete", row=None)) == ev
    assert "row" in reason(payload(op="delete"))


@pytest.mark.parametrize(
    "raw, expect",
    [
        (b"", "invalid JSON at byte 0"),
        (b'{"v":1,', "invalid JSON at byte"),
        (b"[1,2]", "expected a JSON object, got list"),
        (b'"x"', "expected a JSON object, got str"),
        (payload(extra=1), "unknown 'extra'"),
        (payload(version=KeyError), "missing version"),
        (payload(v=2), "v: expected 1"),
        (payload(v=True), "v: expected 1"),
        (payload(op="upsert"), "op: expected one of insert, update, delete, cascade, got 'upsert'"),
        (payload(op=1), "op: expected one of"),
        (payload(source="cron"), "source: expected one of trigger, binlog, snapshot, seed"),
        (payload(table=""), "table: expected a non-empty name"),
        (payload(table="x" * 65), "table: expected at most 64 characters"),
        (payload(table="a\nb"), "table: expected no control characters"),
        (payload(table=5), "table: expected a string"),
        (payload(pk={}), "pk: expected a non-empty object"),
        (payload(pk=[5]), "pk: expected a non-empty object"),
        (payload(pk={"id": None}), "pk.id: expected a non-null scalar"),
        (payload(pk={"id": [1]}), "pk.id: expected a scalar, got an array"),
        (payload(pk={"id": True}), "pk.id: expected a string, number or null, got true"),
        (payload(pk={"id": {"a": 1}}), "pk.id: expected a scalar or"),
        (payload(row=[1]), "row: expected an object for update"),
        (payload(row=KeyError), "row: expected an object for update, got absent"),
        (payload(row={"volume": 3}), "row: expected pk column 'id', missing"),
        (payload(row={"id": 6}), "row.id: expected the pk value 5, got 6"),
        (payload(row={"id": "5"}), "row.id: expected the pk value 5, got '5'"),
        (payload(row={"id": 5, "j": {"a": 1}}), "row.j: expected a scalar or"),
        (payload(row={"id": 5, "j": [1, 2]}), "row.j: expected a scalar, got an array (JSON columns travel as strings)"),
        (payload(row={"id": 5, "b": False}), "row.b: expected a string, number or null, got false"),
        (payload(row={"id": 5, "": 1}), "row column: expected a non-empty name"),
        (payload(row={"id": 5, "x": {"$b64": "!!"}}), "row.x: $b64 expected standard padded base64"),
        (payload(row={"id": 5, "x": {"$b64": "AA"}}), "row.x: $b64 expected standard padded base64"),
        (payload(row={"id": 5, "x": {"$b64": "AB=="}}), "row.x: $b64 expected canonical base64"),
        (payload(row={"id": 5, "x": {"$b64": 5}}), "row.x: $b64 expected a base64 string"),
        (payload(row={"id": 5, "x": {"$b64": "AA==", "y": 1}}), "row.x: expected a scalar or"),
    ],
)
def test_rejections_name_the_field(raw: bytes, expect: str) -> None:
    assert expect in reason(raw)


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_reason(token: bytes) -> None:
    raw = payload(row={"id": 5, "x": 0}).replace(b'"x":0', b'"x":' + token)
    msg = reason(raw)
    assert "invalid JSON" in msg and "NaN/Infinity are not JSON" in msg


def test_float_overflow_reason() -> None:
    raw = payload(row={"id": 5, "x": 0}).replace(b'"x":0', b'"x":1e400')
    assert "invalid JSON" in reason(raw)


def test_nesting_is_bounded() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    assert "invalid JSON" in reason(deep) or "expected a JSON object" in reason(deep)
    nested = payload(row={"id": 5, "x": 0}).replace(b'"x":0', b'"x":' + b"[" * 100 + b"]" * 100)
    assert "row.x" in reason(nested)


def test_oversize_payload_rejected_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MAX_PAYLOAD_BYTES == 1 << 30
    monkeypatch.setattr(events_module, "MAX_PAYLOAD_BYTES", 1000)   # the check, without allocating 1 GiB
    assert "payload of 1001 bytes exceeds the limit of 1000 bytes" in reason(b" " * 1001)


def test_not_bytes() -> None:
    assert "expected bytes" in reason("{}")


def test_b64_values() -> None:
    ev = parse_change(payload(row={"id": 5, "bin": {"$b64": "//4="}, "txt": {"$b64": "aGk="}}))
    assert ev.row is not None
    assert ev.row["bin"] == {"$b64": "//4="}
    # valid UTF-8 inside $b64 becomes the canonical string form
    assert ev.row["txt"] == "hi"
    ev2 = parse_change(payload(pk={"id": {"$b64": "AP8="}}, row={"id": {"$b64": "AP8="}}))
    assert ev2.pk == (("id", {"$b64": "AP8="}),)


def test_big_ints_in_rows_exact() -> None:
    ev = parse_change(payload(row={"id": 5, "u": 2**64 - 1, "s": -(2**63)}))
    assert ev.row is not None and ev.row["u"] == 2**64 - 1 and ev.row["s"] == -(2**63)


def test_constructor_checks_invariants() -> None:
    with pytest.raises(PayloadError, match="row: expected null for a delete"):
        ChangeEvent("t", Op.DELETE, (("id", 1),), {"id": 1}, 1, Source.BINLOG)
    with pytest.raises(PayloadError, match="version"):
        ChangeEvent("t", Op.DELETE, (("id", 1),), None, 2**64, Source.BINLOG)
    with pytest.raises(PayloadError, match="version"):
        ChangeEvent("t", Op.DELETE, (("id", 1),), None, True, Source.BINLOG)
    with pytest.raises(PayloadError, match="op"):
        ChangeEvent("t", "delete", (("id", 1),), None, 1, Source.BINLOG)
    with pytest.raises(PayloadError, match="pk"):
        ChangeEvent("t", Op.DELETE, (), None, 1, Source.BINLOG)
    with pytest.raises(PayloadError, match="row.id"):
        ChangeEvent("t", Op.INSERT, (("id", 1),), {"id": 2}, 1, Source.BINLOG)


def test_encode_omits_row_for_delete() -> None:
    ev = ChangeEvent("t", Op.DELETE, (("id", 1),), None, 7, Source.SNAPSHOT)
    obj = orjson.loads(encode_change(ev))
    assert obj == {"v": 1, "table": "t", "op": "delete", "pk": {"id": 1}, "version": 7, "source": "snapshot"}


scalar = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(max_size=10).filter(lambda b: not _is_utf8(b)).map(lambda b: {"$b64": __import__("base64").b64encode(b).decode()}),
)
names = st.text(st.characters(min_codepoint=32, blacklist_characters="\x7f", blacklist_categories=("Cs",)), min_size=1, max_size=64)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@st.composite
def events(draw: st.DrawFn) -> ChangeEvent:
    op = draw(st.sampled_from([Op.INSERT, Op.UPDATE, Op.DELETE]))
    pk_cols = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    pk = tuple((c, draw(scalar)) for c in pk_cols)
    row = None
    if op is not Op.DELETE:
        row = draw(st.dictionaries(names, st.one_of(st.none(), scalar), max_size=6))
        row.update(pk)
    return ChangeEvent(
        draw(names), op, pk, row, draw(st.integers(0, 2**64 - 1)), draw(st.sampled_from(list(Source)))
    )


@settings(max_examples=300, deadline=None)
@given(events())
def test_encode_parse_roundtrip(ev: ChangeEvent) -> None:
    assert parse_change(encode_change(ev)) == ev


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_crashes(raw: bytes) -> None:
    try:
        parse_change(raw)
    except PayloadError:
        pass


def test_classic_int_and_string_ids() -> None:
    raw = b'{"id": 5, "volume": 3}'
    assert parse_classic(raw) == ClassicSet(b"5", raw)
    raw2 = '{"id":"k\u00e9y","x":[1,{"a":2}]}'.encode()
    assert parse_classic(raw2) == ClassicSet("k\u00e9y".encode(), raw2)


@pytest.mark.parametrize(
    "raw, expect",
    [
        (b'{"volume": 3}', 'expected an "id" member'),
        (b'{"id": null}', "id: expected an integer or a non-empty string"),
        (b'{"id": ""}', "id: expected an integer or a non-empty string"),
        (b'{"id": true}', "id: expected an integer"),
        (b'{"id": 1.5}', "id: expected an integer"),
        (b"[5]", "expected a JSON object"),
        (b"{", "invalid JSON"),
    ],
)
def test_classic_rejections(raw: bytes, expect: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_classic(raw)
    assert expect in str(info.value)


# -- "refs", "cascade" and op "cascade" ------------------------------------------------------

CASCADE = {
    "old": {"id": 5},
    "new": {"id": 6},
    "fks": [{"table": "line", "fk": "fk_line", "columns": ["order_id"], "ref": ["id"], "on_update": "cascade",
             "on_delete": "set_null", "children": [
                 {"table": "note", "fk": "fk_note", "columns": ["line_id"], "ref": ["id"], "on_update": "none",
                  "on_delete": "cascade", "children": []}]}],
}


def test_refs_and_cascade_roundtrip() -> None:
    ev = parse_change(payload(refs={"fk_a": [1, "x"], "fk_b": [{"$b64": "/w=="}]}, cascade=CASCADE))
    assert ev.refs == {"fk_a": (1, "x"), "fk_b": ({"$b64": "/w=="},)}
    assert ev.cascade is not None and ev.cascade.old == {"id": 5} and ev.cascade.new == {"id": 6}
    (line,) = ev.cascade.fks
    assert line.table == "line" and line.on_delete == "set_null" and line.children[0].table == "note"
    assert parse_change(encode_change(ev)) == ev


def test_op_cascade_has_no_pk_or_row() -> None:
    raw = orjson.dumps({"v": 1, "table": "orders", "op": "cascade", "version": 7, "source": "trigger",
                        "cascade": {"old": {"id": 5}, "fks": CASCADE["fks"]}})
    ev = parse_change(raw)
    assert ev.op is Op.CASCADE and ev.pk == () and ev.row is None and ev.cascade is not None
    assert parse_change(encode_change(ev)) == ev
    assert "op cascade" in reason(payload(op="cascade", cascade=CASCADE))  # with a pk and row
    assert "op cascade" in reason(orjson.dumps({"v": 1, "table": "t", "op": "cascade", "version": 1,
                                                "source": "trigger"}))


def _fk(**changes: object) -> dict[str, object]:
    d = dict(CASCADE["fks"][0])  # type: ignore[index]
    d.update(changes)
    return {"old": {"id": 5}, "new": {"id": 6}, "fks": [d]}


def test_bad_refs_and_cascade_name_the_value() -> None:
    assert "refs.fk_a: expected a non-null scalar" in reason(payload(refs={"fk_a": [None]}))
    assert "refs.fk_a: expected a list" in reason(payload(refs={"fk_a": 3}))
    assert "refs: expected an object" in reason(payload(refs=[1]))
    assert "'sometimes'" in reason(payload(cascade=_fk(on_update="sometimes")))
    assert "1 columns but 2 ref columns" in reason(payload(cascade=_fk(ref=["id", "x"])))
    assert "cascade.fks.table" in reason(payload(cascade=_fk(table="")))
    assert "references x, not in cascade.old" in reason(payload(cascade=_fk(ref=["x"])))
    assert "cascade.old.id: expected a scalar, got an array" in reason(
        payload(cascade={"old": {"id": [1]}, "fks": []}))
    assert "cascade.new: expected the columns" in reason(
        payload(cascade={"old": {"id": 1}, "new": {"x": 1}, "fks": []}))
    assert "expected on an update (with new) or a delete" in reason(payload(op="insert", cascade=CASCADE))
    deep: dict[str, object] = {"table": "t", "fk": "f", "columns": ["a"], "ref": ["id"], "on_update": "cascade",
                               "on_delete": "cascade", "children": []}
    for _ in range(20):
        deep = dict(deep, children=[deep])
    assert "nested at most 15 deep" in reason(payload(cascade={"old": {"id": 1}, "new": {"id": 2}, "fks": [deep]}))
