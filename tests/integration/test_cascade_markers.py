"""The applier's cheap path for child rows (real redis-server): a change looks cascade records up
only while a marker of its (table, FK) says one may exist; records written before markers existed
get theirs; fkr values spelled without orjson are what orjson would write."""

from __future__ import annotations

from typing import Any

import orjson

from sync.apply.applier import Outcome, RedisApplier
from sync.events import Cascade, ChangeEvent, FKRule, Op, Source
from sync.keys import (
    fk_cascade_key,
    fk_cascade_marker_key,
    fk_index_key,
    fk_markers_ready_key,
    fk_rows_key,
    row_key,
)
from sync.tables import TableSpec

A = Outcome.APPLIED
TABLES = {name: TableSpec(name) for name in ("orders", "line")}
LINE = FKRule("line", "fk_line", ("order_id",), ("id",), "cascade", "cascade")


def line(id_: int, version: int, order_id: Any, **more: Any) -> ChangeEvent:
    row = {"id": id_, "order_id": order_id, **more}
    return ChangeEvent("line", Op.INSERT, (("id", id_),), row, version, Source.TRIGGER, {"fk_line": (order_id,)})


def move_order(old: int, new: int, version: int) -> ChangeEvent:
    return ChangeEvent("orders", Op.UPDATE, (("id", new),), {"id": new}, version, Source.TRIGGER, None,
                       Cascade({"id": old}, {"id": new}, (LINE,)))


def expires(r: Any, key: str) -> int:
    """When the key expires (unix ms; -1: never, -2: no such key)."""
    return int(r.execute_command("PEXPIRETIME", key))


def stored(r: Any, id_: int) -> Any:
    raw = r.get(row_key(TABLES["line"].key_template, "line", (("id", id_),)))
    return None if raw is None else orjson.loads(raw)


async def test_a_cascade_sets_the_marker_and_late_changes_still_follow_it(aredis: Any, redis_client: Any) -> None:
    """A second applier (another worker process) that never saw the cascade: its late change is
    still moved, and from then on it sends the checks itself."""
    first, second = RedisApplier(aredis, TABLES), RedisApplier(aredis, TABLES)
    assert await second.apply([line(7, 5, 1)]) == [A]   # no marker yet: no check sent or made
    marker = fk_cascade_marker_key("line", "fk_line", TABLES["line"].key_template)
    assert redis_client.exists(marker) == 0
    await first.apply([line(1, 10, 5)])
    assert await first.apply([move_order(5, 6, 50)]) == [A]
    record = fk_cascade_key("line", "fk_line", [5], TABLES["line"].key_template)
    assert 0 < expires(redis_client, record) <= expires(redis_client, marker)
    assert await second.apply([line(2, 20, 5, qty=2)]) == [A]   # older than the cascade: moved to 6
    assert stored(redis_client, 2) == {"id": 2, "order_id": 6, "qty": 2}
    assert redis_client.smembers(fk_index_key("line", "fk_line", [6])) == {b"line:1", b"line:2"}
    # What sync-binlog's writer sends (pack_apply) is answered like a late change: it goes to apply().
    assert RedisApplier.late_reply(b"#1") and RedisApplier.late_reply("#01") and not RedisApplier.late_reply(b"AS")


async def test_records_written_before_markers_get_theirs(aredis: Any, redis_client: Any) -> None:
    """Redis data of an older gearsync: a cascade record without a marker. The applier's first
    script load gives it one (once per Redis), so a late change still follows the cascade."""
    await RedisApplier(aredis, TABLES).apply([line(1, 10, 5)])
    await RedisApplier(aredis, TABLES).apply([move_order(5, 6, 50)])
    marker = fk_cascade_marker_key("line", "fk_line", TABLES["line"].key_template)
    redis_client.delete(marker, fk_markers_ready_key())   # as the older version left it
    applier = RedisApplier(aredis, TABLES)
    assert await applier.apply([line(2, 20, 5)]) == [A]
    assert stored(redis_client, 2) == {"id": 2, "order_id": 6}
    assert redis_client.exists(fk_markers_ready_key()) == 1
    record = fk_cascade_key("line", "fk_line", [5], TABLES["line"].key_template)
    assert 0 < expires(redis_client, record) <= expires(redis_client, marker)


async def test_fkr_values_match_the_general_spelling(aredis: Any, redis_client: Any) -> None:
    """FK values that need key escaping or JSON escaping, or none: the fkr value is what orjson
    writes for [[pk columns], sets], and a change of the value moves the row between sets."""
    applier = RedisApplier(aredis, TABLES)
    values: list[Any] = [12, -3, "plain", 'quo"te', "back\\slash", "co:lon", "tab\there", "é ü", "\u2028", ""]
    for i, value in enumerate(values):
        assert await applier.apply([line(i, 10, value)]) == [A]
        rk = row_key(TABLES["line"].key_template, "line", (("id", i),))
        index = fk_index_key("line", "fk_line", [value])
        assert redis_client.get(fk_rows_key(rk)) == orjson.dumps([["id"], index])
        assert redis_client.smembers(index) == {rk.encode()}
    # a rewrite with the same value leaves the sets as they are; a new value moves the row
    assert await applier.apply([line(3, 11, 'quo"te', qty=1)]) == [A]
    assert redis_client.smembers(fk_index_key("line", "fk_line", ['quo"te'])) == {b"line:3"}
    assert await applier.apply([line(3, 12, 99)]) == [A]
    assert redis_client.smembers(fk_index_key("line", "fk_line", ['quo"te'])) == set()
    assert redis_client.smembers(fk_index_key("line", "fk_line", [99])) == {b"line:3"}
    assert redis_client.get(fk_rows_key("line:3")) == orjson.dumps([["id"], fk_index_key("line", "fk_line", [99])])


async def test_a_hash_tagged_template_keeps_its_fkr_key_in_the_rows_slot(aredis: Any, redis_client: Any) -> None:
    """A key template with its own hash tag: the row's version and fkr keys carry the row key as it
    is (keys.version_key / fk_rows_key), and the script finds the fkr value there."""
    tables = {"line": TableSpec("line", key_template="{{{table}}}:{pk}")}
    applier = RedisApplier(aredis, tables)
    rk = row_key(tables["line"].key_template, "line", (("id", 1),))
    assert rk == "{line}:1" and fk_rows_key(rk) == "gearsync:fkr:{line}:1"
    assert await applier.apply([line(1, 10, 5)]) == [A]
    assert redis_client.get(fk_rows_key(rk)) == orjson.dumps([["id"], fk_index_key("line", "fk_line", [5])])
    assert await applier.apply([line(1, 11, 6)]) == [A]
    assert redis_client.smembers(fk_index_key("line", "fk_line", [5])) == set()
    assert redis_client.smembers(fk_index_key("line", "fk_line", [6])) == {rk.encode()}
    gone = ChangeEvent("line", Op.DELETE, (("id", 1),), None, 12, Source.TRIGGER, {"fk_line": (6,)})
    assert await applier.apply([gone]) == [A]
    assert redis_client.get(fk_rows_key(rk)) is None
    assert redis_client.smembers(fk_index_key("line", "fk_line", [6])) == set()
