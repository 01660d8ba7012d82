"""RedisApplier: apply a batch of changes to Redis in one round trip, fenced by row versions.

One server-side Lua script (SCRIPT LOAD once, then EVALSHA; reloaded after NOSCRIPT) applies a
whole batch atomically and in order, and returns one status per event:

- versioned change (ChangeEvent): applied only if its version is newer than the version stored
  under `keys.version_key(row key)`; an equal or older version is STALE (redelivery is harmless).
  Versions are stored as 20-digit zero-padded decimal strings and compared in Lua as two
  10-digit halves, so no version ever passes through a float. A child row of a cascading FK may
  have a tie-breaker and its fk index sets after the version (apply.lua, split_stored_version).
    insert/update, json:  SET row <encode_json(row)> [PX ttl]; SET version
    insert/update, hash:  DEL row; HSET row <encode_hash(row)>; [PEXPIRE row ttl]; SET version
    delete:               DEL row; SET version PX tombstone_ms   (the tombstone)
  The version key of a row without TTL never expires (it is the fence). With a TTL it expires
  after max(ttl, tombstone ttl). After a tombstone expires, a late older upsert can resurrect the
  row: tombstone_ttl_s bounds how late a redelivered change may arrive.
- classic change (ClassicSet): SET key payload, unversioned, always APPLIED.
- Per table, in the same script call: HSET <prefix>:stats:<table> last_applied_ms <server ms>,
  HINCRBY applied_total <n applied>.
- Shaping (a TableSpec's `shape`, sync.shape, docs/shaping.md): exclude/rename make the stored
  row, a row the filter leaves out is applied as a delete at its version, and the table's zset/set
  indexes and change stream are written in the same call as the row, only when its fence passes
  (_shape_event, apply.lua shaped()).

Standalone Redis: the batch is ONE EVALSHA. Redis Cluster: events are grouped by hash slot (a row
key and its version key always share a slot) and each group is one EVALSHA, all sent in one
cluster pipeline; the stats keys live in other slots, so they are written by a second pipeline
after the first (only when something was applied), stamped with the client's clock.

Standalone requests are packed here and sent on a pooled connection (redis-py's generic packer
costs ~3 us per argument); a connection error on a pooled connection is retried once on a fresh
one (it may predate a server restart), without redis-py's retry/back-off. A single-connection
client goes through redis-py's evalsha instead.

Errors: any Redis or connection failure raises ApplyError (with the redis exception as its
cause); nothing is swallowed. The caller must then not acknowledge the batch and retry it later:
that is safe, the script is idempotent for versioned changes. A script that fails halfway (e.g.
OOM) keeps the writes made before the failure; the retry sees them as STALE.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from sync.apply.cascade_rows import (
    CascadeStep,
    DerivedChange,
    MovedChange,
    cascade_record,
    cascade_starts,
    cascades,
    follow_records,
    from_field,
    rule_from_json,
    same_key_text,
    split_stored_version,
    text_row,
)
from sync.apply.resp import pack_command
from sync.errors import ApplyError, ConfigError, PayloadError, short_error
from sync.events import MAX_CASCADE_DEPTH, ChangeEvent, ClassicSet, FKRule, Op
from sync.keys import (
    DEFAULT_PREFIX,
    TableKeyMatch,
    check_prefix,
    escape,
    fk_cascade_key,
    fk_cascade_marker_key,
    fk_cascade_marker_of,
    fk_cascade_pattern,
    fk_index_key,
    fk_index_prefix,
    fk_markers_ready_key,
    fk_rows_key,
    index_rows_prefix,
    stats_key,
)
from sync.rows.rowcodec import decode_json, encode_hash, encode_json
from sync.shape import Shape, score_of
from sync.tables import TableSpec

__all__ = ["Outcome", "RedisApplier", "APPLY_SCRIPT", "APPLY_SCRIPT_SHA"]


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    STALE = "stale"


# The record layout of KEYS/ARGV is described at the top of apply.lua.
_REC = 44
_RETRY = b"!"           # the script's reply when a guard did not hold (cascades)
_LATE = b"?"            # ... when a change is older than a cascade record of its refs
_CHECKS = b"#"          # ... when a cascade record may exist for refs whose checks were left out
MAX_CASCADE_TRIES = 20
APPLY_SCRIPT = (Path(__file__).with_name("apply.lua")).read_text(encoding="utf-8")

_ZERO_VERSION = "0" * 20
_OP_LETTER = {Op.INSERT: "i", Op.UPDATE: "u", Op.DELETE: "d"}  # (shape) apply.lua shaped()
# (shape) the delete of a derived upsert (apply.lua ops): fenced, guarded, with a tie-breaker
_DELETE_OF = {"J": "D", "H": "D", "j": "d", "h": "d", "K": "E", "L": "E"}
_DELETE = Op.DELETE
# What SCRIPT LOAD returns for APPLY_SCRIPT (Redis names a script by the SHA1 of its text).
APPLY_SCRIPT_SHA = hashlib.sha1(APPLY_SCRIPT.encode()).hexdigest()
# KEYS[1] a cascade record, KEYS[2] its marker: the marker lives at least as long as the record.
_MARK_SCRIPT = """local t = redis.call('PTTL', KEYS[1])
if t == -1 then redis.call('SET', KEYS[2], '1')
elseif t > 0 then
  local m = redis.call('PTTL', KEYS[2])
  if m ~= -1 and m < t then redis.call('SET', KEYS[2], '1', 'PX', t) end
end"""


def _shape_tail(shaped: Mapping[int, str], tables: Mapping[_ShapePlan, str], records: int, values: list[Any],
                svals: list[Any], ixprefix: str) -> None:
    """The shape section of a script call (apply.lua: records followed by 'X'): the legacy set-record
    key prefix, the values of the records' index and stream writes in record order (`svals`), per
    shaped table its zset keys and stream (_ShapePlan.head), then the descriptor as the last ARGV:
    the ARGV index of the section's first value (10 digits), the number of tables (3 digits), where
    the tables' part starts (7 digits, from the section's first value) and 15 characters per record
    (`shaped`: _Shaping.add; '0' * 15 = none). The index and stream keys are not declared in KEYS:
    indexes and streams need a standalone Redis (RedisApplier refuses a Cluster), and a row's old
    sets, which the script reads from its version key, could not be."""
    head = f"{10 + len(values):010d}{len(tables):03d}{1 + len(svals):07d}"
    values.append(ixprefix)
    values += svals
    for plan in tables:
        values += plan.head
    get = shaped.get
    values.append(head + "".join([get(at, _NO_SHAPE) for at in range(records)]))


_NO_SHAPE = "0" * 15
_TABLE_PK = re.compile(r"\{table\}([^{}]*:[^{}]*)\{pk\}")  # (shape) a key template ending in the pk text
_PK_FROM_KEY = {"1": "a", "2": "b", "3": "c"}  # (shape) a stream flag when the script builds the pk from the key


def _shape_desc(tables: dict[_ShapePlan, str], plan: _ShapePlan, flags: str, at: int) -> str:
    """A record's 15 characters of the descriptor (_shape_tail): its table's number in the call
    (3 digits, numbered as met), its `flags` (_shape_writes) and where its values start in the
    section (`at`: their index in svals; 7 digits, the section's first value, the prefix, is 0)."""
    return f"{tables.get(plan) or tables.setdefault(plan, f'{len(tables) + 1:03d}')}{flags}{at + 1:07d}"


class _ShapePlan:
    """A table's shaping (sync.shape), precomputed for the hot path: the columns a row needs, the
    zset keys, the set keys' text around the value, the stream's key and MAXLEN."""

    __slots__ = ("shape", "needs", "filter", "reshapes", "zsets", "zcols", "zgone", "sets", "set1", "stream", "tagged",
                 "json", "named", "by_value", "_pk", "pk_from", "head")

    def __init__(self, shape: Shape, tagged: bool, json: bool, template: str) -> None:
        self.shape = shape
        self.needs = shape.columns
        self.filter = shape.filter
        self.reshapes = shape.reshapes
        self.zsets = [(ix.column, ix.zset_key()) for ix in shape.zsets]
        self.zcols = tuple(col for col, _key in self.zsets)
        self.zgone = ("",) * len(self.zsets)  # a delete's zset values: remove from each
        self.sets = []
        for ix in shape.sets:
            head, tail = ix.set_key("\x00").split("\x00")  # the key around the (escaped) value
            self.sets.append((ix.column, head, tail))
        self.set1 = self.sets[0][0] if len(self.sets) == 1 else ""  # the column of a table's only set index
        self.stream = (shape.stream.key, str(shape.stream.maxlen)) if shape.stream is not None else None
        # A template "{table}<literal>{pk}": a row key ends with its pk text after a fixed start, and
        # the script builds the stream's pk of a one-integer-column pk from the key (_pk: its column
        # and its JSON up to the value; pk_from: where the value starts in the key, 1-based).
        m = _TABLE_PK.fullmatch(template)
        self.pk_from = len(escape(shape.table) + m.group(1)) + 1 if m is not None and shape.stream is not None else 0
        self._pk: tuple[str, str] = ("", "")
        # what the script gets once per call (apply.lua): the zset keys, the stream and its MAXLEN,
        # then the stream's pk from the key: its JSON head and pk_from ('' and 0: none)
        self.head = [str(len(self.zsets)), *(key for _col, key in self.zsets), *(self.stream or ("", "0")), "", "0"]
        self.tagged = tagged  # the version key holds the row key as it is (else in braces)
        self.json = json
        self.named = {new: old for old, new in shape.rename}  # a stored field -> its column
        self.by_value: dict[Any, tuple[str, str]] = {}  # one_set's cache: value -> (ns or set key, record value)

    def one_set(self, value: Any) -> tuple[str, str]:
        """The ns character and the record value of a row of one set index whose column holds
        `value` ('r': the record names the set plainly, '["<set>"]'; '1': the set key follows it)."""
        cached = type(value) is int or type(value) is str  # a column's values have one type
        got = self.by_value.get(value) if cached else None
        if got is None:
            _col, head, tail = self.sets[0]
            key = head + escape(value) + tail
            text = orjson.dumps([key]).decode()
            got = ("r", text) if text == '["' + key + '"]' else (key, text)
            if cached:
                if len(self.by_value) >= 65536:
                    self.by_value.clear()
                self.by_value[value] = got
        return got

    def pk_json(self, pk: tuple[tuple[str, Any], ...]) -> str | None:
        """The pk as a JSON object (the stream's pk field); None when the script builds it from the
        row key (pk_from: one integer column, the one of the table's first such event)."""
        if len(pk) == 1:
            ((col, value),) = pk
            if type(value) is int:
                name, head = self._pk
                if name != col:
                    if name:
                        return orjson.dumps(dict(pk)).decode()  # (another column: not from the key)
                    head = orjson.dumps({col: 0}).decode()[:-2]
                    self._pk = (col, head)
                    if self.pk_from:
                        self.head[-2:] = [head, str(self.pk_from)]
                return None if self.pk_from else f"{head}{value}}}"
        return orjson.dumps(dict(pk)).decode()


class _Table:
    """Per-table precomputed state used on the hot path."""

    __slots__ = ("spec", "build", "op_upsert", "ttl_ms", "vk_tagged", "stats_key", "rows", "fks", "shape")

    def __init__(self, spec: TableSpec, prefix: str) -> None:
        self.spec = spec
        self.build = spec.build_key
        self.op_upsert = "J" if spec.format == "json" else "H"
        self.ttl_ms = (spec.ttl_s or 0) * 1000
        # Literal braces in a valid template always form the hash tag; values never add braces.
        self.vk_tagged = "{{" in spec.key_template
        self.stats_key = stats_key(spec.name, prefix)
        # The fk index sets are named by child table and FK: they hold the row keys of every key
        # template writing that table to this Redis (e.g. two capture paths side by side); a
        # cascade follows only the members of this table's own template.
        self.rows = TableKeyMatch(spec.key_template, spec.name)
        self.fks: dict[str, _FK] = {}  # fk name -> its key starts (filled as refs name them)
        self.shape = (_ShapePlan(spec.shape, self.vk_tagged, spec.format == "json", spec.key_template)
                      if spec.shape is not None else None)


class _FK:
    """Per (child table, fk): the start of its index set keys (and of their JSON spelling, without
    the closing quote), of its cascade record keys, and its marker key (see apply.lua)."""

    __slots__ = ("index", "index_json", "check", "marker", "pk_col", "fkr_head", "by_int")

    def __init__(self, table: str, fk: str, template: str, prefix: str) -> None:
        self.index = fk_index_prefix(table, fk, prefix)
        self.index_json = orjson.dumps(self.index).decode()[:-1]
        self.check = fk_cascade_key(table, fk, (), template, prefix)
        self.marker = fk_cascade_marker_key(table, fk, template, prefix)
        # the start of the fkr value of a row of one pk column `pk_col` in one index set of this fk
        self.pk_col = ""
        self.fkr_head = ""
        self.by_int: dict[int, bytes] = {}  # FK value -> fkr value (UTF-8), rows of one pk column `pk_col`

    def fkr(self, pk_col: str, text: str) -> str:
        """The fkr value (JSON [[pk_col], index set]) of a row in the set of the values `text`
        (needing no JSON escaping): what orjson writes for that list."""
        if pk_col is not self.pk_col and pk_col != self.pk_col:
            self.pk_col = pk_col
            self.fkr_head = orjson.dumps([[pk_col]]).decode()[:-1] + "," + self.index_json
            self.by_int.clear()
        return self.fkr_head + text + '"]'

    def fkr_of_int(self, pk_col: str, value: int) -> bytes:
        """fkr() of one integer FK value, encoded (cached: many children share a parent)."""
        if pk_col is self.pk_col or pk_col == self.pk_col:
            got = self.by_int.get(value)
            if got is not None:
                return got
        if len(self.by_int) >= 65536:
            self.by_int.clear()
        got = self.by_int[value] = self.fkr(pk_col, str(value)).encode()
        return got


class RedisApplier:
    """Applies batches of ChangeEvent / ClassicSet to Redis; see the module docstring."""

    def __init__(
        self,
        redis: Any,
        tables: Mapping[str, TableSpec],
        *,
        prefix: str = DEFAULT_PREFIX,
        tombstone_ttl_s: int = 86400,
        stats: bool = True,
    ) -> None:
        if type(tombstone_ttl_s) is not int or tombstone_ttl_s <= 0:
            raise ConfigError(f"tombstone_ttl_s: {tombstone_ttl_s!r}; expected a positive number of seconds")
        self._redis = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._prefix = check_prefix(prefix)
        self._vprefix = prefix + ":v:"
        # fk_rows_key's spelling: the script builds a row's fkr key from it and the row's version key
        self._fkr_prefix = prefix + ":fkr:"
        # keys.index_rows_key's spelling: the row's version key with this prefix instead (shaping)
        self._ixprefix = index_rows_prefix(prefix)
        # marker key -> until when (time.monotonic()) its checks go with each change: a marker met
        # live (the script's '#' reply); shared with the with_redis() copies
        self._live: dict[str, float] = {}
        self._marked = False  # the cascade records of older versions have their markers
        self._tomb_s = tombstone_ttl_s
        self._tomb_ms = str(tombstone_ttl_s * 1000)
        self._stats = stats
        self._tables: dict[str, _Table] = {}
        for name, spec in tables.items():
            if spec.name != name:
                raise ConfigError(f"tables: key {name!r} holds the spec of {spec.name!r}")
            if self._cluster and spec.shape is not None and (spec.shape.indexes or spec.shape.stream):
                raise ConfigError(f"[tables.{name}]: indexes and stream need a standalone Redis, not a Cluster")
            self._tables[name] = _Table(spec, prefix)
        self._sha: str | None = None

    def with_redis(self, redis: Any) -> RedisApplier:
        """The same applier (tables, prefix, options) on another client, e.g. one of another event loop."""
        other = copy.copy(self)
        other._redis = redis
        other._cluster = isinstance(redis, RedisCluster)
        other._sha = None
        return other

    @property
    def tables(self) -> Mapping[str, TableSpec]:
        return {name: t.spec for name, t in self._tables.items()}

    # -- keys ------------------------------------------------------------------------------
    def row_key(self, ev: ChangeEvent) -> str:
        """The Redis key of the event's row. Raises PayloadError for an unknown table."""
        t = self._tables.get(ev.table)
        if t is None:
            raise PayloadError(f"table: {ev.table!r} is not configured; expected one of {', '.join(sorted(self._tables))}")
        return t.build(ev.table, ev.pk)

    def check(self, ev: ChangeEvent | ClassicSet) -> None:
        """Raise PayloadError if `ev` cannot be applied (unknown table, pk column missing for the
        key template). The worker calls it per job, to dead-letter a bad job alone."""
        if type(ev) is ChangeEvent:
            if ev.op is not Op.CASCADE:
                self.row_key(ev)
                plan = self._tables[ev.table].shape
                row = ev.row
                if plan is not None and row is not None:
                    for col in plan.needs:  # a filter/index column missing from the row
                        if col not in row:
                            plan.shape.check_row(row)
            if ev.refs is not None or ev.cascade is not None:
                self.check_cascade(ev)
        elif type(ev) is not ClassicSet:
            raise PayloadError(f"expected a ChangeEvent or ClassicSet, got {type(ev).__name__}")

    def check_cascade(self, ev: ChangeEvent) -> None:
        """Raise PayloadError if the event's refs/cascade cannot be applied here (Redis Cluster, or a
        cascade into a table this applier does not serve)."""
        if self._cluster:
            raise PayloadError(f"table {ev.table!r}: refs/cascade: cascades need a standalone Redis, not a Cluster")
        if ev.cascade is None:
            return  # a child row's refs (every job of a child table): nothing more to check
        todo = list(ev.cascade.fks)
        while todo:
            rule = todo.pop()
            if rule.table not in self._tables:
                raise PayloadError(
                    f"cascade into table {rule.table!r}, which this worker does not serve; serve FK-related "
                    "tables from one sync-worker"
                )
            todo.extend(rule.children)

    # -- script ----------------------------------------------------------------------------
    async def load_script(self) -> str:
        try:
            sha = await self._redis.script_load(APPLY_SCRIPT)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis SCRIPT LOAD failed: {short_error(exc)}") from exc
        self._sha = sha.decode() if isinstance(sha, bytes) else sha
        if not self._marked and not self._cluster:
            await self._mark_old_records()
        return self._sha

    async def _mark_old_records(self) -> None:
        """Give each cascade record written before markers existed (an older gearsync) its marker,
        once per Redis: until then the script would skip its check (see apply.lua)."""
        ready = fk_markers_ready_key(self._prefix)
        try:
            if not await self._redis.exists(ready):
                async for key in self._redis.scan_iter(match=fk_cascade_pattern(self._prefix), count=1000):
                    text = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
                    marker = fk_cascade_marker_of(text, self._prefix)
                    if marker is not None:
                        await self._redis.eval(_MARK_SCRIPT, 2, key, marker)
                await self._redis.set(ready, "1")
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis: marking the cascade records failed: {short_error(exc)}") from exc
        self._marked = True

    def _refs(self, ev: ChangeEvent, t: _Table, keys: list[Any], marks: dict[str, str],
              checks: list[tuple[str, str]], after: int) -> tuple[str, int]:
        """For a child row event (refs): appends the marker of each of its FKs to `marks` (with its
        flag), and the checks of those flagged '1' (key, version) to `checks`; returns the row's new
        fkr value and the number of its index sets appended to `keys`: 0 when there is none, or one
        that the fkr value names plainly (see apply.lua)."""
        refs: dict[str, tuple[Any, ...]] = ev.refs  # type: ignore[assignment]  # the caller checked
        fks = t.fks
        indexed = ev.op is not Op.DELETE
        sets: list[str] = []
        fk = None
        text = ""
        plain = True  # the text needs no JSON escaping
        for name, values in refs.items():
            fk = fks.get(name)
            if fk is None:
                fk = fks[name] = _FK(ev.table, name, t.spec.key_template, self._prefix)
            if len(values) == 1 and type(values[0]) is int:
                text = str(values[0])
            else:
                text = ":".join([escape(v) for v in values])
                plain = '"' not in text and "\\" not in text and text.isprintable()
            if indexed:
                sets.append(fk.index + text)
            flag = marks.get(fk.marker)
            if flag is None:
                flag = marks[fk.marker] = "1" if self._live and self._live.get(fk.marker, 0.0) > time.monotonic() else "0"
            if flag == "1":
                checks.append((fk.check + text, f"{max(ev.version, after):020d}"))
        if not sets:
            return "", 0
        if len(sets) == 1 and plain and len(ev.pk) == 1 and fk is not None:
            return fk.fkr(ev.pk[0][0], text), 0
        sets.sort()
        keys.extend(sets)
        return orjson.dumps([[c for c, _ in ev.pk], *sets]).decode(), len(sets)

    def _build_args(
        self, events: Sequence[ChangeEvent | ClassicSet | DerivedChange | MovedChange], guards: Mapping[str, str | bytes] | None = None
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV for one script call over `events` (op cascade events have no record)."""
        keys: list[Any] = list(guards or ())
        values: list[Any] = list((guards or {}).values())
        marks: dict[str, str] = {}
        checks: list[tuple[str, str]] = []
        meta: list[str] = []
        stats: dict[str, int] = {}
        shaped: dict[int, str] = {}  # (shape) record number -> its descriptor (_shape_tail)
        stabs: dict[_ShapePlan, str] = {}  # (shape) a table -> its number in the call
        svals: list[Any] = []  # (shape) the records' index and stream values
        tables = self._tables
        vprefix = self._vprefix
        live = self._live
        want_stats = self._stats and not self._cluster
        for ev in events:
            late, after = False, 0
            if type(ev) is MovedChange:
                late, after = ev.atleast, ev.after
                if late:  # K/L/E: its own version is the tie-breaker, the first of its values
                    values.append(f"{ev.original:020d}")
                ev = ev.event
            if type(ev) is ChangeEvent:
                if ev.op is Op.CASCADE:
                    continue  # no record: only its derived changes are written
                t = tables.get(ev.table)
                if t is None:
                    raise PayloadError(
                        f"table: {ev.table!r} is not configured; expected one of {', '.join(sorted(tables))}"
                    )
                rk = t.build(ev.table, ev.pk)
                row: Any = ev.row
                keys.append(rk)
                keys.append(vprefix + rk if t.vk_tagged else vprefix + "{" + rk + "}")
                if t.shape is not None:
                    n0 = len(svals)
                    ev, row, flags = self._shape_event(t.shape, ev, svals)
                    if len(svals) > n0:  # (no index, no stream: nothing for the script to do)
                        shaped[len(meta)] = _shape_desc(stabs, t.shape, flags, n0)
                si = 0
                if want_stats:
                    si = stats.get(t.stats_key, 0)
                    if not si:
                        si = stats[t.stats_key] = len(stats) + 1
                idx = "000"
                refs = ev.refs
                if refs is not None:
                    # A child change (a delete too: the row's old refs) older than a cascade record
                    # of its refs is late: '?' (see apply.lua and _move_late).
                    fkr: str | bytes = ""
                    if len(refs) == 1 and len(ev.pk) == 1 and ev.op is not _DELETE:
                        # the common case: one FK of one integer column, no live cascade marker met
                        ((name, vs),) = refs.items()
                        fk = t.fks.get(name)
                        if fk is not None and len(vs) == 1 and type(vs[0]) is int and fk.marker not in live:
                            marks[fk.marker] = "0"
                            col = ev.pk[0][0]
                            fkr = (fk.by_int.get(vs[0]) if col is fk.pk_col else None) or fk.fkr_of_int(col, vs[0])
                            idx = "001"
                    if not fkr:
                        fkr, nsets = self._refs(ev, t, keys, marks, checks, after)
                        idx = "001" if not nsets else f"{nsets + 1:03d}"
                if ev.op is Op.DELETE:
                    meta.append(f"{'E' if late else 'D'}{ev.version:020d}000000000000{si:03d}00000{idx}")
                elif t.op_upsert == "J":
                    values.append(row if type(row) is bytes else encode_json(row))  # shaped: encoded already
                    meta.append(f"{'K' if late else 'J'}{ev.version:020d}{t.ttl_ms:012d}{si:03d}00001{idx}")
                else:
                    n = 0
                    for f, v in encode_hash(row).items():  # not a DELETE: ChangeEvent checked row is a dict
                        values.append(f)
                        values.append(v)
                        n += 2
                    if n > 99998:
                        raise PayloadError(f"row: {n // 2} non-null columns; expected at most 49999 for a hash")
                    meta.append(f"{'L' if late else 'H'}{ev.version:020d}{t.ttl_ms:012d}{si:03d}{n:05d}{idx}")
                if refs is not None:
                    values.append(fkr)
            elif type(ev) is ClassicSet:
                keys.append(ev.key)
                keys.append(ev.key)
                values.append(ev.payload)
                meta.append("C" + _ZERO_VERSION + "000000000000000" + "00001000")
            elif type(ev) is DerivedChange and ev.op in ("M", "N"):  # a cascade record (rk: its key; sets: its marker)
                keys.append(ev.rk)
                keys.append(ev.sets[0])
                values.extend(ev.values)
                meta.append(f"{ev.op}{ev.version:020d}000000000000000{len(ev.values):05d}000")
            elif type(ev) is DerivedChange:
                t = tables[ev.table]
                flags = ""
                n0 = len(svals)
                if t.shape is not None:
                    ev, flags = self._shape_derived(t.shape, ev, svals)  # (shape)
                keys.append(ev.rk)
                keys.append(vprefix + ev.rk if t.vk_tagged else vprefix + "{" + ev.rk + "}")
                keys.extend(ev.sets)
                si = 0
                if want_stats:
                    si = stats.get(t.stats_key, 0)
                    if not si:
                        si = stats[t.stats_key] = len(stats) + 1
                ttl = 0 if ev.op in "DdE" else t.ttl_ms
                meta.append(f"{ev.op}{ev.version:020d}{ttl:012d}{si:03d}{len(ev.values):05d}{len(ev.sets) + 1:03d}")
                if ev.tie:
                    values.append(ev.tie)
                values.extend(ev.values)
                values.append(ev.fkr)
                if len(svals) > n0:
                    shaped[len(meta) - 1] = _shape_desc(stabs, t.shape, flags, n0)  # type: ignore[arg-type]  # shaped
            else:
                raise PayloadError(f"expected a ChangeEvent or ClassicSet, got {type(ev).__name__}")
        if len(stats) > 999:
            raise PayloadError(f"batch: {len(stats)} tables in one batch; expected at most 999")
        keys.extend(stats)
        n = len(guards or ())
        if marks:
            keys[n:n] = [*marks, *[k for k, _ in checks]]
            values[n:n] = [v for _, v in checks]
        if shaped:
            _shape_tail(shaped, stabs, len(meta), values, svals, self._ixprefix)
            meta.append("X")
        return keys, [self._tomb_ms, "".join(meta), len(stats), n, len(checks), len(marks), "".join(marks.values()),
                      vprefix, self._fkr_prefix, *values]

    # -- shaping (sync.shape): the row as stored, its index and stream writes ------------------------
    def _shape_event(self, plan: _ShapePlan, ev: ChangeEvent, out: list[Any]) -> tuple[ChangeEvent, Any, str]:
        """(the event to apply, the row to store (json: encoded already), its flags in the script's
        shape section: _shape_writes, which appends its values to `out`): a row the filter leaves
        out becomes a delete at its version; exclude/rename make the stored row."""
        row = ev.row
        if row is not None:
            for col in plan.needs:
                if col not in row:
                    plan.shape.check_row(row)
            if plan.filter is not None and not plan.filter.matches(row):
                ev, row = replace(ev, op=Op.DELETE, row=None), None
        stored: Any = plan.shape.project(row) if row is not None and plan.reshapes else row
        stored, flags = self._shape_writes(plan, _OP_LETTER[ev.op], plan.pk_json(ev.pk) if plan.stream else "", row,
                                           stored, out)
        return ev, stored, flags

    def _shape_derived(self, plan: _ShapePlan, ev: DerivedChange, out: list[Any]) -> tuple[DerivedChange, str]:
        """(the change to apply, its flags; its index and stream values appended to `out`) of a
        change a cascade derived (sync.apply.cascade_rows) from the row as stored: its indexes
        follow the stored columns (an index of an excluded column is left as it is); a row the
        filter leaves out (every filter column stored) becomes a delete; the stream's pk is read
        from the row when the change names its key columns, else null; a delete's from the row it
        removes."""
        if ev.op in "dDE":
            return ev, self._shape_writes(plan, "d", ev.pk or "null", None, None, out)[1]
        stored: dict[str, Any] = (orjson.loads(ev.values[0]) if plan.json else
                                  {f.decode(): v.decode("utf-8", "replace") for f, v in zip(ev.values[::2], ev.values[1::2])})
        row = {plan.named.get(f, f): v for f, v in stored.items()} if plan.named else stored
        cols = orjson.loads(ev.fkr)[0] if ev.fkr else None
        pk = orjson.dumps({c: row.get(c) for c in cols}).decode() if cols else "null"
        filt = plan.filter
        if filt is not None and all(col in row for col in filt.columns) and not filt.matches(row):
            ev = replace(ev, op=_DELETE_OF[ev.op], values=[])
            return ev, self._shape_writes(plan, "d", pk, None, None, out)[1]
        return ev, self._shape_writes(plan, "u", pk, row, stored, out, partial=True)[1]

    @staticmethod
    def _shape_writes(plan: _ShapePlan, op: str, pk: str | None, row: Mapping[str, Any] | None, stored: Any,
                      out: list[Any], *, partial: bool = False) -> tuple[Any, str]:
        """(the stored row, json: encoded; the record's flags in the shape section, apply.lua
        shaped()), its values appended to `out`. The flags: z ('1': one value per zset index:
        score, '' remove, '~' leave as is), s ('1': the table has set indexes: the set record (JSON
        list, '' none) and the sets follow), the number of sets ('r': one, named in the record
        alone), the stream (0 none, 1 the row is the json value the script stores, 2 the row
        follows the pk, 3 no row; a, b, c: the same, `pk` None: the script builds it from the row
        key, _ShapePlan.pk_json), `op` (i, u, d). `row`: MySQL column names, None for a delete;
        `partial`: the row may lack index columns (their indexes are left as they are)."""
        add = out.append
        z = "0"
        if plan.zcols:
            z = "1"
            if row is None:
                out += plan.zgone
            else:
                for col in plan.zcols:
                    if partial and col not in row:
                        add("~")
                    else:
                        v = row[col]
                        add(str(v) if type(v) is int else (score_of(v) or ""))
        ns, s = "0", "0"
        set1 = plan.set1
        if plan.sets and not (partial and row is not None and any(col not in row for col, _, _ in plan.sets)):
            s = "1"
            if row is None:
                add("")
            elif set1:
                value = row[set1]
                if value is None:
                    add("")
                else:
                    got = plan.by_value.get(value) if type(value) is int or type(value) is str else None
                    key, text = got or plan.one_set(value)
                    add(text)
                    if key == "r":
                        ns = "r"  # the record names the set
                    else:
                        add(key)
                        ns = "1"
            else:
                member_of = sorted(head + escape(row[col]) + tail for col, head, tail in plan.sets if row[col] is not None)
                ns = str(len(member_of))
                out += (orjson.dumps(member_of).decode() if member_of else "", *member_of)
        xf = "0"
        if plan.stream is not None:
            # the script adds the row key and the version; a json row is the value it stores
            if pk is not None:
                add(pk)
            xf = "3"
            if stored is not None:
                encoded = stored if type(stored) is bytes else encode_json(stored)
                if plan.json:
                    stored, xf = encoded, "1"  # the stored value (_build_args), and the stream's row (the script)
                else:
                    add(encoded)
                    xf = "2"
            if pk is None:
                xf = _PK_FROM_KEY[xf]
        return stored, z + s + ns + xf + op

    # -- for a caller's own synchronous connection (standalone Redis) ------------------------
    def pack_apply(self, events: Sequence[ChangeEvent | ClassicSet]) -> bytes:
        """The packed EVALSHA request that applies `events` (same script, keys and arguments as
        apply() on a standalone Redis), for a caller that writes it on its own connection, e.g.
        sync-binlog's writer, which sends it and reads the reply later. Raises PayloadError like
        apply(). The reply goes to parse_reply(); NOSCRIPT means: send pack_script_load() first."""
        keys, argv = self._build_args(events)
        return pack_command(("EVALSHA", APPLY_SCRIPT_SHA, len(keys), *keys, *argv))

    @staticmethod
    def pack_script_load() -> bytes:
        """The packed SCRIPT LOAD of the apply script (its reply is APPLY_SCRIPT_SHA)."""
        return pack_command(("SCRIPT", "LOAD", APPLY_SCRIPT))

    @staticmethod
    def late_reply(reply: Any) -> bool:
        """The script wrote nothing: a change in the batch is older than a cascade that already ran
        for its refs, or a cascade record may exist for refs sent without their checks; apply()
        moves such changes and adds the checks (pack_apply's caller: send the batch there)."""
        return reply == _LATE or reply == "?" or (isinstance(reply, (bytes, str)) and reply[:1] in (_CHECKS, "#"))

    @staticmethod
    def parse_reply(reply: Any, n: int) -> list[Outcome]:
        """One Outcome per event from the script's reply to a batch of `n` events (ApplyError when
        the reply is not n statuses)."""
        return RedisApplier._outcomes(reply, n)

    # -- apply -----------------------------------------------------------------------------
    async def apply(self, events: Sequence[ChangeEvent | ClassicSet]) -> list[Outcome]:
        """Apply `events` in order; one Outcome per event, same order.

        Raises PayloadError (before touching Redis) if an event cannot be keyed, and ApplyError
        if Redis fails: then nothing may be acknowledged, and retrying the batch is safe.
        """
        if not events:
            return []
        if self._cluster:
            return await self._apply_cluster(events)
        if not any(type(ev) is ChangeEvent and ev.cascade is not None for ev in events):
            reply = await self._run(events)
            if not self.late_reply(reply):
                return self._outcomes(reply, len(events))
        # A cascade reads the children's state first, so what comes before it must be in Redis:
        # one call per cascading event, with the events up to the next one. A change older than a
        # cascade record ('?': nothing written) is moved as that cascade moved its rows, then the
        # rest is applied again from there.
        todo: list[ChangeEvent | ClassicSet | MovedChange] = list(events)
        out: list[Outcome] = []
        start, n = 0, len(todo)
        moves = 0
        while start < n:
            end = start + 1
            while end < n and not cascades(todo[end]):
                end += 1
            got = await self._apply_segment(todo[start:end])
            if got is None:
                moves += 1
                if moves > MAX_CASCADE_TRIES:
                    raise ApplyError(f"changes of {todo[start]!r:.80} kept meeting new cascade records during "
                                     f"{MAX_CASCADE_TRIES} tries; retry the batch later")
                todo[start:] = await self._move_late(todo[start:])
                continue
            out += got
            start = end
        return out

    async def _run(self, events: Sequence[ChangeEvent | ClassicSet | DerivedChange | MovedChange],
                   guards: Mapping[str, str | bytes] | None = None) -> Any:
        """The script's reply to `events` (and `guards`), with the checks of the markers it met live
        added as needed (its '#' reply: nothing written)."""
        for _ in range(MAX_CASCADE_TRIES):
            keys, argv = self._build_args(events, guards)
            reply = await self._call(keys, argv, len(events))
            if not self._learn(reply, keys, argv):
                return reply
        raise ApplyError(f"cascade records of changes of {events[0]!r:.80} kept appearing during "
                         f"{MAX_CASCADE_TRIES} tries; retry the batch later")

    def _learn(self, reply: Any, keys: list[Any], argv: list[Any]) -> bool:
        """True if the reply is '#': the markers it found live (flag '1') get their checks sent
        from now on, for a tombstone TTL (what a marker lives after its last cascade record)."""
        if type(reply) is str:
            reply = reply.encode()
        if type(reply) is not bytes or reply[:1] != _CHECKS:
            return False
        n, nmark = argv[3], argv[5]
        until = time.monotonic() + self._tomb_s
        for key, flag in zip(keys[n : n + nmark], reply[1:]):
            if flag == 49:  # '1'
                self._live[key] = until
        return True

    async def _call(self, keys: list[Any], argv: list[Any], n: int) -> Any:
        if self._sha is None:
            await self.load_script()
        try:
            try:
                return await self._evalsha(keys, argv)
            except redis.exceptions.NoScriptError:
                await self.load_script()
                return await self._evalsha(keys, argv)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis apply of {n} events failed: {type(exc).__name__}: {exc}") from exc

    async def _apply_segment(self, seg: Sequence[ChangeEvent | ClassicSet | MovedChange]) -> list[Outcome] | None:
        """Outcomes of one segment (a cascading event first, if any); None: a change is late ('?')."""
        first = seg[0]
        ev = first.event if type(first) is MovedChange else first
        if type(ev) is not ChangeEvent or ev.cascade is None:
            reply = await self._run(seg)
            return None if self.late_reply(reply) else self._outcomes(reply, len(seg))
        self.check_cascade(ev)
        rest = list(seg[1:])
        for _ in range(MAX_CASCADE_TRIES):
            derived, guards = await self._expand(ev)
            if type(first) is MovedChange and first.via:
                derived += await self._passed_records(first, guards)
            reply = await self._run([first, *derived, *rest], guards)
            if reply == _RETRY or reply == "!":
                continue  # a child changed between our read and the script: read again
            if self.late_reply(reply):
                return None
            records = len(derived) + len(rest) + (ev.op is not Op.CASCADE)
            statuses = self._outcomes(reply, records)
            head = statuses[:1] if ev.op is not Op.CASCADE else [Outcome.APPLIED]
            return head + statuses[records - len(rest):]
        raise ApplyError(f"cascade of {ev.table!r} version {ev.version}: the children kept changing "
                         f"during {MAX_CASCADE_TRIES} tries; retry the batch later")

    async def _move_late(self, events: Sequence[ChangeEvent | ClassicSet | MovedChange]
                         ) -> list[ChangeEvent | ClassicSet | MovedChange]:
        """The events with each child change that is older than a cascade record of its refs moved
        as that cascade moved the rows it found (MovedChange; see fk_cascade_key)."""
        asks: list[tuple[int, str]] = []
        for i, item in enumerate(events):
            ev = item.event if type(item) is MovedChange else item
            if type(ev) is ChangeEvent and ev.refs and ev.op is not Op.CASCADE:
                template = self._tables[ev.table].spec.key_template
                asks += [(i, fk_cascade_key(ev.table, name, values, template, self._prefix))
                         for name, values in ev.refs.items()]
        got = await self._read([("GET", k) for _, k in asks])
        records: dict[int, list[tuple[int, Any]]] = {}
        raws: dict[int, list[tuple[str, bytes]]] = {}
        for (i, k), raw in zip(asks, got):
            if raw:
                records.setdefault(i, []).append((int(raw[:20]), orjson.loads(raw[20:])))
                raws.setdefault(i, []).append((k, raw))
        out = list(events)
        for i, recs in records.items():
            item = events[i]
            out[i] = moved = follow_records(item, recs)  # type: ignore[arg-type]  # asked above: a (moved) ChangeEvent
            if moved is not item and type(moved) is MovedChange:
                since = max(item.event.version, item.after) if type(item) is MovedChange else item.version  # type: ignore[union-attr]
                moved.via = [*moved.via, *((k, raw) for k, raw in raws[i] if int(raw[:20]) > since)]
        for item in out:
            if type(item) is MovedChange and item.hop is not None:
                # the row's own key change first, as it was (its children keep each step)
                await self._apply_segment([item.hop])
                item.hop = None
        return out

    async def _read(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for cmd in commands:
                pipe.execute_command(*cmd)
            return await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis cascade read failed: {type(exc).__name__}: {exc}") from exc

    async def _expand(self, ev: ChangeEvent) -> tuple[list[DerivedChange], dict[str, str | bytes]]:
        """The changes a cascading event derives for the children in Redis (following the FK
        index), and the guards: each child's version key and the version read ("" = absent), each
        index set read and its members."""
        c = ev.cascade
        assert c is not None
        children_of: dict[str, Sequence[FKRule]] = {ev.table: c.fks}
        walk = list(c.fks)
        while walk:
            rule = walk.pop(0)
            children_of.setdefault(rule.table, rule.children)
            walk[:0] = rule.children
        derived: list[DerivedChange] = []
        records: list[DerivedChange] = []
        guards: dict[str, str | bytes] = {}
        visited: set[str] = set()
        # a moved change's: several, each at the version of the cascade that moved its row on from it
        steps = [CascadeStep(c.fks, old, c.new, left or ev.version) for old, left in cascade_starts(c)]
        prefix = self._prefix
        for _depth in range(MAX_CASCADE_DEPTH):
            lookups: list[tuple[FKRule, CascadeStep, str, list[Any] | None]] = []
            sets: list[str] = []
            for st in steps:
                for rule in st.rules:
                    old = [st.old.get(col) for col in rule.ref]
                    if None in old:
                        continue
                    if st.new is None:
                        action = rule.on_delete
                    elif all(same_key_text(st.old.get(col), st.new.get(col)) for col in rule.ref):
                        continue
                    else:
                        action = rule.on_update
                    if action != "none":
                        to = None if st.new is None and action == "cascade" else [
                            st.new[ref] if st.new is not None and action == "cascade" else None for ref in rule.ref]
                        lookups.append((rule, st, action, to))
                        sets.append(fk_index_key(rule.table, rule.fk, old, prefix))
            if not lookups:
                break
            targets = [to for _rule, _st, _action, to in lookups]
            passed = await self._follow_records(lookups, guards)
            # The cascade records: a change of a child with these refs that is older than this cascade
            # and not in Redis yet is moved by it when it comes (moved_change).
            sources = [self._record_key(rule, [st.old.get(col) for col in rule.ref]) for rule, st, _a, _t in lookups]
            found_rows: list[list[dict[str, Any]]] = [[] for _ in lookups]
            steps = []
            ops = []
            for j, raw in enumerate(await self._read([("GET", k) for k in sources])):
                guards[sources[j]] = raw or ""
                older = self._older_cascade(lookups[j], [targets[j], *(v for v, _ in passed.get(j, ()))], raw,
                                            children_of, records)
                if older is not None:
                    ops.append("N")  # over the newer record (guarded)
                    steps += older
                elif raw and int(raw[:20]) < lookups[j][1].version and orjson.loads(raw[20:])["new"] is not None:
                    # Its rows were moved away before (a newer cascade from these values starts from a
                    # parent row Redis still held under them): the record of that move stays.
                    ops.append("")
                else:
                    ops.append("M")
            members = await self._read([("SMEMBERS", k) for k in sets])
            for k, found in zip(sets, members):
                # A child written between this read and the script (not seen here) fails the guard.
                guards[k] = b"S" + b"\n".join(sorted(m if isinstance(m, bytes) else str(m).encode() for m in found))
            todo: dict[str, list[tuple[FKRule, CascadeStep, str, list[Any] | None]]] = {}
            for lookup, found in zip(lookups, members):
                ours = self._tables[lookup[0].table].rows
                for m in sorted(found):
                    rk = m.decode("utf-8", "surrogateescape") if isinstance(m, bytes) else str(m)
                    if rk not in visited and ours.matches(rk):
                        todo.setdefault(rk, []).append(lookup)
            visited.update(todo)
            position = {id(lookup): j for j, lookup in enumerate(lookups)}
            reads: list[tuple[Any, ...]] = []
            for rk, mods in todo.items():
                t = self._tables[mods[0][0].table]
                reads.append(("HGETALL" if t.op_upsert == "H" else "GET", rk))
                reads.append(("GET", self._vk(t, rk)))
                reads.append(("GET", fk_rows_key(rk, prefix)))  # its fkr value if an older gearsync wrote it
            got = await self._read(reads) if reads else []
            for i, (rk, mods) in enumerate(todo.items()):
                value, raw_ver, legacy = got[3 * i : 3 * i + 3]
                t = self._tables[mods[0][0].table]
                ver = raw_ver.decode() if isinstance(raw_ver, bytes) else (raw_ver or "")
                guards[self._vk(t, rk)] = ver
                number, tie, fkr = split_stored_version(ver)
                fkr = fkr or legacy
                if not value or not fkr:
                    continue  # gone meanwhile (or indexed before a delete): nothing to cascade
                # The child references the old values (checked in _derive), which no change after
                # the parent's can do unless the parent key is reused: the cascade applies even to a
                # child at a newer version (another cascade may have got there first), guarded.
                base = max(st.version for _r, st, _a, _t in mods)
                # the stored version, and the version of the change the row's content came from
                own, content = (int(number), tie or number) if ver else (base, "")
                more = self._derive(t, rk, value, fkr, mods, max(base, own), own, content, children_of, derived)
                steps += more
                referenced = {col for r in children_of.get(t.spec.name, ()) for col in r.ref}
                for st in more:
                    st.version = base
                    if referenced:  # what the row's own children reference, for the cascade record
                        row = {col: v for col, v in st.old.items() if col in referenced}
                        for lookup in mods:
                            found_rows[position[id(lookup)]].append(row)
                            # The values the row held on its way (newer cascades of them ran first,
                            # without it): its children written meanwhile go where it went.
                            for values, w in passed.get(position[id(lookup)], ()):
                                via = {**st.old, **dict(zip(lookup[0].columns, values))}
                                steps.append(CascadeStep(st.rules, via, st.new, w))
            for j, (rule, st, _action, to) in enumerate(lookups):
                if not ops[j]:
                    continue
                template = self._tables[rule.table].spec.key_template
                path = passed.get(j, [])
                records.append(DerivedChange(rule.table, sources[j], ops[j], st.version,
                                             [cascade_record(rule, to, found_rows[j], path)], "",
                                             [fk_cascade_marker_key(rule.table, rule.fk, template, prefix)]))
            if not steps:
                break
        return derived + records, guards

    async def _passed_records(self, item: MovedChange, guards: dict[str, str | bytes]) -> list[DerivedChange]:
        """The cascade records that moved a late change, with the row added to their rows (as it
        was under each record's values), re-read and guarded: an older cascade of those values that
        comes later moves it first (_older_cascade)."""
        ev = item.event
        assert ev.cascade is not None
        keys = [k for k, _ in item.via]
        out = []
        for k, raw in zip(keys, await self._read([("GET", k) for k in keys])):
            guards[k] = raw or ""
            if not raw:
                continue
            rec = orjson.loads(raw[20:])
            rule = rule_from_json(rec["rule"])
            referenced = {col for r in rule.children for col in r.ref}
            rows = list(rec.get("rows", ()))
            for start, _left in cascade_starts(ev.cascade):
                values = [start.get(col) for col in rule.columns]
                if None not in values and self._record_key(rule, values) == k:
                    row = {col: v for col, v in start.items() if col in referenced}
                    if row not in rows:
                        rows.append(row)
            if rows != rec.get("rows", []):
                template = self._tables[rule.table].spec.key_template
                out.append(DerivedChange(rule.table, k, "N", int(raw[:20]), [cascade_record(rule, rec["new"], rows)],
                                         "", [fk_cascade_marker_key(rule.table, rule.fk, template, self._prefix)]))
        return out

    def _record_key(self, rule: FKRule, values: Sequence[Any]) -> str:
        template = self._tables[rule.table].spec.key_template
        return fk_cascade_key(rule.table, rule.fk, values, template, self._prefix)

    def _older_cascade(self, lookup: tuple[FKRule, CascadeStep, str, list[Any] | None], path: list[list[Any] | None],
                       raw: bytes | None, children_of: Mapping[str, Sequence[FKRule]],
                       records: list[DerivedChange]) -> list[CascadeStep] | None:
        """A cascade moving rows from values that a newer cascade already ran from (its record `raw`,
        newer than this step): in MySQL the rows that cascade found there were moved by this one
        first (to the values of `path`, where newer cascades moved them on, to the lookup's `to`),
        and met the newer cascade's fate under their new values. That fate goes to the record of
        where they ended, this one takes the newer one's place; the steps from each of the rows' new
        values to that fate, at its version (their children written meanwhile follow). None: no such
        record."""
        rule, st, _action, to = lookup
        first = path[0]
        if not raw or int(raw[:20]) <= st.version or first is None or None in first:
            return None
        w = int(raw[:20])
        rec = orjson.loads(raw[20:])
        fate = rec["new"]

        def at(row: Mapping[str, Any], values: Sequence[Any]) -> dict[str, Any]:
            return {**row, **{col: v for col, v in zip(rule.columns, values) if col in row}}

        rows = rec.get("rows", ())
        template = self._tables[rule.table].spec.key_template
        marker = [fk_cascade_marker_key(rule.table, rule.fk, template, self._prefix)]
        if to is None:  # where they went, they were deleted
            fate = None
        elif None not in to:
            path = [*path, to]
            records.append(DerivedChange(rule.table, self._record_key(rule, to), "M", w,
                                         [cascade_record(rule, fate, [at(row, to) for row in rows])], "", marker))
        steps = []
        for values in path:
            if values is not None and None not in values:
                for row in rows:
                    after = None if fate is None else at(row, fate)
                    steps.append(CascadeStep(children_of.get(rule.table, ()), at(row, values), after, w))
        return steps

    async def _follow_records(self, lookups: list[tuple[FKRule, CascadeStep, str, list[Any] | None]],
                              guards: dict[str, str | bytes]) -> dict[int, list[tuple[list[Any], int]]]:
        """Where each lookup's rows go (`to`), after the newer cascades that already ran for the
        values they go to (cascade records newer than the step: e.g. parent key changes applied out
        of order); the records read are guarded. Returns, per lookup that followed records, the
        values its rows held on the way and the version of the cascade that moved them on."""
        done: set[int] = set()
        passed: dict[int, list[tuple[list[Any], int]]] = {}
        for _ in range(MAX_CASCADE_DEPTH):
            asks = []
            for j, (rule, _st, _action, to) in enumerate(lookups):
                if j not in done and to is not None and None not in to:
                    template = self._tables[rule.table].spec.key_template
                    asks.append((j, fk_cascade_key(rule.table, rule.fk, to, template, self._prefix)))
            if not asks:
                return passed
            got = await self._read([("GET", k) for _, k in asks])
            for (j, k), raw in zip(asks, got):
                guards[k] = raw or ""
                rule, st, action, to = lookups[j]
                if raw and int(raw[:20]) > st.version:
                    passed.setdefault(j, []).append((to, int(raw[:20])))  # type: ignore[arg-type]  # asked: not None
                    lookups[j] = (rule, st, action, orjson.loads(raw[20:])["new"])
                else:
                    done.add(j)
        return passed

    def _vk(self, t: _Table, rk: str) -> str:
        return self._vprefix + rk if t.vk_tagged else self._vprefix + "{" + rk + "}"

    def _derive(self, t: _Table, rk: str, value: Any, fkr: str | bytes,
                mods: Sequence[tuple[FKRule, CascadeStep, str, list[Any] | None]],
                version: int, own: int, content: str, children_of: Mapping[str, Sequence[FKRule]],
                out: list[DerivedChange]) -> list[CascadeStep]:
        """The derived change(s) of one child row (appended to `out`); the next cascade steps.
        `own`: the row's stored version; `content`: the version (20 digits) of the change its content
        came from ('' unknown), the tie-breaker of the row at a new key."""
        hashed = t.op_upsert == "H"
        row: dict[Any, Any] = value if hashed else decode_json(value)
        name = (lambda col: col.encode()) if hashed else (lambda col: col)
        stored = orjson.loads(fkr)
        pkcols: list[str] = stored[0]
        sets: list[str] = stored[1:]
        before = dict(row)
        deleted = False
        for rule, st, _action, new in mods:
            if not all(same_key_text(row.get(name(col)), st.old[ref]) for col, ref in zip(rule.columns, rule.ref)):
                continue  # the index is behind the row: this row no longer references the old values
            if new is None:
                deleted = True
                continue
            head = fk_index_prefix(rule.table, rule.fk, self._prefix)
            sets = [s for s in sets if not s.startswith(head)]
            if None not in new:
                sets.append(fk_index_key(rule.table, rule.fk, new, self._prefix))
            for col, v in zip(rule.columns, new):
                if not hashed:
                    row[col] = from_field(v) if type(v) is bytes else v
                elif v is None:
                    row.pop(name(col), None)
                elif type(v) is bytes:
                    row[name(col)] = v
                else:
                    row.update(encode_hash({col: v}))
        table = t.spec.name
        # (shape) the row's pk for the stream entry of its delete here
        gone = "" if t.shape is None or t.shape.stream is None else orjson.dumps(
            {col: from_field(v) if type(v := before.get(name(col))) is bytes else v for col in pkcols}).decode()
        if deleted:
            out.append(DerivedChange(table, rk, "d", version, [], "", [], pk=gone))
            return [CascadeStep(children_of.get(table, ()), text_row(before, hashed), None)]
        if row == before:
            return []
        sets.sort()
        pk = [(col, row.get(name(col))) for col in pkcols]
        new_rk = t.build(table, pk)
        fkr_value = orjson.dumps([pkcols, *sets]).decode() if sets else ""
        if hashed:
            values = [b for f, v in row.items() for b in (f, v)]
        else:
            values = [encode_json(row)]
        if new_rk != rk:
            out.append(DerivedChange(table, rk, "d", version, [], "", [], pk=gone))
            # fenced; at the cascade's version with the content's as tie-breaker: a late change of the
            # row moved there (at that version, with its own: MovedChange) applies over it if newer
            op = ("K" if t.op_upsert == "J" else "L") if content else t.op_upsert
            out.append(DerivedChange(table, new_rk, op, version, values, fkr_value, sets, content))
        else:
            # Same key: the row keeps its own version, so a delete of it older than this cascade that
            # comes late still applies (its older upserts follow the cascade records: moved_change).
            out.append(DerivedChange(table, new_rk, t.op_upsert.lower(), own, values, fkr_value, sets))
        return [CascadeStep(children_of.get(table, ()), text_row(before, hashed), text_row(row, hashed))]

    async def _evalsha(self, keys: list[Any], argv: list[Any]) -> Any:
        """EVALSHA on a pooled connection, packed here: redis-py's generic pack_command costs
        ~3 us per argument, several times the rest of the batch's client work."""
        client = self._redis
        if client.single_connection_client:
            return await client.evalsha(self._sha, len(keys), *keys, *argv)
        packed = pack_command(("EVALSHA", self._sha, len(keys), *keys, *argv))
        pool = client.connection_pool
        for attempt in (1, 2):
            conn = await pool.get_connection()
            try:
                await conn.send_packed_command(packed)
                return await conn.read_response()
            except redis.exceptions.ResponseError:
                raise  # a complete reply: the connection is still in step
            except redis.exceptions.ConnectionError:
                await conn.disconnect(nowait=True)
                # A pooled connection may predate a server restart: one retry on a fresh one
                # (the script is idempotent). A second failure is real.
                if attempt == 2:
                    raise
            except BaseException:
                # Timeout or cancellation between send and reply: the connection is out of step.
                await conn.disconnect(nowait=True)
                raise
            finally:
                await pool.release(conn)
        raise AssertionError("unreachable")

    @staticmethod
    def _outcomes(reply: Any, n: int) -> list[Outcome]:
        if n == 0 and reply in (b"", ""):
            return []
        if isinstance(reply, str):
            reply = reply.encode()
        if not isinstance(reply, bytes) or len(reply) != n:
            raise ApplyError(f"apply script: expected {n} statuses, got {reply!r:.80}")
        applied, stale = Outcome.APPLIED, Outcome.STALE
        return [applied if c == 65 else stale for c in reply]  # 65 = ord("A")

    async def _apply_cluster(self, events: Sequence[ChangeEvent | ClassicSet]) -> list[Outcome]:
        groups: dict[int, list[int]] = {}
        for i, ev in enumerate(events):
            if type(ev) is ChangeEvent:
                if ev.refs is not None or ev.cascade is not None:
                    self.check_cascade(ev)
                rk = self.row_key(ev).encode()
            elif type(ev) is ClassicSet:
                rk = ev.key
            else:
                raise PayloadError(f"expected a ChangeEvent or ClassicSet, got {type(ev).__name__}")
            groups.setdefault(key_slot(rk), []).append(i)
        calls = {slot: self._build_args([events[i] for i in idx]) for slot, idx in groups.items()}
        if self._sha is None:
            await self.load_script()
        out: list[Outcome | None] = [None] * len(events)
        pending = list(calls)
        for attempt in range(2):
            try:
                pipe = self._redis.pipeline()
                for slot in pending:
                    keys, argv = calls[slot]
                    pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *argv)
                replies = await pipe.execute(raise_on_error=False)
            except (redis.exceptions.RedisError, OSError) as exc:
                raise ApplyError(f"redis cluster apply of {len(events)} events failed: {type(exc).__name__}: {exc}") from exc
            retry = []
            for slot, reply in zip(pending, replies):
                if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 0:
                    retry.append(slot)
                    continue
                if isinstance(reply, BaseException):
                    raise ApplyError(
                        f"redis cluster apply of {len(events)} events failed in slot {slot}: "
                        f"{type(reply).__name__}: {reply}"
                    ) from reply
                for i, oc in zip(groups[slot], self._outcomes(reply, len(groups[slot]))):
                    out[i] = oc
            if not retry:
                break
            await self.load_script()
            pending = retry
        if self._stats:
            await self._cluster_stats(events, out)
        return out  # type: ignore[return-value]  # every index is in one slot's group, so no None is left

    async def _cluster_stats(self, events: Sequence[ChangeEvent | ClassicSet], out: Sequence[Outcome | None]) -> None:
        counts: dict[str, int] = {}
        for ev, oc in zip(events, out):
            if oc is Outcome.APPLIED and type(ev) is ChangeEvent:
                sk = self._tables[ev.table].stats_key
                counts[sk] = counts.get(sk, 0) + 1
        if not counts:
            return
        ms = int(time.time() * 1000)  # the client's clock: TIME would cost one more round trip
        try:
            pipe = self._redis.pipeline()
            for sk, n in counts.items():
                pipe.hset(sk, "last_applied_ms", ms)
                pipe.hincrby(sk, "applied_total", n)
            await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis cluster stats update failed: {type(exc).__name__}: {exc}") from exc
