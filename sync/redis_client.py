"""Redis connection settings and the one place a redis.asyncio client is made.

    client = connect_redis(RedisSettings(url="redis://127.0.0.1:6379/0", password=None))

The password is kept out of every repr; `display_url` is the URL with any password masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from sync.errors import ConfigError
from sync.urls import mask_url, split_url

__all__ = ["DEFAULT_REDIS_URL", "RedisSettings", "check_redis_url", "connect_redis"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def check_redis_url(url: str, where: str = "--redis-url") -> str:
    parts, port = split_url(url, where, ("redis", "rediss", "unix"), "redis://host:port/db",
                            "redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{where}: {mask_url(url)!r} has no host; expected redis://host:port/db")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{where}: {mask_url(url)!r} has port {port}; expected 1 to 65535")
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"{where}: {mask_url(url)!r} has database {db!r}; expected a number like /0")
    return url


@dataclass(frozen=True)
class RedisSettings:
    url: str = DEFAULT_REDIS_URL
    password: str | None = field(default=None, repr=False)
    cluster: bool = False

    def __repr__(self) -> str:
        pw = "***" if self.password else None
        return f"RedisSettings(url={mask_url(self.url)!r}, password={pw!r}, cluster={self.cluster})"

    __str__ = __repr__

    @property
    def display_url(self) -> str:
        return mask_url(self.url)


def connect_redis(settings: RedisSettings, *, socket_timeout_s: float = 5.0) -> Any:
    """A redis.asyncio client (or cluster client) for the settings; connects lazily."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    common: dict[str, Any] = dict(
        password=settings.password,
        # One immediate retry on a dropped pooled connection; longer outages are the worker's
        # own back-off, so redis-py must not sleep inside a call.
        retry=Retry(NoBackoff(), 1),
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=min(2.0, socket_timeout_s),
    )
    if settings.cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(settings.url, **common)
    return aioredis.Redis.from_url(settings.url, health_check_interval=30, **common)
