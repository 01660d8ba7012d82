"""sync-verify: compare a MySQL table with what Redis holds for it, and optionally repair it.

    report = await Verifier(reader, redis, spec, applier, repair=False).run()
    report.equal        # exit 0; else 1 (differences remain)

Rows pass: the table is read chunk by chunk in key order (keyset pagination, as the snapshot),
each row mapped to its Redis key and value by `expected.expected_entry` (the one mapping the
applier, the snapshot and the tests share), and the chunk's keys read back from Redis in one
pipeline (GET for json, HGETALL for hash). A key that is absent is *missing*; a value that is
not byte-for-byte the expected one (or of the wrong type) is *different*.

Keys pass (*extra* keys): Redis is scanned with SCAN MATCH <the template's glob> (literal parts
glob-escaped, placeholders as "*"), skipping gearsync's own keys (<prefix>:…). Each key is
parsed back into its key values (the escaping of keys.py is injective, so the parse is exact)
and the batch is looked up in MySQL; a key whose row does not exist, or that no row could ever
produce (it does not parse, or a row's key renders differently, e.g. "data:05"), is extra.

Memory is bounded by one chunk of rows and one SCAN batch, plus at most MAX_SUSPECTS keys kept
for the recheck.

Changes in flight: a live change may be in gearmand while its row is compared. Without --repair,
every difference is kept (up to MAX_SUSPECTS) and checked again once, `recheck_delay_s` after the
passes; only differences still there are reported (the others are counted as "settled").

Repair (`repair=True`), fenced like the snapshot (see sync.tools.snapshot):
- missing/different rows are read again under a shared row lock with a UUID_SHORT() version
  taken after the lock, and applied as op=update through RedisApplier: a change committed after
  that read has a larger version, so a repair racing a live change never wins;
- extra keys that a row could produce get a delete event whose version is taken after a locking
  read found the key absent (a gap lock under REPEATABLE READ makes a concurrent INSERT of it
  wait, so its trigger version is larger); keys no row can produce are removed with UNLINK.
A repair that comes back STALE (Redis already holds a newer version) is rechecked like the
differences of a report-only run.

Binlog versions (`versions=Versions.BINLOG`, a table synced by sync-binlog): UUID_SHORT() (~2**56)
is far above sync-binlog's gtid_version(seq, i) = seq << 20 | i (~2**40), so a row repaired with
it would refuse every later binlog change of that row (STALE), silently. In this mode the same
locked read (and the locking read of the extra keys) takes, inside its transaction and after the
locks, the server's binlog position (@@gtid_binlog_pos, seq in @@gtid_domain_id) and versions the
repair V = gtid_version(seq, ROW_MASK) (sync.rows.reader.binlog_version_now). With a concurrent
writer of the row: one that committed before our lock is in the binlog already (MariaDB writes the
binlog before the engine commit that releases the row lock), so its seq <= seq and its version
<= V, and our row includes it; one that commits later had to wait for our lock (or the gap lock of
an absent key), so its GTID is after the position we read: its version >= (seq + 1) << 20 > V, and
it wins whichever reaches Redis first. Needs MariaDB with log_bin on (ConfigError at once
otherwise); like sync-binlog, versions compare within one GTID domain.

Reset versions (`reset_versions=True`, with repair): the way back from a poisoned fence (a forged
job with e.g. version 2**64-1 makes every real change of its row STALE, and plain repair too).
Before a differing row (or a fenced extra key) is re-read, its version key (keys.version_key) is
deleted; the repair then goes on exactly as above, with a version V taken after the row lock, so
the row ends with its MySQL value and a normal version that its next trigger change exceeds.
Ordering still holds for everything after the delete: a change committed after the locked read
has a version > V and wins (also if it lands between the delete and our write); one committed
before it is in the row we read. What is given up: the version Redis held, bogus or not, and the
guarantee in the short window between the delete and the repair's write: if the repair stops
there (crash, Redis error), the row has no fence and an older duplicate (a redelivered job, a
dead-letter replay) could land; rerun sync-verify. On a binlog deployment combine it with binlog
versions (above): the repaired row then gets a binlog-comparable version.
Rows that compare equal are not touched (a poisoned fence under an equal value stays).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis.exceptions
import structlog

from sync.apply.applier import Outcome, RedisApplier
from sync.errors import ApplyError, ConfigError
from sync.events import ChangeEvent, JSONValue, Op, Source
from sync.keys import DEFAULT_PREFIX, row_key, version_key
from sync.rows.expected import expected_entry
from sync.rows.fkgraph import load_foreign_keys
from sync.rows.reader import TableReader, row_events
from sync.rows.schema import canonical_value, quote_ident
from sync.tables import TableSpec
from sync.tools.indexcheck import IndexChecker, IndexProblem
from sync.tools.keypattern import KeyPattern, typed_pk
from sync.tools.snapshot import Versions, apply_events

log = structlog.get_logger(__name__)

__all__ = ["Verifier", "VerifyReport", "MAX_SUSPECTS"]

MAX_EXAMPLES = 5
MAX_SUSPECTS = 10_000
SCAN_BATCH = 1000


# -- report --------------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    rows: int = 0                   # MySQL rows compared
    keys_scanned: int = 0           # Redis keys examined for extras
    missing: int = 0
    different: int = 0
    extra: int = 0
    settled: int = 0                # differences gone on recheck (changes in flight)
    repaired: int = 0               # rows re-applied
    deleted: int = 0                # extra keys removed
    repair_stale: int = 0           # repairs a newer change had already superseded
    versions_reset: int = 0         # version keys deleted before a repair (reset_versions)
    index_missing: int = 0          # secondary index entries (sync.tools.indexcheck)
    index_extra: int = 0
    index_wrong: int = 0            # wrong zset score or set-index record
    index_repaired: int = 0         # rows re-applied and extra members removed for the indexes
    extras_checked: bool = True
    notes: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=lambda: {"missing": [], "different": [], "extra": [],
                                                                    "index": []})
    elapsed_s: float = 0.0

    @property
    def differences(self) -> int:
        return self.missing + self.different + self.extra + self.index_missing + self.index_extra + self.index_wrong

    @property
    def equal(self) -> bool:
        return self.differences == 0

    def example(self, kind: str, text: str) -> None:
        if len(self.examples[kind]) < MAX_EXAMPLES:
            self.examples[kind].append(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "equal": self.equal, "rows": self.rows, "keys_scanned": self.keys_scanned,
            "missing": self.missing, "different": self.different, "extra": self.extra,
            "settled": self.settled, "repaired": self.repaired, "deleted": self.deleted,
            "repair_stale": self.repair_stale, "versions_reset": self.versions_reset, "extras_checked": self.extras_checked,
            "index_missing": self.index_missing, "index_extra": self.index_extra, "index_wrong": self.index_wrong,
            "index_repaired": self.index_repaired,
            "examples": self.examples, "notes": self.notes, "seconds": round(self.elapsed_s, 3),
        }


@dataclass
class _Suspect:
    kind: str                                   # missing | different | extra
    key: str
    pk: tuple[Any, ...] | None                  # canonical pk values (rows: JSONValue), parsed texts (extras: str | bytes)
    detail: str


def _row_pks(found: Sequence[_Suspect]) -> list[tuple[JSONValue, ...]]:
    """The pks of missing/different suspects: always set for those (only extras may lack one)."""
    return cast("list[tuple[JSONValue, ...]]", [s.pk for s in found])


ProgressFn = Callable[[str, int], None]


class Verifier:
    """Compare (and repair) one table; see the module docstring."""

    def __init__(
        self,
        reader: TableReader,
        redis: Any,
        spec: TableSpec,
        applier: RedisApplier | None = None,
        *,
        chunk: int = 5000,
        repair: bool = False,
        sample: int | None = None,
        recheck_delay_s: float = 1.0,
        prefix: str = DEFAULT_PREFIX,
        check_extra: bool = True,
        seed: int | None = None,
        reset_versions: bool = False,
        versions: Versions = Versions.TRIGGER,
    ) -> None:
        if not 1 <= chunk <= 100_000:
            raise ConfigError(f"--chunk: {chunk}; expected 1 to 100000 rows")
        if sample is not None and not 1 <= sample <= 10_000_000:
            raise ConfigError(f"--sample: {sample}; expected 1 to 10000000 rows")
        if repair and applier is None:
            raise ConfigError("repair needs an applier")
        if reset_versions and not repair:
            raise ConfigError("--reset-versions without --repair; expected --repair --reset-versions")
        self.reader = reader
        self.schema = reader.schema
        self.graph = load_foreign_keys(reader.conn, self.schema.database) if repair else None  # refs on repairs
        self.redis = redis
        self.spec = spec
        self.applier = applier
        self.chunk = chunk
        self.repair = repair
        self.sample = sample
        self.recheck_delay_s = recheck_delay_s
        self.prefix = prefix
        self.own_prefix = prefix + ":"
        self.reset_versions = reset_versions
        self.binlog = repair and versions is Versions.BINLOG
        if self.binlog:
            reader.check_binlog_versions()  # ConfigError now, not after the first compare
        self.check_extra = check_extra
        self.pattern = KeyPattern(spec.key_template, self.schema.name, self.schema.key)
        self._rng = random.Random(seed)
        self._suspects: list[_Suspect] = []
        self._overflow: dict[str, int] = {}
        self._overflow_examples: list[_Suspect] = []
        shape = spec.shape
        self.indexes = IndexChecker(reader, redis, spec, prefix) if shape is not None and shape.indexes else None
        self._index_suspects: list[IndexProblem] = []

    # -- comparing rows --------------------------------------------------------------------------
    async def _fetch(self, keys: Sequence[str]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            if self.spec.format == "hash":
                pipe.hgetall(k)
            else:
                pipe.get(k)
        try:
            return await pipe.execute(raise_on_error=False)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis read of {len(keys)} keys failed: {type(exc).__name__}: {exc}") from exc

    def _diff(self, expected: Any, actual: Any) -> str | None:
        """None when equal, else 'missing' or a short description of the difference."""
        if isinstance(actual, redis.exceptions.ResponseError):
            return f"different: {str(actual)[:60]}"
        if isinstance(actual, BaseException):
            raise ApplyError(f"redis read failed: {type(actual).__name__}: {actual}")
        if self.spec.format == "hash":
            if not actual:
                return "missing"
            if actual == expected:
                return None
            fields = sorted({*expected, *actual} - {k for k in expected if actual.get(k) == expected[k]})
        else:
            if actual is None:
                return "missing"
            if actual == expected:
                return None
            try:
                got = orjson.loads(actual)
                want = orjson.loads(expected)
                fields = sorted(k for k in {*got, *want} if got.get(k, KeyError) != want.get(k, KeyError)) \
                    if isinstance(got, dict) else ["(not a JSON object)"]
            except orjson.JSONDecodeError:
                fields = ["(not JSON)"]
        names = [f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f) for f in fields]
        return "different: " + (", ".join(names[:4]) + (" …" if len(names) > 4 else "") if names else "encoding")

    async def _compare_rows(self, rows: Sequence[dict[str, Any]], report: VerifyReport) -> list[_Suspect]:
        entries = [expected_entry(self.schema, self.spec, row) for row in rows]
        actual = await self._fetch([k for k, _ in entries])
        found = []
        key_names = self.schema.key
        live = self._live(rows)
        for row, (key, value), got, keep in zip(rows, entries, actual, live):
            # a row the filter leaves out must be absent (its repair: the applier deletes it, fenced)
            d = self._diff(value, got) if keep else ("different: present, but the filter leaves it out" if got else None)
            if d is not None:
                pk = tuple(canonical_value(self.schema.column(k), row[k]) for k in key_names)
                found.append(_Suspect("missing" if d == "missing" else "different", key, pk, d))
        return found

    def _live(self, rows: Sequence[dict[str, Any]]) -> list[bool]:
        """Per row: does the table's filter keep it (no filter: all)."""
        shape = self.spec.shape
        if shape is None or shape.filter is None:
            return [True] * len(rows)
        return [shape.matches(self.schema.canonical_row(r)) for r in rows]

    # -- the passes ------------------------------------------------------------------------------
    async def _row_chunks(self) -> AsyncIterator[list[dict[str, Any]]]:
        if self.sample is None:
            after = None
            while True:
                rows = await asyncio.to_thread(self.reader.chunk, after, self.chunk, versioned=False)
                if not rows:
                    return
                yield rows
                last = rows[-1]
                after = [canonical_value(self.schema.column(k), last[k]) for k in self.schema.key]
                if len(rows) < self.chunk:
                    return
        else:
            pks = await asyncio.to_thread(self._sample_keys, self.sample)
            for i in range(0, len(pks), self.chunk):
                yield await asyncio.to_thread(self.reader.rows_by_key, pks[i : i + self.chunk], versioned=False)

    def _sample_keys(self, n: int) -> list[tuple[JSONValue, ...]]:
        cols = ", ".join(quote_ident(k) for k in self.schema.key)
        seed = self._rng.randrange(2**31)
        with self.reader.conn.cursor() as cur:
            cur.execute(f"SELECT {cols} FROM {self.schema.ref} "
                        f"ORDER BY RAND({seed}) LIMIT {int(n)}")
            raw = cur.fetchall()
        key_cols = self.schema.key_columns
        return [tuple(canonical_value(c, v) for c, v in zip(key_cols, r)) for r in raw]

    async def run(self, on_progress: ProgressFn | None = None) -> VerifyReport:
        report = VerifyReport()
        t0 = time.perf_counter()
        async for rows in self._row_chunks():
            report.rows += len(rows)
            found = await self._compare_rows(rows, report)
            if found:
                if self.repair:
                    await self._repair_rows(found, report)
                else:
                    self._keep(found)
            if self.indexes is not None:
                await self._index_problems(await self.indexes.check_rows(rows), report)
            if on_progress is not None:
                on_progress("rows", report.rows)
        if self.check_extra:
            await self._extra_pass(report, on_progress)
        else:
            report.extras_checked = False
        if self.indexes is not None and self.check_extra and self.sample is None:
            async for problems in self.indexes.member_batches():
                await self._index_problems(problems, report)
        elif self.indexes is not None:
            report.notes.append("extra index members not checked (--sample or --no-extra): only the entries of "
                                "the rows compared")
        await self._recheck(report)
        await self._index_recheck(report)
        report.elapsed_s = time.perf_counter() - t0
        log.info("verify_done", table=self.schema.name, rows=report.rows, keys_scanned=report.keys_scanned,
                 missing=report.missing, different=report.different, extra=report.extra, settled=report.settled,
                 repaired=report.repaired, deleted=report.deleted, seconds=round(report.elapsed_s, 3))
        return report

    # -- indexes (sync.tools.indexcheck) ---------------------------------------------------------
    async def _index_problems(self, problems: Sequence[IndexProblem], report: VerifyReport) -> None:
        if not problems:
            return
        assert self.indexes is not None
        if not self.repair:
            room = max(0, MAX_SUSPECTS - len(self._index_suspects))
            self._index_suspects.extend(problems[:room])
            for p in problems[room:]:
                self._index_count(report, p)
            return
        rows: dict[str, IndexProblem] = {p.member: p for p in problems if p.pk is not None}
        if rows:
            await self.indexes.forget_records(list(rows.values()))
            before = report.repaired
            await self._repair_rows([_Suspect("different", p.member, p.pk, p.detail) for p in rows.values()], report)
            report.index_repaired += report.repaired - before
            report.repaired = before
        report.index_repaired += await self.indexes.drop([p for p in problems if p.pk is None or p.kind == "extra"])
        log.info("index_repaired", table=self.schema.name, problems=len(problems))

    async def _index_recheck(self, report: VerifyReport) -> None:
        suspects, self._index_suspects = self._index_suspects, []
        if not suspects or self.indexes is None:
            return
        if self.recheck_delay_s > 0:
            await asyncio.sleep(self.recheck_delay_s)
        still = await self.indexes.recheck(suspects)
        for p in still:
            self._index_count(report, p)
        report.settled += max(0, len(suspects) - len(still))

    @staticmethod
    def _index_count(report: VerifyReport, p: IndexProblem) -> None:
        setattr(report, f"index_{p.kind}", getattr(report, f"index_{p.kind}") + 1)
        report.example("index", f"{p.kind}: {p.text()}")

    def _keep(self, found: Sequence[_Suspect]) -> None:
        """Keep differences for the recheck; beyond MAX_SUSPECTS only their count (bounded memory)."""
        room = max(0, MAX_SUSPECTS - len(self._suspects))
        self._suspects.extend(found[:room])
        for s in found[room:]:
            self._overflow[s.kind] = self._overflow.get(s.kind, 0) + 1
            if len(self._overflow_examples) < MAX_EXAMPLES:
                self._overflow_examples.append(s)

    # -- extras ----------------------------------------------------------------------------------
    async def _extra_pass(self, report: VerifyReport, on_progress: ProgressFn | None) -> None:
        pat = self.pattern
        if not pat.has_anchor:
            report.extras_checked = False
            report.notes.append(f"extra keys not checked: key template {pat.template!r} has no literal text "
                                "to match on (it would match every key in the database)")
            return
        if not pat.complete:
            report.extras_checked = False
            report.notes.append(f"extra keys not checked: key template {pat.template!r} does not use every key column")
            return
        limit = self.sample
        batch: list[str] = []
        try:
            async for raw in self.redis.scan_iter(match=pat.glob, count=SCAN_BATCH):
                key = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
                if key.startswith(self.own_prefix) or (self.spec.shape is not None and self.spec.shape.owns(key)):
                    continue  # gearsync's own keys; the table's index and stream keys (the index pass)
                batch.append(key)
                if len(batch) >= SCAN_BATCH:
                    await self._check_extra_batch(batch, report)
                    batch = []
                    if on_progress is not None:
                        on_progress("keys", report.keys_scanned)
                if limit is not None and report.keys_scanned + len(batch) >= limit:
                    break
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis SCAN failed: {type(exc).__name__}: {exc}") from exc
        if batch:
            await self._check_extra_batch(batch, report)
        if on_progress is not None:
            on_progress("keys", report.keys_scanned)

    async def _check_extra_batch(self, keys: Sequence[str], report: VerifyReport) -> None:
        report.keys_scanned += len(keys)
        found = await asyncio.to_thread(self._extras_of, keys)
        if not found:
            return
        if self.repair:
            await self._repair_extras(found, report)
        else:
            self._keep(found)

    def _extras_of(self, keys: Sequence[str]) -> list[_Suspect]:
        """The keys of `keys` that no existing row produces."""
        parsed: list[tuple[str, tuple[str | bytes, ...] | None]] = [(k, self.pattern.parse(k)) for k in keys]
        lookups = [p for _, p in parsed if p is not None]
        existing = self.reader.existing_keys(lookups) if lookups else []
        have = {self._render(raw) for raw in existing}
        out = []
        for key, p in parsed:
            if key not in have:
                out.append(_Suspect("extra", key, p, "extra" if p is not None else "extra: not a row key"))
        return out

    def _render(self, raw_key: Sequence[Any]) -> str:
        pk = tuple((c.name, canonical_value(c, v)) for c, v in zip(self.schema.key_columns, raw_key))
        return row_key(self.spec.key_template, self.schema.name, pk)

    # -- repair ----------------------------------------------------------------------------------
    async def _repair_rows(self, found: Sequence[_Suspect], report: VerifyReport) -> None:
        assert self.applier is not None
        if self.reset_versions:
            await self._reset_versions([s.key for s in found], report)
        rows = await asyncio.to_thread(self.reader.rows_by_key, _row_pks(found), versioned=True, binlog=self.binlog)
        events = row_events(self.schema, rows, Op.UPDATE, self.graph)
        applied, stale = await apply_events(self.applier, events)
        report.repaired += applied
        report.repair_stale += stale
        if stale:
            # A newer version is already stored: right if a live change won, wrong if the stored
            # version is bogus. Compare again later.
            self._keep(list(found))
            log.info("repair_superseded", table=self.schema.name, rows=stale)
        gone = len(found) - len(rows)
        if gone:
            # Deleted since the compare: the delete's own change (or the extra pass) handles them.
            self._keep([s for s in found if s.pk not in {tuple(v for _, v in e.pk) for e in events}])

    async def _repair_extras(self, found: Sequence[_Suspect], report: VerifyReport) -> None:
        assert self.applier is not None
        fenced: list[tuple[_Suspect, tuple[tuple[str, JSONValue], ...]]] = []
        plain: list[str] = []
        for s in found:
            pk = typed_pk(self.schema, s.pk) if s.pk is not None else None
            if pk is not None and row_key(self.spec.key_template, self.schema.name, pk) == s.key:
                fenced.append((s, pk))
            else:
                plain.append(s.key)  # a key no row can produce: no live change ever writes it
        if fenced:
            if self.reset_versions:
                await self._reset_versions([s.key for s, _ in fenced], report)
            pks = [tuple(v for _, v in pk) for _, pk in fenced]
            exist, version = await asyncio.to_thread(self.reader.absent_version, pks, binlog=self.binlog)
            now_there = {self._render(raw) for raw in exist}
            events = [ChangeEvent(self.schema.name, Op.DELETE, pk, None, version, Source.SNAPSHOT)
                      for s, pk in fenced if s.key not in now_there]
            if events:
                outcomes = await self.applier.apply(events)
                n = sum(1 for o in outcomes if o is Outcome.APPLIED)
                report.deleted += n
                report.repair_stale += len(events) - n
                if n < len(events):
                    self._keep([s for (s, _), o in zip([f for f in fenced if f[0].key not in now_there], outcomes)
                                if o is not Outcome.APPLIED])
        if plain:
            try:
                report.deleted += int(await self.redis.unlink(*plain))
            except (redis.exceptions.RedisError, OSError) as exc:
                raise ApplyError(f"redis UNLINK of {len(plain)} keys failed: {type(exc).__name__}: {exc}") from exc

    async def _reset_versions(self, keys: Sequence[str], report: VerifyReport) -> None:
        """Delete the version keys of these row keys (before their locked re-read: module docstring)."""
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            pipe.unlink(version_key(k, self.prefix))  # one key per command: rows may sit in other Cluster slots
        try:
            n = sum(int(x) for x in await pipe.execute())
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis UNLINK of {len(keys)} version keys failed: {type(exc).__name__}: {exc}") from exc
        report.versions_reset += n
        log.info("versions_reset", table=self.schema.name, keys=n)

    # -- recheck ---------------------------------------------------------------------------------
    async def _recheck(self, report: VerifyReport) -> None:
        suspects, self._suspects = self._suspects, []
        if suspects and self.recheck_delay_s > 0:
            await asyncio.sleep(self.recheck_delay_s)
        rows = [s for s in suspects if s.kind != "extra"]
        extras = [s for s in suspects if s.kind == "extra"]
        for i in range(0, len(rows), self.chunk):
            part = rows[i : i + self.chunk]
            current = await asyncio.to_thread(self.reader.rows_by_key, _row_pks(part), versioned=False)
            still = await self._compare_rows(current, report)
            by_key = {s.key: s for s in still}
            now_keys = {expected_entry(self.schema, self.spec, r)[0] for r in current}
            for s in part:
                if s.key in by_key:
                    self._count(report, by_key[s.key])
                elif s.key not in now_keys:
                    # The row is gone now: extra if its key is still in Redis.
                    if (await self._fetch([s.key]))[0]:
                        self._count(report, _Suspect("extra", s.key, None, "extra"))
                    else:
                        report.settled += 1
                else:
                    report.settled += 1
        for i in range(0, len(extras), SCAN_BATCH):
            part = extras[i : i + SCAN_BATCH]
            exists = await self._exists([s.key for s in part])
            still_extra = {s.key for s in await asyncio.to_thread(self._extras_of, [s.key for s, e in zip(part, exists) if e])}
            for s, e in zip(part, exists):
                if e and s.key in still_extra:
                    self._count(report, s)
                else:
                    report.settled += 1
        if self._overflow:
            # Beyond MAX_SUSPECTS: reported as seen, without a recheck.
            for s in self._overflow_examples:
                report.example(s.kind, s.key if s.detail in ("missing", "extra") else f"{s.key} ({s.detail})")
            for kind, n in self._overflow.items():
                setattr(report, kind, getattr(report, kind) + n)
            report.notes.append(f"{sum(self._overflow.values())} differences beyond the first {MAX_SUSPECTS} "
                                "were not rechecked")
            self._overflow, self._overflow_examples = {}, []

    async def _exists(self, keys: Sequence[str]) -> list[bool]:
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            pipe.exists(k)
        try:
            return [bool(x) for x in await pipe.execute()]
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis EXISTS failed: {type(exc).__name__}: {exc}") from exc

    def _count(self, report: VerifyReport, s: _Suspect) -> None:
        setattr(report, s.kind, getattr(report, s.kind) + 1)
        report.example(s.kind, f"{s.key} ({s.detail})" if s.detail not in ("missing", "extra") else s.key)

