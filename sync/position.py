"""Where a binlog reader is in the server's binlog, and where that is kept (Redis).

A `Position` is always a transaction commit boundary: the binlog reader only hands one out after
the XID (or COMMIT / standalone DDL) event of a transaction, never mid-transaction, so resuming
from it never starts inside a transaction.

    MariaDB   gtid = the GTID state after the transaction, "domain-server-seq[,…]" (one entry per
              replication domain); file/pos are informational (where that commit ended).
    MySQL     gtid = the executed GTID set "uuid:1-N[,…]" when gtid_mode=ON; otherwise None and
              file/pos (the end of the commit event) are the position.

`PositionStore` keeps one position per binlog stream under `keys.binlog_position_key(name)`, as
compact JSON. `set_command()` gives the write as a `ClassicSet`, so the Redis sink can put it in
the SAME script call as the batch it covers (see sync.capture.binlog.service).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.exceptions

from sync.errors import ApplyError, SourceError
from sync.events import ClassicSet
from sync.keys import DEFAULT_PREFIX, binlog_position_key

__all__ = ["Position", "PositionStore", "parse_mariadb_gtids", "format_mariadb_gtids", "gtid_version", "ROW_BITS", "ROW_MASK"]

# Versions of binlog changes (sync-binlog, sync-snapshot --versions binlog): a GTID change is
# seq << ROW_BITS | row index in the transaction; a file/position change (no GTID) is
# file number << 44 | log_pos << FILE_ROW_BITS | row index.
ROW_BITS = 20
ROW_MASK = (1 << ROW_BITS) - 1
MAX_SEQ = (1 << (64 - ROW_BITS)) - 1
FILE_ROW_BITS = 12
FILE_ROW_MASK = (1 << FILE_ROW_BITS) - 1


def gtid_version(seq_no: int, index: int = 0) -> int:
    """The version of the index-th row change of the transaction with GTID sequence number seq_no.
    (A snapshot consistent with GTID position P can use gtid_version(P.seq, ROW_MASK): every later
    binlog change of the row is newer.)"""
    if not 0 <= seq_no <= MAX_SEQ:
        raise SourceError(f"GTID sequence number {seq_no} is beyond {MAX_SEQ}; versions would exceed 64 bits")
    return (seq_no << ROW_BITS) | min(index, ROW_MASK)


FLAVORS = ("mariadb", "mysql")


@dataclass(frozen=True, slots=True)
class Position:
    flavor: str
    gtid: str | None = None
    file: str | None = None
    pos: int | None = None

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise SourceError(f"position: flavor {self.flavor!r}; expected mariadb or mysql")
        if self.gtid is None and (self.file is None or self.pos is None):
            raise SourceError("position: expected a GTID or a binlog file and position")

    def describe(self) -> str:
        if self.gtid is not None:
            where = f" ({self.file}:{self.pos})" if self.file and self.pos is not None else ""
            return f"GTID {self.gtid or '(empty: binlog start)'}{where}"
        return f"{self.file}:{self.pos}"

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {"flavor": self.flavor}
        if self.gtid is not None:
            obj["gtid"] = self.gtid
        if self.file is not None:
            obj["file"] = self.file
            obj["pos"] = self.pos
        obj["saved_ms"] = int(time.time() * 1000)
        return orjson.dumps(obj)

    @classmethod
    def from_json(cls, raw: bytes, where: str = "position") -> Position:
        try:
            obj = orjson.loads(raw)
            if type(obj) is not dict:
                raise ValueError("not an object")
            gtid = obj.get("gtid")
            pos = obj.get("pos")
            return cls(
                flavor=str(obj["flavor"]),
                gtid=str(gtid) if gtid is not None else None,
                file=str(obj["file"]) if obj.get("file") is not None else None,
                pos=int(pos) if pos is not None else None,
            )
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise SourceError(f"{where}: stored value {bytes(raw)[:120]!r} is not a binlog position ({exc})") from None


def parse_mariadb_gtids(text: str, where: str = "GTID") -> dict[int, tuple[int, int]]:
    """'0-1-100,1-2-7' → {domain: (server_id, seq_no)}; '' → {}. SourceError when malformed."""
    out: dict[int, tuple[int, int]] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split("-")
        try:
            if len(parts) != 3:
                raise ValueError
            domain, server, seq = (int(p) for p in parts)
            if min(domain, server, seq) < 0:
                raise ValueError
        except ValueError:
            raise SourceError(f"{where}: {item!r} is not a MariaDB GTID; expected domain-server-seq like 0-1-100") from None
        if domain in out:
            raise SourceError(f"{where}: domain {domain} appears twice in {text!r}; expected one GTID per domain")
        out[domain] = (server, seq)
    return out


def format_mariadb_gtids(state: dict[int, tuple[int, int]]) -> str:
    return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(state.items()))


class PositionStore:
    """One stream's position in Redis (redis.asyncio client)."""

    def __init__(self, redis: Any, name: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.redis = redis
        self.name = name
        self.key = binlog_position_key(name, prefix)

    async def load(self) -> Position | None:
        try:
            raw = await self.redis.get(self.key)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis GET {self.key} failed: {type(exc).__name__}: {exc}") from exc
        if raw is None:
            return None
        return Position.from_json(raw, f"position {self.key}")

    async def save(self, position: Position) -> None:
        try:
            await self.redis.set(self.key, position.to_json())
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis SET {self.key} failed: {type(exc).__name__}: {exc}") from exc

    async def clear(self) -> None:
        await self.redis.delete(self.key)

    def set_command(self, position: Position) -> ClassicSet:
        """The position write as an unversioned SET, to ride in the applier's batch script."""
        return ClassicSet(self.key.encode(), position.to_json())
