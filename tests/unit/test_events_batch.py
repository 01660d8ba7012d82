"""The batch payload of sync.events: several v1 changes in one gearman job (sync-binlog --sink
gearman --job-changes N), parsed change by change."""

from __future__ import annotations

import orjson
import pytest

from sync.errors import PayloadError
from sync.events import (
    MAX_BATCH_CHANGES,
    BadChange,
    ChangeEvent,
    Op,
    Source,
    encode_batch,
    encode_change,
    parse_batch,
    parse_change,
)


def ev(i: int, op: Op = Op.UPDATE) -> ChangeEvent:
    row = None if op is Op.DELETE else {"id": i, "name": f"n{i}", "blob": {"$b64": "/w=="}}
    return ChangeEvent("data", op, (("id", i),), row, 2**63 + i, Source.BINLOG)


def test_a_batch_round_trips_in_order() -> None:
    events = [ev(1), ev(2, Op.DELETE), ev(3, Op.INSERT)]
    raw = encode_batch([encode_change(e) for e in events])
    assert orjson.loads(raw)["v"] == 1
    assert parse_batch(raw) == events
    assert [e.version for e in parse_batch(raw) or []] == [2**63 + 1, 2**63 + 2, 2**63 + 3]  # never a float


def test_a_bad_change_is_reported_alone_and_the_others_parse() -> None:
    bad_version = b'{"v":1,"table":"data","op":"update","pk":{"id":9},"row":{"id":9},"version":1.5,"source":"binlog"}'
    raw = encode_batch([encode_change(ev(1)), bad_version, b'"text"', encode_change(ev(4))])
    out = parse_batch(raw)
    assert out is not None and len(out) == 4
    assert out[0] == ev(1) and out[3] == ev(4)
    assert isinstance(out[1], BadChange) and out[1].reason.startswith("changes[1]: version: expected")
    assert orjson.loads(out[1].raw) == orjson.loads(bad_version)
    assert isinstance(out[2], BadChange) and out[2].reason == "changes[2]: expected a change object, got str 'text'"


@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"v":1,"changes":[', "batch payload: invalid JSON"),
    (b'{"v":2,"changes":[{}]}', "v: expected 1, got 2"),
    (b'{"v":1,"changes":[],"x":1}', "batch payload: keys 'changes', 'v', 'x'; expected v, changes"),
    (b'{"v":1,"changes":[]}', "changes: expected a list of 1..10000 change objects, got 0 items"),
    (b'{"v":1,"changes":{"a":1}}', "changes: expected a list of 1..10000 change objects, got {'a': 1}"),
    (b'{"v":1,"changes":[' + b",".join([b"{}"] * (MAX_BATCH_CHANGES + 1)) + b"]}", "got 10001 items"),
])
def test_a_batch_bad_as_a_whole_is_one_error_line(raw: bytes, fragment: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_batch(raw)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_single_change_is_not_a_batch_even_with_the_word_in_a_value() -> None:
    single = encode_change(ChangeEvent("data", Op.INSERT, (("id", 1),), {"id": 1, "note": '"changes"'}, 5,
                                       Source.BINLOG))
    assert parse_batch(single) is None
    assert parse_batch(encode_change(ev(1))) is None
    assert parse_change(single).row == {"id": 1, "note": '"changes"'}


def test_a_batch_is_not_a_single_change() -> None:
    with pytest.raises(PayloadError, match="unknown 'changes'"):
        parse_change(encode_batch([encode_change(ev(1))]))
