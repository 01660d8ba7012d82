"""Shaping, indexes and change streams through RedisApplier on a real redis-server (issue 17).

What a user reads back: the row as shaped (excluded columns absent, renamed ones under their new
name), rows the filter leaves out absent, the zset/set indexes holding exactly the live rows, and
the stream holding each key's applied changes in version order, never a fenced-out one.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from sync.apply.applier import Outcome, RedisApplier
from sync.events import ChangeEvent, Op, Source
from sync.keys import index_rows_key
from sync.shape import build_shape
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, RedisServer

A, S = Outcome.APPLIED, Outcome.STALE
ITEMS = {
    "exclude": ["secret"],
    "rename": {"price": "cost"},
    "filter": "active = 1 AND price > 0",
    "indexes": [{"type": "zset", "column": "price"}, {"type": "set", "column": "store_id"}],
    "stream": {"maxlen": 100000},
}


def spec(fmt: str = "json", **over: Any) -> TableSpec:
    values = {**ITEMS, **over}
    return TableSpec("items", format=fmt, shape=build_shape("items", values, "[tables.items]"))


def up(i: int, version: int, *, price: Any = 10, store: Any = 1, active: int = 1, op: Op = Op.UPDATE,
       **more: Any) -> ChangeEvent:
    row = {"id": i, "price": price, "store_id": store, "active": active, "secret": "s3cret", **more}
    return ChangeEvent("items", op, (("id", i),), row, version, Source.TRIGGER)


def dele(i: int, version: int) -> ChangeEvent:
    return ChangeEvent("items", Op.DELETE, (("id", i),), None, version, Source.TRIGGER)


async def stream(r: Any, key: str = "items:changes") -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in await r.xrange(key)]


async def sets(r: Any) -> dict[str, set[str]]:
    out = {}
    async for k in r.scan_iter(match="items:store_id:*"):
        out[k.decode()] = {m.decode() for m in await r.smembers(k)}
    return {k: v for k, v in out.items() if v}


async def test_a_row_is_shaped_indexed_and_streamed(aredis: Any) -> None:
    ap = RedisApplier(aredis, {"items": spec()})
    assert await ap.apply([up(1, 10, price=12.5, store=2), up(2, 11, price=3, store=2)]) == [A, A]
    assert orjson.loads(await aredis.get("items:1")) == {"id": 1, "cost": 12.5, "store_id": 2, "active": 1}
    assert await aredis.zrange("items:by:price", 0, -1, withscores=True) == [(b"items:2", 3.0), (b"items:1", 12.5)]
    assert await sets(aredis) == {"items:store_id:2": {"items:1", "items:2"}}
    # the set index moves with the column, the zset score follows the value
    assert await ap.apply([up(1, 12, price=20, store=3)]) == [A]
    assert await sets(aredis) == {"items:store_id:2": {"items:2"}, "items:store_id:3": {"items:1"}}
    assert await aredis.zscore("items:by:price", "items:1") == 20.0
    # a stale change touches nothing: not the row, not the indexes, not the stream
    before = await stream(aredis)
    assert await ap.apply([up(1, 11, price=99, store=9)]) == [S]
    assert await aredis.zscore("items:by:price", "items:1") == 20.0
    assert await sets(aredis) == {"items:store_id:2": {"items:2"}, "items:store_id:3": {"items:1"}}
    assert await stream(aredis) == before
    # a delete removes the row from every index and its set-index record
    assert await ap.apply([dele(1, 13)]) == [A]
    assert await aredis.zscore("items:by:price", "items:1") is None
    assert await sets(aredis) == {"items:store_id:2": {"items:2"}}
    assert not await aredis.exists(index_rows_key("items:1"))
    got = await stream(aredis)
    assert [(e["op"], e["key"], e["version"]) for e in got] == [
        ("update", "items:1", "10"), ("update", "items:2", "11"), ("update", "items:1", "12"), ("delete", "items:1", "13")]
    assert orjson.loads(got[2]["row"]) == {"id": 1, "cost": 20, "store_id": 3, "active": 1}
    assert orjson.loads(got[0]["pk"]) == {"id": 1} and "row" not in got[3]


async def test_filter_out_and_back_in(aredis: Any) -> None:
    ap = RedisApplier(aredis, {"items": spec()})
    await ap.apply([up(1, 10, price=5, store=1)])
    # stops matching: removed from Redis and from its indexes, at that version
    assert await ap.apply([up(1, 11, price=5, store=1, active=0)]) == [A]
    assert not await aredis.exists("items:1")
    assert await aredis.zcard("items:by:price") == 0 and await sets(aredis) == {}
    # an older change that still matched comes late: fenced out, the row stays out
    assert await ap.apply([up(1, 10, price=5, store=1)]) == [S]
    assert not await aredis.exists("items:1")
    # price 0 fails the filter too; NULL price compares false (SQL)
    assert await ap.apply([up(1, 12, price=0, active=1)]) == [A]
    assert not await aredis.exists("items:1")
    assert await ap.apply([up(1, 13, price=None, active=1)]) == [A]
    assert not await aredis.exists("items:1")
    # starts matching again: it appears, with its indexes
    assert await ap.apply([up(1, 14, price=7, store=4)]) == [A]
    assert orjson.loads(await aredis.get("items:1"))["cost"] == 7
    assert await aredis.zscore("items:by:price", "items:1") == 7.0
    assert await sets(aredis) == {"items:store_id:4": {"items:1"}}
    assert [e["op"] for e in await stream(aredis)] == ["update", "delete", "delete", "delete", "update"]


async def test_one_batch_moving_a_row_in_and_out_of_a_zset_ends_as_its_last_change(aredis: Any) -> None:
    """The script sends a call's ZADDs of one zset together: a remove between them still counts in
    its place (added, removed, added again; added then removed; a score changed twice)."""
    ap = RedisApplier(aredis, {"items": spec()})
    batch = [up(1, 10, price=5), up(2, 10, price=6), dele(1, 11), up(3, 10, price=8), up(1, 12, price=7),
             up(2, 11, price=9), dele(2, 12), up(3, 11, price=1), up(3, 12, price=2), up(4, 10, price=4, active=0)]
    assert await ap.apply(batch) == [A] * 10
    assert await aredis.zrange("items:by:price", 0, -1, withscores=True) == [(b"items:3", 2.0), (b"items:1", 7.0)]
    # a stale change in the next batch moves nothing; a newer one does
    assert await ap.apply([up(1, 11, price=50), up(3, 13, price=30), dele(1, 13), up(1, 14, price=3)]) == [S, A, A, A]
    assert await aredis.zrange("items:by:price", 0, -1, withscores=True) == [(b"items:1", 3.0), (b"items:3", 30.0)]


async def test_the_stream_is_trimmed_to_about_maxlen(aredis: Any) -> None:
    """MAXLEN ~ (the script trims each stream once per call): the stream keeps the newest entries,
    at least maxlen and less than maxlen plus one stream node."""
    ap = RedisApplier(aredis, {"items": spec(stream={"maxlen": 10})})
    for start in range(0, 1000, 128):
        await ap.apply([up(i, 10 + i) for i in range(start, min(start + 128, 1000))])
    node = int((await aredis.config_get("stream-node-max-entries"))["stream-node-max-entries"])
    assert 10 <= await aredis.xlen("items:changes") < 10 + node
    last = await stream(aredis)
    assert [e["key"] for e in last[-3:]] == ["items:997", "items:998", "items:999"]


async def test_two_set_indexes_and_set_values_needing_json_escapes(aredis: Any) -> None:
    """The set record lists its sets in JSON; a value that needs escaping there (a quote, a
    backslash) or two set indexes send the set keys beside it: they move and go like one plain set."""
    two = spec(indexes=[{"type": "set", "column": "store_id"}, {"type": "set", "column": "tag"}])
    one = spec(indexes=[{"type": "set", "column": "tag"}])
    ap, ap1 = RedisApplier(aredis, {"items": two}), RedisApplier(aredis, {"items": one})
    assert await ap.apply([up(1, 10, store=2, tag='say "hi"'), up(2, 10, store=2, tag="a\\b")]) == [A, A]
    assert await sets(aredis) == {"items:store_id:2": {"items:1", "items:2"}}
    assert await aredis.smembers('items:tag:say "hi"') == {b"items:1"}
    assert await aredis.smembers("items:tag:a\\\\b") == {b"items:2"}  # a backslash escaped (keys.escape)
    assert await ap.apply([up(1, 11, store=3, tag="plain"), dele(2, 11)]) == [A, A]
    assert await sets(aredis) == {"items:store_id:3": {"items:1"}}
    assert await aredis.smembers("items:tag:plain") == {b"items:1"}
    assert not await aredis.exists('items:tag:say "hi"') and not await aredis.exists("items:tag:a\\\\b")
    # one set index, a value needing escapes (its key beside the record), then a plain one
    assert await ap1.apply([up(3, 10, tag='q"'), up(3, 11, tag="r")]) == [A, A]
    assert not await aredis.exists('items:tag:q"')
    assert await aredis.smembers("items:tag:r") == {b"items:3"}
    assert await ap1.apply([up(3, 12, tag='x"y')]) == [A]
    assert await aredis.smembers('items:tag:x"y') == {b"items:3"} and not await aredis.exists("items:tag:r")


async def test_the_stream_pk_for_each_key_form(aredis: Any) -> None:
    """The stream's pk is the key columns' JSON whatever the key template, format and pk type (the
    script builds a one-integer-column pk from a "{table}:...{pk}" key; others are sent)."""
    def ev(pk: tuple[tuple[str, Any], ...], version: int, op: Op = Op.UPDATE) -> ChangeEvent:
        row = None if op is Op.DELETE else {**dict(pk), "price": 3, "store_id": 1, "active": 1}
        return ChangeEvent("items", op, pk, row, version, Source.TRIGGER)

    for template, fmt in (("{table}:{pk}", "json"), ("{table}:x-y:{pk}", "hash"), ("app:{table}:{pk}", "json"),
                          ("{{{table}}}:{pk}", "hash")):
        await aredis.flushall()
        shape = build_shape("items", {**ITEMS, "exclude": [], "rename": {}}, "[tables.items]")
        ap = RedisApplier(aredis, {"items": TableSpec("items", format=fmt, key_template=template, shape=shape)})
        changes = [ev((("id", 7),), 10), ev((("id", -3),), 10), ev((("id", 7),), 11, Op.DELETE),
                   ev((("id", "a:b"),), 10), ev((("id", 12), ("n", "x")), 10), ev((("id", 12), ("n", "x")), 11, Op.DELETE)]
        assert await ap.apply(changes) == [A] * 6, template
        got = [(e["op"], orjson.loads(e["pk"]), orjson.loads(e["row"])["id"] if "row" in e else None)
               for e in await stream(aredis)]
        assert got == [("update", {"id": 7}, 7), ("update", {"id": -3}, -3), ("delete", {"id": 7}, None),
                       ("update", {"id": "a:b"}, "a:b"), ("update", {"id": 12, "n": "x"}, 12),
                       ("delete", {"id": 12, "n": "x"}, None)], template


async def test_an_index_key_of_another_type_fails_the_call_and_keeps_what_came_before(aredis: Any) -> None:
    """A zset index key holding another type fails the call before anything is written; a set key
    of another type fails it at that change: the changes before it are in Redis with every index
    entry (a retry finds them stale), the rest is not."""
    from sync.errors import ApplyError

    ap = RedisApplier(aredis, {"items": spec()})
    await aredis.set("items:by:price", "not a zset")
    try:
        await ap.apply([up(1, 10)])
        raise AssertionError("expected ApplyError")
    except ApplyError as exc:
        assert "items:by:price" in str(exc)
    assert not await aredis.exists("items:1") and not await aredis.exists("items:changes")
    await aredis.delete("items:by:price")
    await aredis.set("items:store_id:7", "not a set")
    batch = [up(1, 10, price=4, store=2), up(2, 10, price=5, store=7), up(3, 10, price=6, store=2)]
    try:
        await ap.apply(batch)
        raise AssertionError("expected ApplyError")
    except ApplyError as exc:
        assert "WRONGTYPE" in str(exc)
    assert await aredis.zscore("items:by:price", "items:1") == 4.0
    assert await aredis.exists("items:1") and not await aredis.exists("items:3")
    assert await aredis.zscore("items:by:price", "items:3") is None
    # once the key is fixed, the retry applies the rest; the first is stale and stays indexed
    await aredis.delete("items:store_id:7")
    assert await ap.apply(batch) == [S, A, A]
    assert [m for m, _ in await aredis.zrange("items:by:price", 0, -1, withscores=True)] == [b"items:1", b"items:2", b"items:3"]
    assert await sets(aredis) == {"items:store_id:2": {"items:1", "items:3"}, "items:store_id:7": {"items:2"}}


async def test_hash_rows_leave_no_stale_field(aredis: Any) -> None:
    ap = RedisApplier(aredis, {"items": spec("hash", filter=None)})
    await ap.apply([up(1, 10, price=5, store=1, note="hello")])
    assert await aredis.hgetall("items:1") == {b"id": b"1", b"cost": b"5", b"store_id": b"1", b"active": b"1",
                                               b"note": b"hello"}
    # a column that becomes NULL loses its field; an excluded one never has one
    await ap.apply([up(1, 11, price=5, store=None, note=None)])
    assert await aredis.hgetall("items:1") == {b"id": b"1", b"cost": b"5", b"active": b"1"}
    assert await sets(aredis) == {}
    # a column no longer synced (a table's columns shrink): its field goes with the next change
    plain = RedisApplier(aredis, {"items": TableSpec("items", format="hash")})
    await plain.apply([ChangeEvent("items", Op.UPDATE, (("id", 2),), {"id": 2, "a": 1, "b": 2}, 10, Source.TRIGGER)])
    await plain.apply([ChangeEvent("items", Op.UPDATE, (("id", 2),), {"id": 2, "a": 1}, 11, Source.TRIGGER)])
    assert await aredis.hgetall("items:2") == {b"id": b"2", b"a": b"1"}


async def test_temporal_scores_are_epoch_seconds(aredis: Any) -> None:
    ap = RedisApplier(aredis, {"items": spec(filter=None, indexes=[{"type": "zset", "column": "seen"}], stream=None)})
    await ap.apply([up(1, 10, seen="2024-01-02 03:04:05.5"), up(2, 11, seen="2024-01-02"), up(3, 12, seen="soon")])
    assert await aredis.zrange("items:by:seen", 0, -1, withscores=True) == [(b"items:2", 1704153600.0),
                                                                           (b"items:1", 1704164645.5)]


def make_history(rng: random.Random, rows: int = 60) -> dict[int, list[ChangeEvent]]:
    """Per row, its changes in version order: filter transitions, deletes, moves between sets."""
    history: dict[int, list[ChangeEvent]] = {}
    version = 1000
    for i in range(rows):
        evs = []
        for n in range(rng.randint(1, 8)):
            version += 1
            if n and rng.random() < 0.15:
                evs.append(dele(i, version))
            else:
                evs.append(up(i, version, price=rng.choice([0, 1, 2.5, 7, 40, None]), store=rng.choice([1, 2, 3, None]),
                              active=rng.choice([0, 1, 1, 1]), op=Op.INSERT if not n else Op.UPDATE))
        history[i] = evs
    return history


def shuffled(history: dict[int, list[ChangeEvent]], rng: random.Random) -> list[ChangeEvent]:
    """Every change once or twice (a redelivery), in random order."""
    out = [ev for evs in history.values() for ev in evs for _ in range(rng.choice([1, 1, 2]))]
    rng.shuffle(out)
    return out


async def assert_ends_as_implied(r: Any, history: dict[int, list[ChangeEvent]]) -> None:
    """Rows, indexes and stream as the last change of each row implies (the rules of docs/shaping.md)."""
    want_rows, want_z, want_sets = {}, {}, {}
    for i, evs in history.items():
        row = evs[-1].row
        if row is None or row["active"] != 1 or row["price"] is None or row["price"] <= 0:
            continue
        want_rows[f"items:{i}"] = {"id": i, "cost": row["price"], "store_id": row["store_id"], "active": 1}
        want_z[f"items:{i}"] = float(row["price"])
        if row["store_id"] is not None:
            want_sets.setdefault(f"items:store_id:{row['store_id']}", set()).add(f"items:{i}")
    got_rows = {}
    async for k in r.scan_iter(match="items:[0-9]*"):
        got_rows[k.decode()] = orjson.loads(await r.get(k))
    assert got_rows == want_rows
    assert {m.decode(): s for m, s in await r.zrange("items:by:price", 0, -1, withscores=True)} == want_z
    assert await sets(r) == want_sets
    by_key: dict[str, list[int]] = {}
    for e in await stream(r):
        by_key.setdefault(e["key"], []).append(int(e["version"]))
    for i, evs in history.items():
        seen = by_key[f"items:{i}"]
        assert seen == sorted(set(seen)), f"items:{i}: stream versions {seen} not increasing once each"
        assert set(seen) <= {ev.version for ev in evs} and seen[-1] == evs[-1].version


async def test_four_appliers_with_shuffled_versions_end_as_the_history_implies(redis_server: RedisServer,
                                                                               aredis: Any) -> None:
    """60 rows' histories, shuffled, applied by 4 appliers on 4 connections at once."""
    rng = random.Random(17)
    history = make_history(rng)
    deliveries = shuffled(history, rng)
    clients = [aioredis.Redis(host=redis_server.host, port=redis_server.port) for _ in range(4)]
    appliers = [RedisApplier(c, {"items": spec()}) for c in clients]
    try:
        async def run(ap: RedisApplier, part: list[ChangeEvent]) -> None:
            for k in range(0, len(part), 5):
                await ap.apply(part[k : k + 5])
        await asyncio.gather(*(run(ap, deliveries[n::4]) for n, ap in enumerate(appliers)))
    finally:
        for c in clients:
            await c.aclose()
    await assert_ends_as_implied(aredis, history)


async def test_four_sync_workers_from_gearmand_end_as_the_history_implies(tmp_path: Path, gearmand: GearmanServer,
                                                                          redis_server: RedisServer, aredis: Any) -> None:
    """The same through gearmand: 4 sync-workers reading [tables.items] from a config file."""
    from sync.apply.worker import SyncWorker
    from sync.config import worker_settings
    from sync.events import encode_change
    from sync.gearman import GearmanClient, admin

    rng = random.Random(23)
    history = make_history(rng, 80)
    path = tmp_path / "g.toml"
    path.write_text('[tables.items]\nexclude = ["secret"]\nrename = { price = "cost" }\n'
                    'filter = "active = 1 AND price > 0"\n'
                    'indexes = [{ type = "zset", column = "price" }, { type = "set", column = "store_id" }]\n'
                    "stream = { maxlen = 100000 }\n")
    path.chmod(0o600)
    async with GearmanClient([(gearmand.host, gearmand.port)]) as client:
        await client.submit_background_many("gearsync.items", [encode_change(ev) for ev in shuffled(history, rng)])
    settings = worker_settings(tables=None, config_path=str(path), servers=gearmand.address, batch=8,
                               redis_url=f"redis://{redis_server.host}:{redis_server.port}/0", env={})
    workers = [SyncWorker(settings) for _ in range(4)]
    tasks = [asyncio.ensure_future(w.run()) for w in workers]
    try:
        for _ in range(600):
            status = {s.name: s for s in await admin.status(gearmand.host, gearmand.port, timeout_s=5)}
            if not status["gearsync.items"].queued:
                break
            await asyncio.sleep(0.1)
    finally:
        for w in workers:
            w.request_stop()
        assert await asyncio.gather(*tasks) == [0, 0, 0, 0]
    assert all(w.stats.jobs > 0 for w in workers), [w.stats.jobs for w in workers]
    await assert_ends_as_implied(aredis, history)


async def test_cascades_move_and_remove_the_index_entries(aredis: Any) -> None:
    """A child table indexed by its FK column: ON UPDATE CASCADE moves its rows between the sets
    and the zset, ON DELETE CASCADE removes them from every index; both enter the stream."""
    from sync.events import Cascade, FKRule

    rule = FKRule("line", "fk_line", ("order_id",), ("id",), "cascade", "cascade")
    shape = build_shape("line", {"rename": {"note": "text"},
                                 "indexes": [{"type": "zset", "column": "order_id"}, {"type": "set", "column": "order_id"}],
                                 "stream": {}}, "[tables.line]")
    ap = RedisApplier(aredis, {"orders": TableSpec("orders"), "line": TableSpec("line", shape=shape)})

    def line(i: int, order: int, version: int) -> ChangeEvent:
        return ChangeEvent("line", Op.INSERT, (("id", i),), {"id": i, "order_id": order, "note": "n"}, version,
                           Source.TRIGGER, {"fk_line": (order,)})

    def order(op: Op, old: int, new: int | None, version: int) -> ChangeEvent:
        c = Cascade({"id": old}, None if new is None else {"id": new}, (rule,))
        if op is Op.DELETE:
            return ChangeEvent("orders", op, (("id", old),), None, version, Source.TRIGGER, None, c)
        return ChangeEvent("orders", op, (("id", new),), {"id": new}, version, Source.TRIGGER, None, c)

    await ap.apply([order(Op.INSERT, 5, 5, 10), line(1, 5, 11), line(2, 5, 12), line(3, 6, 13)])
    assert {m.decode() for m in await aredis.smembers("line:order_id:5")} == {"line:1", "line:2"}
    await ap.apply([order(Op.UPDATE, 5, 7, 20)])                  # ON UPDATE CASCADE: 5 -> 7
    assert orjson.loads(await aredis.get("line:1")) == {"id": 1, "order_id": 7, "text": "n"}
    assert await aredis.smembers("line:order_id:5") == set()
    assert {m.decode() for m in await aredis.smembers("line:order_id:7")} == {"line:1", "line:2"}
    assert await aredis.zscore("line:by:order_id", "line:2") == 7.0
    await ap.apply([order(Op.DELETE, 7, None, 30)])               # ON DELETE CASCADE
    assert not await aredis.exists("line:1") and await aredis.smembers("line:order_id:7") == set()
    assert {m.decode() for m in await aredis.zrange("line:by:order_id", 0, -1)} == {"line:3"}
    assert not await aredis.exists(index_rows_key("line:1"))
    moved = [(f[b"op"], f[b"key"], f[b"pk"]) for _, f in await aredis.xrange("line:changes")][3:]
    # a cascade's delete names the row's pk too (from the row it removes)
    assert sorted(moved) == [(b"delete", b"line:1", b'{"id":1}'), (b"delete", b"line:2", b'{"id":2}'),
                             (b"update", b"line:1", b'{"id":1}'), (b"update", b"line:2", b'{"id":2}')]


async def test_truncate_removes_the_index_entries_of_the_rows_it_removes(aredis: Any) -> None:
    """TRUNCATE (binlog path, TableWipe): the rows older than the statement leave the zset and the
    sets with their rows; a row written after it (newer version) keeps its row and its entries, and
    rows written after the TRUNCATE are indexed as usual."""
    from sync.apply.truncate import TableWipe
    from sync.events import TableTruncate

    ap = RedisApplier(aredis, {"items": spec()})
    assert await ap.apply([up(1, 10, store=2), up(2, 11, store=2), up(3, 30, price=7, store=3)]) == [A, A, A]
    # row 4 was written by an older gearsync: its set record in its own key
    await aredis.set("items:4", orjson.dumps({"id": 4, "cost": 1, "store_id": 2, "active": 1}))
    await aredis.set("gearsync:v:{items:4}", f"{12:020d}")
    await aredis.set(index_rows_key("items:4"), '["items:store_id:2"]')
    await aredis.sadd("items:store_id:2", "items:4")
    await aredis.zadd("items:by:price", {"items:4": 1})
    wipe = TableWipe({"items": spec()})
    entries = len(await stream(aredis))
    assert await wipe.apply(aredis, TableTruncate("items", 20)) == 3
    # one stream entry for the statement, after the rows' own entries
    got = await stream(aredis)
    assert len(got) == entries + 1 and got[-1] == {"op": "truncate", "version": "20"}
    assert await aredis.zrange("items:by:price", 0, -1) == [b"items:3"]
    assert await sets(aredis) == {"items:store_id:3": {"items:3"}}
    assert not await aredis.exists(index_rows_key("items:4"))
    # the truncated rows' late, older changes are fenced out; newer ones come back, indexed
    assert await ap.apply([up(1, 15, store=5), up(2, 21, price=4, store=2)]) == [S, A]
    assert await aredis.zrange("items:by:price", 0, -1) == [b"items:2", b"items:3"]
    assert await sets(aredis) == {"items:store_id:2": {"items:2"}, "items:store_id:3": {"items:3"}}
    # running it again (a restart repeating the statement) removes nothing more and enters no
    # second entry; nor does an older statement (fenced like the rows); a newer one does
    entries = len(await stream(aredis))
    assert await wipe.apply(aredis, TableTruncate("items", 20)) == 0
    assert await wipe.apply(aredis, TableTruncate("items", 19)) == 0
    assert await sets(aredis) == {"items:store_id:2": {"items:2"}, "items:store_id:3": {"items:3"}}
    assert len(await stream(aredis)) == entries
    assert await wipe.apply(aredis, TableTruncate("items", 40)) == 2
    got = await stream(aredis)
    assert len(got) == entries + 1 and got[-1] == {"op": "truncate", "version": "40"}
    # a table without a stream gets none
    await aredis.delete("items:changes")
    plain = TableWipe({"items": spec(stream=None)})
    await RedisApplier(aredis, {"items": spec(stream=None)}).apply([up(5, 50)])
    assert await plain.apply(aredis, TableTruncate("items", 60)) == 1
    assert not await aredis.exists("items:changes")


async def test_a_set_record_written_by_an_older_gearsync_is_read_and_moved(aredis: Any) -> None:
    """Before the set record moved into the version key it had its own key: the row's next change
    reads it (leaving the old set), deletes it and keeps the record in the version key."""
    ap = RedisApplier(aredis, {"items": spec()})
    await aredis.set("items:1", orjson.dumps({"id": 1, "cost": 10, "store_id": 2, "active": 1}))
    await aredis.set("gearsync:v:{items:1}", f"{10:020d}")
    await aredis.set(index_rows_key("items:1"), '["items:store_id:2"]')
    await aredis.sadd("items:store_id:2", "items:1")
    assert await ap.apply([up(1, 11, store=3)]) == [A]
    assert await sets(aredis) == {"items:store_id:3": {"items:1"}}
    assert not await aredis.exists(index_rows_key("items:1"))
    assert await ap.apply([up(1, 12, store=4), dele(1, 13)]) == [A, A]
    assert await sets(aredis) == {}
    assert await aredis.zcard("items:by:price") == 0


async def test_a_cascade_that_makes_a_child_fail_the_filter_removes_it(aredis: Any) -> None:
    """ON UPDATE CASCADE moves a child's FK to a value the filter leaves out: the child leaves Redis
    and its indexes, like a row that stops matching (the stream gets a delete with its pk); one that
    still matches is moved."""
    from sync.events import Cascade, FKRule

    rule = FKRule("line", "fk_line", ("order_id",), ("id",), "cascade", "cascade")
    shape = build_shape("line", {"filter": "order_id < 100",
                                 "indexes": [{"type": "zset", "column": "order_id"}, {"type": "set", "column": "order_id"}],
                                 "stream": {}}, "[tables.line]")
    ap = RedisApplier(aredis, {"orders": TableSpec("orders"), "line": TableSpec("line", shape=shape)})

    def order(old: int, new: int, version: int) -> ChangeEvent:
        c = Cascade({"id": old}, {"id": new}, (rule,))
        return ChangeEvent("orders", Op.UPDATE, (("id", new),), {"id": new}, version, Source.TRIGGER, None, c)

    lines = [ChangeEvent("line", Op.INSERT, (("id", i),), {"id": i, "order_id": o, "note": "n"}, 10 + i,
                         Source.TRIGGER, {"fk_line": (o,)}) for i, o in ((1, 5), (2, 5), (3, 6))]
    assert await ap.apply(lines) == [A, A, A]
    await ap.apply([order(5, 500, 20), order(6, 7, 21)])
    assert not await aredis.exists("line:1") and not await aredis.exists("line:2")
    assert orjson.loads(await aredis.get("line:3"))["order_id"] == 7
    assert await aredis.zrange("line:by:order_id", 0, -1) == [b"line:3"]
    assert {k.decode() async for k in aredis.scan_iter(match="line:order_id:*") if await aredis.scard(k)} == {"line:order_id:7"}
    last = [(f[b"op"], f[b"key"], f[b"pk"]) for _, f in await aredis.xrange("line:changes")][3:]
    assert sorted(last) == [(b"delete", b"line:1", b'{"id":1}'), (b"delete", b"line:2", b'{"id":2}'),
                            (b"update", b"line:3", b'{"id":3}')]
    # the child's own later change that matches again brings it back
    assert await ap.apply([ChangeEvent("line", Op.UPDATE, (("id", 1),), {"id": 1, "order_id": 8, "note": "n"}, 30,
                                       Source.TRIGGER, {"fk_line": (8,)})]) == [A]
    assert await aredis.zrange("line:by:order_id", 0, -1) == [b"line:3", b"line:1"]
