"""Dead letters: jobs that could not be applied, kept in Redis with the reason, replayable.

Layout (`sync.keys`): a list per table or gearman function,

    <prefix>:dead:{<name>}              RPUSH'ed JSON records, oldest first
    <prefix>:dead:{<name>}:processing   records claimed by a replay, not yet acknowledged

Record: {"raw": <payload as UTF-8 text, or base64 when "raw_b64" is true>, "raw_b64": bool,
"reason": str, "time": "2026-01-01T00:00:00.000000Z", "function": str|null, "unique": str|null}.

Replay without loss:

    store = DeadLetterStore(redis)
    await store.restore(name)                 # first: return records a crashed replay had claimed
    while batch := await store.pop_batch(name, 100):   # atomically moved to :processing
        ... re-parse / re-apply each record ...
        await store.ack(name, done)           # only now removed from :processing
        (records that fail again: ack them and put() them again with the new reason, or leave
         them and call restore(name) to return them to the dead list)

Both keys share one hash tag, so the moves are atomic on Redis Cluster too.

Reasons of the signature check (sync.signing, before anything is parsed): "bad signature" (wrong
key, altered bytes, malformed header) and "unsigned job" (no signature while GEARSYNC_JOB_KEY is
set). "raw" keeps the job as received, signature header included, so a replay checks it again.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.exceptions

from sync.errors import ApplyError
from sync.keys import DEFAULT_PREFIX, check_prefix, dead_letter_key, dead_letter_processing_key

__all__ = ["DeadLetter", "DeadLetterStore"]

MAX_REASON_CHARS = 2000

# Move up to ARGV[1] records from the head of KEYS[1] to the tail of KEYS[2]; return them.
_CLAIM = r"""
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  local rec = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not rec then break end
  out[i] = rec
end
return out
"""

# Move every record of KEYS[2] back to the head of KEYS[1], keeping their order.
_RESTORE = r"""
local n = 0
while true do
  local rec = redis.call('LMOVE', KEYS[2], KEYS[1], 'RIGHT', 'LEFT')
  if not rec then break end
  n = n + 1
end
return n
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    raw: bytes
    reason: str
    time: str
    function: str | None
    unique: str | None
    record: bytes  # the stored JSON record, as in Redis (needed by ack)


def _decode(record: bytes) -> DeadLetter:
    obj = orjson.loads(record)
    raw = base64.b64decode(obj["raw"]) if obj.get("raw_b64") else obj["raw"].encode("utf-8")
    return DeadLetter(raw, obj["reason"], obj["time"], obj.get("function"), obj.get("unique"), bytes(record))


class DeadLetterStore:
    """Dead-letter lists in Redis (redis.asyncio.Redis or RedisCluster)."""

    def __init__(self, redis: Any, prefix: str = DEFAULT_PREFIX) -> None:
        self._redis = redis
        self._prefix = check_prefix(prefix)
        self._claim = redis.register_script(_CLAIM)
        self._restore = redis.register_script(_RESTORE)

    def key(self, name: str) -> str:
        return dead_letter_key(name, self._prefix)

    def processing_key(self, name: str) -> str:
        return dead_letter_processing_key(name, self._prefix)

    @staticmethod
    def encode_record(raw: bytes, reason: str, *, function: str | None, unique: str | None,
                      now: dt.datetime | None = None) -> bytes:
        raw = bytes(raw)
        try:
            text, is_b64 = raw.decode("utf-8"), False
        except UnicodeDecodeError:
            text, is_b64 = base64.b64encode(raw).decode("ascii"), True
        when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        return orjson.dumps(
            {
                "raw": text,
                "raw_b64": is_b64,
                "reason": reason,
                "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "function": function,
                "unique": unique,
            }
        )

    async def put(self, name: str, raw: bytes, reason: str, *, function: str | None = None,
                  unique: str | None = None) -> None:
        """Append one dead letter. Raises ApplyError if Redis fails (then do not ack the job)."""
        record = self.encode_record(raw, reason, function=function, unique=unique)
        await self._call("RPUSH", self._redis.rpush(self.key(name), record))

    async def put_many(self, name: str, items: Sequence[tuple[bytes, str, str | None, str | None]]) -> None:
        """Append several (raw, reason, function, unique) dead letters in one command."""
        if not items:
            return
        records = [self.encode_record(raw, reason, function=f, unique=u) for raw, reason, f, u in items]
        await self._call("RPUSH", self._redis.rpush(self.key(name), *records))

    async def size(self, name: str) -> int:
        """Number of dead letters waiting (not counting claimed ones)."""
        return int(await self._call("LLEN", self._redis.llen(self.key(name))))

    async def processing_size(self, name: str) -> int:
        return int(await self._call("LLEN", self._redis.llen(self.processing_key(name))))

    async def peek(self, name: str, n: int = 10) -> list[DeadLetter]:
        """The n oldest dead letters, without removing them."""
        if n <= 0:
            return []
        records = await self._call("LRANGE", self._redis.lrange(self.key(name), 0, n - 1))
        return [_decode(r) for r in records]

    async def pop_batch(self, name: str, n: int) -> list[DeadLetter]:
        """Atomically move up to n oldest dead letters to the processing list and return them.
        They stay in Redis until ack(); restore() returns unacknowledged ones."""
        if n <= 0:
            return []
        keys = [self.key(name), self.processing_key(name)]
        records = await self._call("claim", self._claim(keys=keys, args=[n]))
        return [_decode(r) for r in records]

    async def ack(self, name: str, letters: Sequence[DeadLetter]) -> int:
        """Remove replayed dead letters from the processing list; returns how many were removed."""
        if not letters:
            return 0
        pipe = self._redis.pipeline()
        for letter in letters:
            pipe.lrem(self.processing_key(name), 1, letter.record)
        removed = await self._call("LREM", pipe.execute())
        return sum(int(x) for x in removed)

    async def restore(self, name: str) -> int:
        """Move every claimed, unacknowledged dead letter back to the head of the dead list."""
        keys = [self.key(name), self.processing_key(name)]
        return int(await self._call("restore", self._restore(keys=keys, args=[])))

    async def _call(self, what: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ApplyError(f"redis dead-letter {what} failed: {type(exc).__name__}: {exc}") from exc
