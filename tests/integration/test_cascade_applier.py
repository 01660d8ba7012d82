"""The applier performs foreign-key cascades in Redis (real redis-server): the fk index kept with
each child row, cascade update / delete / set null, chains, key changes, hash rows, fencing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sync.apply.applier import Outcome, RedisApplier
from sync.errors import PayloadError
from sync.events import Cascade, ChangeEvent, FKRule, Op, Source
from sync.keys import fk_index_key, row_key
from sync.rows.rowcodec import encode_json
from sync.tables import TableSpec

from .test_cascade_markers import fkr_of, version_of

A, S = Outcome.APPLIED, Outcome.STALE
TABLES = {name: TableSpec(name) for name in ("orders", "line", "note", "tree", "link", "item", "ship")}
TABLES["hline"] = TableSpec("hline", format="hash")

NOTE = FKRule("note", "fk_note", ("line_id",), ("id",), "cascade", "cascade")
LINE = FKRule("line", "fk_line", ("order_id",), ("id",), "cascade", "cascade", (NOTE,))
HLINE = FKRule("hline", "fk_hline", ("order_id",), ("id",), "set_null", "set_null")
LINK = FKRule("link", "fk_link", ("order_id",), ("id",), "cascade", "cascade")
TREE = FKRule("tree", "fk_tree", ("parent_id",), ("id",), "none", "cascade")
TREE_RULES = (FKRule("tree", "fk_tree", ("parent_id",), ("id",), "none", "cascade", (TREE,)),)


def child(table: str, pk: dict[str, Any], version: int, fk: str, cols: tuple[str, ...], **row: Any) -> ChangeEvent:
    full = {**pk, **row}
    values = tuple(full[c] for c in cols)
    refs = {} if None in values else {fk: values}
    return ChangeEvent(table, Op.INSERT, tuple(pk.items()), full, version, Source.TRIGGER, refs)


def parent(op: Op, old: int, new: int | None, version: int, fks: tuple[FKRule, ...],
           table: str = "orders") -> ChangeEvent:
    c = Cascade({"id": old}, None if new is None else {"id": new}, fks)
    if op is Op.CASCADE:
        return ChangeEvent(table, op, (), None, version, Source.TRIGGER, None, c)
    if op is Op.DELETE:
        return ChangeEvent(table, op, (("id", old),), None, version, Source.TRIGGER, None, c)
    assert new is not None
    return ChangeEvent(table, op, (("id", new),), {"id": new, "x": "p"}, version, Source.TRIGGER, None, c)


def key(table: str, **pk: Any) -> str:
    return row_key(TABLES[table].key_template, table, tuple(pk.items()))


def get(r: Any, table: str, **pk: Any) -> Any:
    raw = r.get(key(table, **pk))
    return None if raw is None else orjson.loads(raw)


@pytest.fixture
async def applier(aredis: Any) -> RedisApplier:
    return RedisApplier(aredis, TABLES)


async def test_index_follows_the_child_rows(applier: RedisApplier, redis_client: Any) -> None:
    await applier.apply([child("line", {"id": 1}, 10, "fk_line", ("order_id",), order_id=5)])
    assert redis_client.smembers(fk_index_key("line", "fk_line", [5])) == {b"line:1"}
    assert orjson.loads(fkr_of(redis_client, "line:1"))[0] == ["id"]
    await applier.apply([child("line", {"id": 1}, 11, "fk_line", ("order_id",), order_id=7)])
    assert redis_client.smembers(fk_index_key("line", "fk_line", [5])) == set()
    assert redis_client.smembers(fk_index_key("line", "fk_line", [7])) == {b"line:1"}
    # A stale change leaves the index alone.
    assert await applier.apply([child("line", {"id": 1}, 9, "fk_line", ("order_id",), order_id=5)]) == [S]
    assert redis_client.smembers(fk_index_key("line", "fk_line", [7])) == {b"line:1"}
    # NULL FK: out of every set, no fkr.
    await applier.apply([child("line", {"id": 1}, 12, "fk_line", ("order_id",), order_id=None)])
    assert redis_client.smembers(fk_index_key("line", "fk_line", [7])) == set()
    assert fkr_of(redis_client, "line:1") is None
    await applier.apply([child("line", {"id": 1}, 13, "fk_line", ("order_id",), order_id=7)])
    dele = ChangeEvent("line", Op.DELETE, (("id", 1),), None, 14, Source.TRIGGER, {})
    await applier.apply([dele])
    assert redis_client.smembers(fk_index_key("line", "fk_line", [7])) == set()
    assert fkr_of(redis_client, "line:1") is None


async def test_cascade_update_then_delete_follows_a_chain(applier: RedisApplier, redis_client: Any) -> None:
    await applier.apply([
        child("line", {"id": 1}, 10, "fk_line", ("order_id",), order_id=5, qty=1),
        child("line", {"id": 2}, 10, "fk_line", ("order_id",), order_id=5, qty=2),
        # Newer than the cascade (e.g. another cascade got there first) and still on order 5: cascaded,
        # keeping its version.
        child("line", {"id": 3}, 99, "fk_line", ("order_id",), order_id=5, qty=3),
        child("line", {"id": 4}, 10, "fk_line", ("order_id",), order_id=8, qty=4),
        child("note", {"id": 1}, 10, "fk_note", ("line_id",), line_id=1),
    ])
    # A child inserted in the same batch, before the parent change, is cascaded too.
    batch = [child("line", {"id": 5}, 11, "fk_line", ("order_id",), order_id=5, qty=5),
             parent(Op.UPDATE, 5, 6, 50, (LINE,))]
    assert await applier.apply(batch) == [A, A]
    assert get(redis_client, "line", id=1) == {"id": 1, "order_id": 6, "qty": 1}
    assert get(redis_client, "line", id=5)["order_id"] == 6
    assert get(redis_client, "line", id=3)["order_id"] == 6
    assert version_of(redis_client, "line:3") == 99
    # A cascade that keeps the key leaves the row's own version (a late older delete still applies).
    assert version_of(redis_client, "line:1") == 10
    assert redis_client.smembers(fk_index_key("line", "fk_line", [6])) == {b"line:1", b"line:2", b"line:3", b"line:5"}
    # Derived changes count as applied under their own table.
    assert int(redis_client.hget("gearsync:stats:line", "applied_total")) == 5 + 4  # 5 inserts, 4 derived
    # Delete order 6: its lines go, and line 1's note with them (line id did not change on update).
    assert await applier.apply([parent(Op.DELETE, 6, None, 60, (LINE,))]) == [A]
    assert get(redis_client, "line", id=1) is None and get(redis_client, "line", id=2) is None
    assert get(redis_client, "note", id=1) is None
    assert get(redis_client, "line", id=4) is not None and get(redis_client, "line", id=3) is None
    assert redis_client.smembers(fk_index_key("line", "fk_line", [6])) == set()
    # Redelivered: the parent is stale, its children are gone, nothing changes.
    assert await applier.apply([parent(Op.DELETE, 6, None, 60, (LINE,))]) == [S]
    # A child's older change arriving late follows the cascades that ran past it (5 -> 6, then 6
    # deleted): the row stays deleted.
    await applier.apply([child("line", {"id": 1}, 40, "fk_line", ("order_id",), order_id=5)])
    assert get(redis_client, "line", id=1) is None
    assert redis_client.smembers(fk_index_key("line", "fk_line", [5])) == set()
    assert redis_client.smembers(fk_index_key("line", "fk_line", [6])) == set()


async def test_key_change_and_op_cascade(applier: RedisApplier, redis_client: Any, aredis: Any) -> None:
    await applier.apply([child("link", {"order_id": 5, "tag": "a"}, 10, "fk_link", ("order_id",), n=1)])
    assert await applier.apply([parent(Op.CASCADE, 5, 9, 20, (LINK,))]) == [A]
    assert get(redis_client, "link", order_id=5, tag="a") is None
    assert get(redis_client, "link", order_id=9, tag="a") == {"order_id": 9, "tag": "a", "n": 1}
    assert redis_client.smembers(fk_index_key("link", "fk_link", [9])) == {b"link:9:a"}
    assert fkr_of(redis_client, "link:5:a") is None
    # The parent is not synced: nothing written for it.
    assert redis_client.keys("orders*") == []
    # An applier that does not serve the parent table takes its op cascade.
    only = RedisApplier(aredis, {"link": TABLES["link"]})
    assert await only.apply([parent(Op.CASCADE, 9, 3, 30, (LINK,))]) == [A]
    assert get(redis_client, "link", order_id=3, tag="a") is not None


async def test_set_null_on_a_hash_row(applier: RedisApplier, redis_client: Any) -> None:
    ev = child("hline", {"id": 1}, 10, "fk_hline", ("order_id",), order_id=5, price="1.50")
    await applier.apply([ev])
    assert await applier.apply([parent(Op.UPDATE, 5, 6, 20, (HLINE,))]) == [A]
    assert redis_client.hgetall("hline:1") == {b"id": b"1", b"price": b"1.50"}
    assert redis_client.smembers(fk_index_key("hline", "fk_hline", [5])) == set()
    assert fkr_of(redis_client, "hline:1") is None


async def test_self_reference_deletes_the_subtree(applier: RedisApplier, redis_client: Any) -> None:
    rows = [(1, None), (2, 1), (3, 2), (4, 3), (5, 1), (6, None)]
    await applier.apply([child("tree", {"id": i}, 10, "fk_tree", ("parent_id",), parent_id=p) for i, p in rows])
    assert await applier.apply([parent(Op.DELETE, 1, None, 20, TREE_RULES, table="tree")]) == [A]
    assert [i for i, _ in rows if get(redis_client, "tree", id=i) is not None] == [6]


async def test_cascade_into_an_unserved_table_is_a_payload_error(aredis: Any) -> None:
    applier = RedisApplier(aredis, {"orders": TableSpec("orders")})
    with pytest.raises(PayloadError, match="cascade into table 'line', which this worker does not serve"):
        applier.check(parent(Op.UPDATE, 5, 6, 20, (LINE,)))


async def test_without_the_cascade_the_child_diverges(applier: RedisApplier, redis_client: Any) -> None:
    await applier.apply([child("line", {"id": 1}, 10, "fk_line", ("order_id",), order_id=5)])
    plain = ChangeEvent("orders", Op.UPDATE, (("id", 6),), {"id": 6}, 20, Source.TRIGGER)
    await applier.apply([plain])
    assert redis_client.get("line:1") == encode_json({"id": 1, "order_id": 5})


async def test_two_key_templates_on_one_redis_keep_their_cascades_apart(aredis: Any, redis_client: Any) -> None:
    """Found by the shop run (both capture paths on one Redis): the fk index sets are named by child
    table and FK only, so they hold the row keys of every key template; a cascade must touch only
    the rows of its own applier's template, the other path's rows follow that path's own cascade."""
    trig = RedisApplier(aredis, TABLES)
    binlog = RedisApplier(aredis, {name: TableSpec(name, key_template="binlog:{table}:{pk}") for name in TABLES})
    await trig.apply([child("line", {"id": 1}, 10, "fk_line", ("order_id",), order_id=5)])
    await binlog.apply([child("line", {"id": 1}, 10, "fk_line", ("order_id",), order_id=5)])
    assert redis_client.smembers(fk_index_key("line", "fk_line", [5])) == {b"line:1", b"binlog:line:1"}
    assert await trig.apply([parent(Op.DELETE, 5, None, 50, (LINE,))]) == [A]
    assert redis_client.get("line:1") is None
    assert orjson.loads(redis_client.get("binlog:line:1")) == {"id": 1, "order_id": 5}
    assert version_of(redis_client, "binlog:line:1") == 10
    assert await binlog.apply([parent(Op.UPDATE, 5, 6, 20, (LINE,))]) == [A]
    assert orjson.loads(redis_client.get("binlog:line:1")) == {"id": 1, "order_id": 6}


async def test_a_child_change_older_than_a_cascade_follows_it_when_it_comes_late(applier: RedisApplier,
                                                                                   redis_client: Any) -> None:
    """Found by the shop run (trigger path): the jobs of a parent and of its children travel in
    different Gearman functions, so a child's insert or update can reach the applier after a newer
    cascade of its parent, which could not see it. The cascade leaves a record per (child, FK, old
    values); such a late change is moved as the cascade moved the rows it found, down the chain."""
    await applier.apply([child("line", {"id": 1}, 10, "fk_line", ("order_id",), order_id=5, qty=1)])
    assert await applier.apply([parent(Op.UPDATE, 5, 6, 50, (LINE,))]) == [A]   # line 1 moves to 6
    # Late: line 2 inserted (v20) and line 1 updated (v30) on order 5, both before the key change.
    late = [child("line", {"id": 2}, 20, "fk_line", ("order_id",), order_id=5, qty=2),
            child("line", {"id": 1}, 30, "fk_line", ("order_id",), order_id=5, qty=9)]
    assert await applier.apply(late) == [A, A]
    assert get(redis_client, "line", id=2) == {"id": 2, "order_id": 6, "qty": 2}
    assert get(redis_client, "line", id=1) == {"id": 1, "order_id": 6, "qty": 9}
    assert redis_client.smembers(fk_index_key("line", "fk_line", [6])) == {b"line:1", b"line:2"}
    assert redis_client.smembers(fk_index_key("line", "fk_line", [5])) == set()
    # A newer change of the row is not overwritten by a late one.
    assert await applier.apply([child("line", {"id": 2}, 70, "fk_line", ("order_id",), order_id=6, qty=7)]) == [A]
    await applier.apply([child("line", {"id": 2}, 25, "fk_line", ("order_id",), order_id=5, qty=3)])
    assert get(redis_client, "line", id=2)["qty"] == 7
    # Parent deleted (v80); then late: a note of line 3 (v60) and line 3 itself (v40) on order 6.
    assert await applier.apply([parent(Op.DELETE, 6, None, 80, (LINE,))]) == [A]
    assert get(redis_client, "line", id=1) is None and get(redis_client, "line", id=2) is None
    await applier.apply([child("line", {"id": 3}, 40, "fk_line", ("order_id",), order_id=6)])
    await applier.apply([child("note", {"id": 9}, 60, "fk_note", ("line_id",), line_id=3)])
    assert get(redis_client, "line", id=3) is None and get(redis_client, "note", id=9) is None
    # The parent key used again later: a newer child of the new parent stays.
    await applier.apply([child("line", {"id": 4}, 90, "fk_line", ("order_id",), order_id=6)])
    assert get(redis_client, "line", id=4) == {"id": 4, "order_id": 6}


async def test_a_late_insert_into_a_key_that_moved(applier: RedisApplier, redis_client: Any) -> None:
    """A link row (FK column in the key) inserted before its parent's key change, arriving after it:
    it lands under the new key."""
    assert await applier.apply([parent(Op.UPDATE, 5, 9, 50, (LINK,))]) == [A]   # nothing in the index yet
    await applier.apply([child("link", {"order_id": 5, "tag": "a"}, 10, "fk_link", ("order_id",), n=1)])
    assert get(redis_client, "link", order_id=5, tag="a") is None
    assert get(redis_client, "link", order_id=9, tag="a") == {"order_id": 9, "tag": "a", "n": 1}
    assert redis_client.smembers(fk_index_key("link", "fk_link", [9])) == {b"link:9:a"}


async def test_parent_key_changes_applied_out_of_order(applier: RedisApplier, redis_client: Any) -> None:
    """Two key changes of one parent (5 -> 6 at v50, 6 -> 7 at v60) reach the applier in the other
    order (two worker connections): the rows the older cascade moves go on to 7."""
    await applier.apply([child("line", {"id": 1}, 10, "fk_line", ("order_id",), order_id=5)])
    assert await applier.apply([parent(Op.UPDATE, 6, 7, 60, (LINE,))]) == [A]
    assert await applier.apply([parent(Op.UPDATE, 5, 6, 50, (LINE,))]) == [A]
    assert get(redis_client, "line", id=1) == {"id": 1, "order_id": 7}
    assert redis_client.smembers(fk_index_key("line", "fk_line", [7])) == {b"line:1"}
    # The same into a key column: the link row ends under 7.
    await applier.apply([child("link", {"order_id": 15, "tag": "a"}, 10, "fk_link", ("order_id",), n=1)])
    assert await applier.apply([parent(Op.UPDATE, 16, 17, 60, (LINK,))]) == [A]
    assert await applier.apply([parent(Op.UPDATE, 15, 16, 50, (LINK,))]) == [A]
    assert get(redis_client, "link", order_id=17, tag="a") == {"order_id": 17, "tag": "a", "n": 1}
    assert get(redis_client, "link", order_id=16, tag="a") is None


async def test_a_late_delete_of_a_child_the_cascade_changed_in_place(applier: RedisApplier, redis_client: Any) -> None:
    """Found by the shop run (categories, ON DELETE SET NULL): the child's delete (v30) reaches the
    applier after its parent's delete (v50) set its FK to NULL in Redis: the child is deleted."""
    await applier.apply([child("line", {"id": 1}, 10, "fk_line", ("order_id",), order_id=5)])
    hl = child("hline", {"id": 1}, 10, "fk_hline", ("order_id",), order_id=5, price="1")
    await applier.apply([hl])
    assert await applier.apply([parent(Op.DELETE, 5, None, 50, (HLINE,))]) == [A]
    assert redis_client.hgetall("hline:1") == {b"id": b"1", b"price": b"1"}
    dele = ChangeEvent("hline", Op.DELETE, (("id", 1),), None, 30, Source.TRIGGER, {})
    assert await applier.apply([dele]) == [A]
    assert redis_client.exists("hline:1") == 0


async def test_a_late_delete_after_its_insert_was_moved_in_place(applier: RedisApplier, redis_client: Any) -> None:
    """Found by the shop run (categories, ON DELETE SET NULL): the parent's delete (v50) comes first,
    then the child's insert (v10, moved by the cascade record: FK set to NULL), then its own delete
    (v30): the child is deleted (the move keeps the child's key, so it keeps its own version)."""
    assert await applier.apply([parent(Op.DELETE, 5, None, 50, (HLINE,))]) == [A]
    hl = child("hline", {"id": 1}, 10, "fk_hline", ("order_id",), order_id=5, price="1")
    assert await applier.apply([hl]) == [A]
    assert redis_client.hgetall("hline:1") == {b"id": b"1", b"price": b"1"}
    dele = ChangeEvent("hline", Op.DELETE, (("id", 1),), None, 30, Source.TRIGGER, {"fk_hline": (5,)})
    assert await applier.apply([dele]) == [A]
    assert redis_client.exists("hline:1") == 0
    # Moved in place to values a later cascade record knows (6 -> 7 at v40, before 5 -> 6 at v60):
    # that older record does not move it on.
    assert await applier.apply([parent(Op.UPDATE, 6, 7, 40, (LINE,))]) == [A]
    assert await applier.apply([parent(Op.UPDATE, 5, 6, 60, (LINE,))]) == [A]
    assert await applier.apply([child("line", {"id": 2}, 20, "fk_line", ("order_id",), order_id=5)]) == [A]
    assert get(redis_client, "line", id=2) == {"id": 2, "order_id": 6}
    assert version_of(redis_client, "line:2") == 20


async def test_a_late_delete_of_a_child_whose_key_a_cascade_moved(applier: RedisApplier, redis_client: Any) -> None:
    """Found by the shop run (order_items after an order renumber, and their shipments): the child's
    delete (v30, with its old FK values as refs) reaches the applier after the parent's key change
    (v50) moved the child to a new key: the moved key is deleted, and the child's own cascade
    follows it (the rows it had were moved with it)."""
    # "item" is keyed by (order_id, n), its FK to orders in its key; "ship" references an item.
    ship = FKRule("ship", "fk_ship", ("order_id", "n"), ("order_id", "n"), "cascade", "cascade")
    item = FKRule("item", "fk_item", ("order_id",), ("id",), "cascade", "cascade", (ship,))
    await applier.apply([child("item", {"order_id": 5, "n": 1}, 10, "fk_item", ("order_id",), q=1),
                         child("ship", {"id": 7}, 11, "fk_ship", ("order_id", "n"), order_id=5, n=1)])
    assert await applier.apply([parent(Op.UPDATE, 5, 6, 50, (item,))]) == [A]
    assert redis_client.exists("item:5:1") == 0 and redis_client.exists("item:6:1") == 1
    assert get(redis_client, "ship", id=7) == {"id": 7, "order_id": 6, "n": 1}
    # The item's delete (and the delete of its shipment that InnoDB's cascade did) comes late.
    gone = ChangeEvent("item", Op.DELETE, (("order_id", 5), ("n", 1)), None, 30, Source.TRIGGER,
                       {"fk_item": (5,)}, Cascade({"order_id": 5, "n": 1}, None, (ship,)))
    assert await applier.apply([gone]) == [A]
    assert redis_client.keys("item:*") == [] and redis_client.keys("ship:*") == []
    assert redis_client.smembers(fk_index_key("item", "fk_item", [6])) == set()
    assert redis_client.smembers(fk_index_key("ship", "fk_ship", [6, 1])) == set()
