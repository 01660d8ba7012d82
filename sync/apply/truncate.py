"""TableWipe: a TRUNCATE or DROP TABLE of a synced table (sync.events.TableTruncate) applied to Redis.

Every row key of the table is found by SCAN with the table's key pattern (sync.keys.table_key_match:
the glob, then the exact form, so another key the glob happens to match is left alone). Each batch
of found keys is one call of truncate.lua: a row whose stored version is older than the statement's
is deleted and its version key set to the statement's version with the tombstone TTL, like a row
delete, and leaves the table's zset and set indexes (shaping, sync.shape); a row with a newer
version (a change committed after the statement) stays, in its indexes. Running it
again is harmless (a restart that repeats the statement removes nothing more). One log line per
statement: table_truncated with the number of keys removed.

A table with a change stream (shaping) gets one entry for the statement once its rows are gone:
op "truncate" and its version (no key, pk or row), fenced by the version of the last TRUNCATE the
stream got (keys.stream_truncate_key, same call): a repeated or older statement adds none.

Redis Cluster: SCAN visits every primary (redis-py's cluster scan_iter) and the keys of a batch are
grouped by hash slot (a row key and its version key share one), one script call per slot.

A template without literal text (e.g. "{pk}") cannot tell the table's keys from any other key:
nothing is removed, and a warning says so (sync-verify --repair removes the stale keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis.exceptions
import structlog
from redis.crc import key_slot

from sync.errors import ApplyError, PayloadError, short_error
from sync.events import TableTruncate
from sync.keys import (
    DEFAULT_PREFIX,
    TableKeyMatch,
    check_prefix,
    index_rows_key,
    stream_truncate_key,
    table_key_match,
    version_key,
)
from sync.shape import Shape
from sync.tables import TableSpec

log = structlog.get_logger(__name__)

__all__ = ["TableWipe", "TRUNCATE_SCRIPT"]

TRUNCATE_SCRIPT = Path(__file__).with_name("truncate.lua").read_text(encoding="utf-8")
SCAN_COUNT = 1000   # keys per SCAN step, and at most this many row keys per script call
# KEYS[1] the table's change stream, KEYS[2] its stream_truncate_key; ARGV[1] the statement's version
# (20 digits), ARGV[2] the stream's MAXLEN. Returns 1 when the entry went in, 0 for a repeated or
# older statement.
STREAM_SCRIPT = """local last = redis.call('GET', KEYS[2])
if last and last >= ARGV[1] then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'op', 'truncate', 'version',
           (string.match(ARGV[1], '^0*(%d.*)$')))
redis.call('SET', KEYS[2], ARGV[1])
return 1"""


class TableWipe:
    """Applies TableTruncate statements for the tables of `tables`; see the module docstring."""

    def __init__(self, tables: Mapping[str, TableSpec], *, prefix: str = DEFAULT_PREFIX,
                 tombstone_ttl_s: int = 86400, cluster: bool = False) -> None:
        self.tables = dict(tables)
        self.prefix = check_prefix(prefix)
        self.own = (prefix + ":").encode()
        self.tomb_ms = tombstone_ttl_s * 1000
        self.cluster = cluster

    def match(self, ev: TableTruncate) -> TableKeyMatch | None:
        """The table's key pattern; None (with a warning) when its keys cannot be told apart."""
        spec = self.tables.get(ev.table)
        if spec is None:
            raise PayloadError(f"table: {ev.table!r} is not configured; expected one of {', '.join(sorted(self.tables))}")
        m = table_key_match(spec.key_template, ev.table)
        if not m.anchored:
            log.warning("table_truncate_skipped", table=ev.table, key_template=spec.key_template,
                        note="the template has no literal text to find the table's keys by; "
                             "run sync-verify --repair to remove the stale keys")
            return None
        return m

    def calls(self, m: TableKeyMatch, found: list[bytes], shape: Shape | None = None) -> list[list[bytes]]:
        """The KEYS of the script calls for a batch of SCAN results (one call per slot on a cluster);
        with set indexes in `shape`, each row's legacy set-index record key too (truncate.lua)."""
        groups: dict[int, list[bytes]] = {}
        sets = shape is not None and bool(shape.sets)
        for raw in found:
            if raw.startswith(self.own):
                continue
            key = raw.decode("utf-8", "surrogateescape")
            if not m.matches(key) or (shape is not None and shape.owns(key)):
                continue  # (the table's index and stream keys may look like its row keys)
            vk = version_key(key, self.prefix).encode("utf-8", "surrogateescape")
            group = groups.setdefault(key_slot(raw) if self.cluster else 0, [])
            group.extend((raw, vk))
            if sets:
                group.append(index_rows_key(key, self.prefix).encode("utf-8", "surrogateescape"))
        return list(groups.values())

    def args(self, ev: TableTruncate) -> list[str]:
        shape = self.tables[ev.table].shape
        zsets = [ix.zset_key() for ix in shape.zsets] if shape is not None else []
        sets = "1" if shape is not None and shape.sets else "0"
        return [f"{ev.version:020d}", str(self.tomb_ms), sets, *zsets]

    async def apply(self, client: Any, ev: TableTruncate) -> int:
        """Remove the table's rows older than `ev` (asyncio redis client); the number removed.
        ApplyError when Redis fails (then run it again: it is idempotent)."""
        m = self.match(ev)
        if m is None:
            return 0
        script, argv = client.register_script(TRUNCATE_SCRIPT), self.args(ev)   # EVALSHA, loaded on NOSCRIPT
        shape = self.tables[ev.table].shape
        removed = scanned = 0
        batch: list[bytes] = []
        try:
            async for raw in client.scan_iter(match=m.glob, count=SCAN_COUNT):
                batch.append(raw)
                if len(batch) >= SCAN_COUNT:
                    scanned += len(batch)
                    for keys in self.calls(m, batch, shape):
                        removed += await script(keys=keys, args=argv)
                    batch = []
            scanned += len(batch)
            for keys in self.calls(m, batch, shape):
                removed += await script(keys=keys, args=argv)
            if shape is not None and shape.stream is not None:
                stream = shape.stream
                await client.register_script(STREAM_SCRIPT)(keys=[stream.key, stream_truncate_key(stream.key, self.prefix)],
                                                             args=[f"{ev.version:020d}", str(stream.maxlen)])
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis truncate of table {ev.table} failed: {short_error(exc)}") from exc
        log.info("table_truncated", table=ev.table, version=ev.version, removed=removed, scanned=scanned)
        return removed
