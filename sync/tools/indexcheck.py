"""sync-verify's check of a table's secondary indexes (sync.shape; docs/shaping.md).

What the indexes should hold follows from MySQL alone: a row that exists and passes the filter is
in each zset index with score_of(its column) (none when that is NULL or no number/date), and in the
set of each set index for its column's value; its set-index record lists those sets: the end of its
version key after a newline (apply.lua shaped()), or, written by an older gearsync, its own key
(keys.index_rows_key), which the row's next change moves. Two walks find the differences:

- rows: for each MySQL row the rows pass reads, ZSCORE per zset, SISMEMBER per expected set and
  the record: *missing* (not there), *wrong* (another score, a stale record), *extra* (a zset
  member for a row the filter leaves out);
- members: ZSCAN each zset and SSCAN each set (SCAN over the set template's glob); members whose
  row is gone from MySQL, left out by the filter, or (sets) in a set its value does not name are
  *extra*.

Repair: a problem of a row that MySQL has is repaired by re-applying the row, fenced like any
repair (sync.tools.verify), after deleting its set-index record, so the script adds it to every
set it belongs to again; extra members whose row Redis does not hold, or (sets) whose record does
not name the set, are removed by a script that checks exactly that, in one step, so a live change
that adds the member back meanwhile is never undone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.exceptions

from sync.errors import ApplyError
from sync.keys import index_rows_key, row_key, version_key
from sync.rows.reader import TableReader
from sync.shape import Shape, score_of
from sync.tables import TableSpec
from sync.tools.keypattern import KeyPattern, typed_pk

__all__ = ["IndexChecker", "IndexProblem"]

SCAN_BATCH = 1000

# The set-index record of a row (KEYS[3] its version key, KEYS[4] its legacy record key): `rec`
# (nil: none), `at` where it starts in the version key's value (nil: in the legacy key or none).
_RECORD_LUA = """local v = redis.call('GET', KEYS[3])
local at = v and string.find(v, '\\n', 21, true)
local rec
if at then rec = string.sub(v, at + 1) else rec = redis.call('GET', KEYS[4]) end
"""
_READ_RECORD = _RECORD_LUA + "return rec"
# KEYS[1] an index, KEYS[2] a member (row key), KEYS[3] its version key, KEYS[4] its legacy
# set-index record key; ARGV[1] z or s. Removes the member unless Redis holds the row and (a set)
# the row's record names the set. A record whose row is gone (e.g. after a TRUNCATE by an older
# gearsync, which removed the rows only) goes too.
_DROP_SCRIPT = _RECORD_LUA + """if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[4])
  if at then redis.call('SET', KEYS[3], string.sub(v, 1, at), 'KEEPTTL') end
  if ARGV[1] == 'z' then return redis.call('ZREM', KEYS[1], KEYS[2]) end
  return redis.call('SREM', KEYS[1], KEYS[2])
end
if ARGV[1] == 'z' then return 0 end
if rec and rec ~= '' then
  for _, k in ipairs(cjson.decode(rec)) do if k == KEYS[1] then return 0 end end
end
return redis.call('SREM', KEYS[1], KEYS[2])"""
# KEYS[3], KEYS[4] as above (KEYS[1], KEYS[2]: the row key, unused): the row's set-index record is forgotten (the
# version key keeps its version), so the row's next change adds it to every set it names again.
_FORGET_SCRIPT = _RECORD_LUA + """redis.call('DEL', KEYS[4])
if at then redis.call('SET', KEYS[3], string.sub(v, 1, at - 1), 'KEEPTTL') end
return 0"""


@dataclass(frozen=True, slots=True)
class IndexProblem:
    kind: str                     # missing | wrong | extra
    index: str                    # the zset or set key (or the row's set-index record)
    member: str                   # the row key
    pk: tuple[Any, ...] | None    # canonical pk values of a row MySQL has (None: MySQL has no such row)
    detail: str

    def text(self) -> str:
        return f"{self.index} {self.member} ({self.detail})"


class IndexChecker:
    """Finds and repairs the index differences of one table (see the module docstring)."""

    def __init__(self, reader: TableReader, redis: Any, spec: TableSpec, prefix: str) -> None:
        assert spec.shape is not None
        self.reader = reader
        self.schema = reader.schema
        self.redis = redis
        self.spec = spec
        self.shape: Shape = spec.shape
        self.prefix = prefix
        self.pattern = KeyPattern(spec.key_template, self.schema.name, self.schema.key)

    def _row_key(self, canonical: dict[str, Any]) -> str:
        return row_key(self.spec.key_template, self.schema.name, tuple((k, canonical[k]) for k in self.schema.key))

    async def _read(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for c in calls:
            pipe.execute_command(*c)
        try:
            return await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis read of {len(calls)} index entries failed: {type(exc).__name__}: {exc}") from exc

    # -- rows ------------------------------------------------------------------------------------
    async def check_rows(self, rows: Sequence[dict[str, Any]]) -> list[IndexProblem]:
        """The problems of these MySQL rows (as TableReader returns them) in every index."""
        return await self._check([(self._row_key(c), c) for c in (self.schema.canonical_row(r) for r in rows)])

    async def _check(self, items: Sequence[tuple[str, dict[str, Any] | None]]) -> list[IndexProblem]:
        shape = self.shape
        calls: list[tuple[Any, ...]] = []
        plan: list[tuple[str, str, dict[str, Any] | None, Any]] = []  # what each call checks
        for rk, c in items:
            live = c is not None and shape.matches(c)
            for ix in shape.zsets:
                calls.append(("ZSCORE", ix.zset_key(), rk))
                plan.append(("z", rk, c, score_of(c[ix.column]) if live and c is not None else None))
            if shape.sets:
                want = shape.set_keys(c) if live and c is not None else []
                calls.append(("EVAL", _READ_RECORD, 4, rk, rk, version_key(rk, self.prefix),
                              index_rows_key(rk, self.prefix)))
                plan.append(("r", rk, c, want))
                for k in want:
                    calls.append(("SISMEMBER", k, rk))
                    plan.append(("s", rk, c, k))
        got = await self._read(calls) if calls else []
        out = []
        for (what, rk, c, want), (call, value) in zip(plan, zip(calls, got)):
            pk = tuple(c[k] for k in self.schema.key) if c is not None else None
            if what == "z":
                if want is None and value is not None:
                    out.append(IndexProblem("extra", call[1], rk, pk, "not indexed in MySQL"))
                elif want is not None and value is None:
                    out.append(IndexProblem("missing", call[1], rk, pk, f"score {want}"))
                elif want is not None and float(value) != float(want):
                    out.append(IndexProblem("wrong", call[1], rk, pk, f"score {float(value):g}, expected {want}"))
            elif what == "s":
                if not int(value):
                    out.append(IndexProblem("missing", call[1], rk, pk, "not in the set"))
            else:
                text = value.decode() if isinstance(value, bytes) else value
                if pk is not None and not _same(text, want):
                    out.append(IndexProblem("wrong", call[5], rk, pk, "set-index record differs"))
        return out

    # -- members ---------------------------------------------------------------------------------
    async def _index_keys(self) -> AsyncIterator[tuple[str, str]]:
        for ix in self.shape.zsets:
            yield "z", ix.zset_key()
        for ix in self.shape.sets:
            key = ix.set_key("\x00")  # the set key of a value that stays as it is, to become the glob's "*"
            glob = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in key).replace("\x00", "*")
            async for raw in self.redis.scan_iter(match=glob, count=SCAN_BATCH, _type="set"):
                yield "s", raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw

    async def member_batches(self) -> AsyncIterator[list[IndexProblem]]:
        """The extra members of every index, one batch of members at a time."""
        try:
            async for kind, key in self._index_keys():
                batch: list[str] = []
                it = (self.redis.zscan_iter(key, count=SCAN_BATCH) if kind == "z"
                      else self.redis.sscan_iter(key, count=SCAN_BATCH))
                async for m in it:
                    member = m[0] if kind == "z" else m
                    batch.append(member.decode("utf-8", "surrogateescape") if isinstance(member, bytes) else member)
                    if len(batch) >= SCAN_BATCH:
                        yield await self._check_members(kind, key, batch)
                        batch = []
                if batch:
                    yield await self._check_members(kind, key, batch)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis scan of the indexes failed: {type(exc).__name__}: {exc}") from exc

    async def _check_members(self, kind: str, key: str, members: Sequence[str]) -> list[IndexProblem]:
        rows = await asyncio.to_thread(self._rows_of, members)
        out = []
        for m in members:
            c = rows.get(m)
            live = c is not None and self.shape.matches(c)
            pk = tuple(c[k] for k in self.schema.key) if c is not None else None
            if kind == "z":
                ix = next(i for i in self.shape.zsets if i.zset_key() == key)
                if not live or c is None or score_of(c[ix.column]) is None:
                    out.append(IndexProblem("extra", key, m, pk, "no such row in MySQL" if c is None else "not indexed in MySQL"))
            elif not live or c is None or key not in self.shape.set_keys(c):
                out.append(IndexProblem("extra", key, m, pk, "no such row in MySQL" if c is None else "not in this set"))
        return out

    def _rows_of(self, members: Sequence[str]) -> dict[str, dict[str, Any]]:
        pks = []
        for m in members:
            texts = self.pattern.parse(m)
            pk = typed_pk(self.schema, texts) if texts is not None else None
            if pk is not None:
                pks.append(tuple(v for _, v in pk))
        rows = self.reader.rows_by_key(pks, versioned=False) if pks else []
        return {self._row_key(c): c for c in (self.schema.canonical_row(r) for r in rows)}

    # -- recheck and repair ----------------------------------------------------------------------
    async def recheck(self, problems: Sequence[IndexProblem]) -> list[IndexProblem]:
        """The problems still there (changes in flight settle): rows and members read again."""
        members = sorted({p.member for p in problems})
        rows = await asyncio.to_thread(self._rows_of, members)
        now = await self._check([(m, rows.get(m)) for m in members])
        for p in problems:
            if p.kind == "extra" and p.index not in {ix.zset_key() for ix in self.shape.zsets}:
                now += await self._check_members("s", p.index, [p.member])
        seen = {(p.kind, p.index, p.member) for p in problems}
        return [p for p in now if (p.kind, p.index, p.member) in seen]

    async def forget_records(self, problems: Sequence[IndexProblem]) -> None:
        """Delete the set-index records of the rows about to be re-applied (module docstring)."""
        members = sorted({p.member for p in problems if p.pk is not None})
        if members and self.shape.sets:
            await self._read([("EVAL", _FORGET_SCRIPT, 4, m, m, version_key(m, self.prefix),
                               index_rows_key(m, self.prefix)) for m in members])

    async def drop(self, problems: Sequence[IndexProblem]) -> int:
        """Remove extra members whose row Redis does not hold (zset) / whose record omits the set."""
        zsets = {ix.zset_key() for ix in self.shape.zsets}
        calls = [("EVAL", _DROP_SCRIPT, 4, p.index, p.member, version_key(p.member, self.prefix),
                  index_rows_key(p.member, self.prefix), "z" if p.index in zsets else "s")
                 for p in problems if p.kind == "extra"]
        return sum(int(x) for x in await self._read(calls)) if calls else 0


def _same(text: str | None, want: Sequence[str]) -> bool:
    """A set-index record (JSON list) naming exactly `want`."""
    if not text:
        return not want
    try:
        return sorted(orjson.loads(text)) == sorted(want)
    except orjson.JSONDecodeError:
        return False
