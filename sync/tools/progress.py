"""The resume point of a table's snapshot, kept in Redis (`keys.snapshot_progress_key`): the last
key applied, the row count, the settings and, in binlog mode, the start point P1."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.exceptions

from sync.errors import ApplyError, ConfigError
from sync.events import JSONValue
from sync.keys import DEFAULT_PREFIX, snapshot_progress_key
from sync.rows.reader import BinlogPoint

__all__ = ["ProgressStore", "SavedProgress"]


@dataclass
class SavedProgress:
    state: str                      # "running" | "done"
    last: list[JSONValue] | None
    rows: int
    settings: dict[str, str]
    started_ms: int
    updated_ms: int


class ProgressStore:
    """The resume point of one table's snapshot, in Redis (`keys.snapshot_progress_key`)."""

    def __init__(self, redis: Any, table: str, prefix: str = DEFAULT_PREFIX) -> None:
        self.redis = redis
        self.key = snapshot_progress_key(table, prefix)

    async def load(self) -> SavedProgress | None:
        raw = await _redis_call("HGETALL", self.redis.hgetall(self.key))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        try:
            return SavedProgress(
                state=d.get("state", "running"),
                last=orjson.loads(d["last"]) if d.get("last") else None,
                rows=int(d.get("rows", 0)),
                settings=orjson.loads(d.get("settings", "{}")),
                started_ms=int(d.get("started_ms", 0)),
                updated_ms=int(d.get("updated_ms", 0)),
            )
        except (ValueError, KeyError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"snapshot progress {self.key!r} is unreadable ({exc}); expected a gearsync "
                              "snapshot record: run with --restart") from None

    async def save(self, *, state: str, last: Sequence[JSONValue] | None, rows: int,
                   settings: Mapping[str, str], started_ms: int) -> None:
        fields = {
            "state": state,
            "last": orjson.dumps(list(last)) if last is not None else b"",
            "rows": rows,
            "settings": orjson.dumps(dict(settings)),
            "started_ms": started_ms,
            "updated_ms": int(time.time() * 1000),
        }
        await _redis_call("HSET", self.redis.hset(self.key, mapping=fields))

    async def clear(self) -> None:
        await _redis_call("DEL", self.redis.delete(self.key))

    async def save_binlog_start(self, point: BinlogPoint) -> None:
        """Binlog mode: the first run's point P1, where sync-binlog must start (sync.tools.snapshot)."""
        await _redis_call("HSET", self.redis.hset(self.key, "binlog_start", point.to_json()))

    async def load_binlog_start(self) -> BinlogPoint | None:
        raw = await _redis_call("HGET", self.redis.hget(self.key, "binlog_start"))
        if not raw:
            return None
        try:
            return BinlogPoint.from_json(raw)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return None


async def _redis_call(what: str, awaitable: Any) -> Any:
    try:
        return await awaitable
    except (redis.exceptions.RedisError, OSError) as exc:
        raise ApplyError(f"redis {what} failed: {type(exc).__name__}: {exc}") from exc

