"""The applier's cheap path for child rows (real redis-server): a change looks cascade records up
only while a marker of its (table, FK) says one may exist; records written before markers existed
get theirs; fkr values spelled without orjson are what orjson would write, kept after the version
in the row's version key (and carried over from their own key, where an older gearsync kept them)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sync.apply.applier import Outcome, RedisApplier
from sync.apply.cascade_rows import split_stored_version
from sync.apply.truncate import TableWipe
from sync.events import Cascade, ChangeEvent, FKRule, Op, Source, TableTruncate
from sync.keys import (
    fk_cascade_key,
    fk_cascade_marker_key,
    fk_index_key,
    fk_markers_ready_key,
    fk_rows_key,
    row_key,
    version_key,
)
from sync.tables import TableSpec

A = Outcome.APPLIED
TABLES = {name: TableSpec(name) for name in ("orders", "line")}
LINE = FKRule("line", "fk_line", ("order_id",), ("id",), "cascade", "cascade")


def version_of(redis_client: Any, rk: str) -> int | None:
    """The row's version, as its version key holds it; None: none."""
    stored = redis_client.get(version_key(rk))
    return int(split_stored_version(stored.decode())[0]) if stored is not None else None


def fkr_of(redis_client: Any, rk: str) -> bytes | None:
    """The row's fkr value (the fk index sets it is in), as its version key holds it; None: none."""
    stored = redis_client.get(version_key(rk))
    return split_stored_version(stored.decode())[2].encode() or None if stored is not None else None


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
        assert fkr_of(redis_client, rk) == orjson.dumps([["id"], index])
        assert redis_client.smembers(index) == {rk.encode()}
    # a rewrite with the same value leaves the sets as they are; a new value moves the row
    assert await applier.apply([line(3, 11, 'quo"te', qty=1)]) == [A]
    assert redis_client.smembers(fk_index_key("line", "fk_line", ['quo"te'])) == {b"line:3"}
    assert await applier.apply([line(3, 12, 99)]) == [A]
    assert redis_client.smembers(fk_index_key("line", "fk_line", ['quo"te'])) == set()
    assert redis_client.smembers(fk_index_key("line", "fk_line", [99])) == {b"line:3"}
    assert fkr_of(redis_client, "line:3") == orjson.dumps([["id"], fk_index_key("line", "fk_line", [99])])
    assert redis_client.keys("gearsync:fkr:*") == []


@pytest.mark.parametrize("template", ["{table}:{pk}", "{{{table}}}:{pk}"], ids=["plain", "hash_tagged"])
async def test_a_row_indexed_by_an_older_gearsync_keeps_its_index(aredis: Any, redis_client: Any,
                                                                   template: str) -> None:
    """A row an older gearsync wrote: a 20-digit version, its fkr value in its own key (keys.fk_rows_key,
    in the row's slot, also under a template with its own hash tag). Its next change leaves the set of
    its old FK value, joins the new one, and its fkr value moves into the version key; a delete then
    leaves every set."""
    tables = {"line": TableSpec("line", key_template=template)}
    applier = RedisApplier(aredis, tables)
    rk = row_key(tables["line"].key_template, "line", (("id", 1),))
    legacy = fk_rows_key(rk)
    if template.startswith("{{"):
        assert rk == "{line}:1" and legacy == "gearsync:fkr:{line}:1"
    old_set = fk_index_key("line", "fk_line", [5])
    redis_client.set(rk, orjson.dumps({"id": 1, "order_id": 5}))
    redis_client.set(version_key(rk), b"%020d" % 10)
    redis_client.set(legacy, orjson.dumps([["id"], old_set]))
    redis_client.sadd(old_set, rk)
    assert await applier.apply([line(1, 11, 6)]) == [A]
    assert redis_client.smembers(old_set) == set()
    assert redis_client.smembers(fk_index_key("line", "fk_line", [6])) == {rk.encode()}
    assert redis_client.get(legacy) is None
    assert fkr_of(redis_client, rk) == orjson.dumps([["id"], fk_index_key("line", "fk_line", [6])])
    gone = ChangeEvent("line", Op.DELETE, (("id", 1),), None, 12, Source.TRIGGER, {"fk_line": (6,)})
    assert await applier.apply([gone]) == [A]
    assert fkr_of(redis_client, rk) is None and redis_client.get(rk) is None
    assert redis_client.smembers(fk_index_key("line", "fk_line", [6])) == set()


async def test_a_truncated_child_row_leaves_its_set_when_it_comes_back(aredis: Any, redis_client: Any) -> None:
    """TRUNCATE of a child table (sync.apply.truncate): its rows go, each version key keeps the row's
    fkr value after the statement's version; the row inserted again with another FK value leaves the
    set of the old one (a cascade of the old value finds nothing)."""
    applier = RedisApplier(aredis, TABLES)
    assert await applier.apply([line(1, 10, 5, qty=1)]) == [A]
    assert await TableWipe(TABLES).apply(aredis, TableTruncate("line", 20)) == 1
    assert redis_client.get("line:1") is None and version_of(redis_client, "line:1") == 20
    assert await applier.apply([line(1, 21, 6)]) == [A]
    assert redis_client.smembers(fk_index_key("line", "fk_line", [5])) == set()
    assert redis_client.smembers(fk_index_key("line", "fk_line", [6])) == {b"line:1"}
