"""Redis connection settings and the one place a redis.asyncio client is made.

    client = connect_redis(RedisSettings(url="redis://127.0.0.1:6379/0", password=None))

The password is kept out of every repr; `display_url` is the URL with any password masked.

TLS: a rediss:// URL, with the CA that signed the server's certificate (`ssl_ca_certs`) and, for a
server with tls-auth-clients, this client's certificate and key (`ssl_certfile`, `ssl_keyfile`):
from the [redis] keys of the same names, GEARSYNC_REDIS_SSL_* or the URL's query
(rediss://host:6380/0?ssl_ca_certs=/etc/gearsync/ca.pem). Every client gets them from
`RedisSettings.client_kwargs` (`connect_redis`, and the synchronous client of sync-binlog).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis

from sync.errors import ConfigError
from sync.urls import mask_url, split_url

__all__ = ["DEFAULT_REDIS_URL", "TLS_KEYS", "RedisSettings", "check_redis_url", "check_tls_files", "connect_redis",
           "tls_refused"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# The TLS files of a rediss:// connection: redis-py's own argument names.
TLS_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


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


def check_tls_files(url: str, files: dict[str, tuple[str, str]], url_where: str = "the url") -> dict[str, str]:
    """{key: path} of the TLS files given as {key: (path, where it was set)}, plus those of the
    URL's query (the URL set at `url_where`); ConfigError naming the value when a file cannot be
    read or the URL is not rediss://."""
    query = parse_qs(urlsplit(url).query)
    found = {**files, **{k: (query[k][0], f"{url_where} ?{k}=") for k in TLS_KEYS if query.get(k)}}
    if found and urlsplit(url).scheme != "rediss":
        key, (_path, where) = next(iter(found.items()))
        raise ConfigError(f"{where}: {key} is set for {mask_url(url)!r}; expected a rediss:// url (TLS)")
    for key, (path, where) in found.items():
        try:
            with Path(path).open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{where}: {path!r} cannot be read ({exc.strerror}); expected the {key} PEM file") from None
    return {k: path for k, (path, _where) in found.items()}


@dataclass(frozen=True)
class RedisSettings:
    url: str = DEFAULT_REDIS_URL
    password: str | None = field(default=None, repr=False)
    cluster: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __repr__(self) -> str:
        pw = "***" if self.password else None
        tls = "".join(f", {k}={getattr(self, k)!r}" for k in TLS_KEYS if getattr(self, k))
        return f"RedisSettings(url={mask_url(self.url)!r}, password={pw!r}, cluster={self.cluster}{tls})"

    __str__ = __repr__

    @property
    def display_url(self) -> str:
        return mask_url(self.url)

    def client_kwargs(self) -> dict[str, Any]:
        """The arguments every redis-py client of these settings takes besides the URL: the
        password and the TLS files that are set."""
        tls = {k: getattr(self, k) for k in TLS_KEYS if getattr(self, k)}
        return {"password": self.password, **tls}


def connect_redis(settings: RedisSettings, *, socket_timeout_s: float = 5.0) -> Any:
    """A redis.asyncio client (or cluster client) for the settings; connects lazily."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    common: dict[str, Any] = dict(
        **settings.client_kwargs(),
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


async def tls_refused(settings: RedisSettings, *, timeout_s: float = 5.0) -> str | None:
    """For a rediss:// URL, one PING: why the TLS handshake failed (our CA does not trust the
    server's certificate, or the server refused ours), in one line; None when it worked, for
    another scheme, or when the failure is not TLS's (an unreachable server is worth waiting for,
    a certificate refused is not)."""
    if urlsplit(settings.url).scheme != "rediss":
        return None
    client = connect_redis(settings, socket_timeout_s=timeout_s)
    try:
        await client.ping()
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            return (f"TLS with {settings.display_url} failed: {cause.args[1] if len(cause.args) > 1 else cause}; "
                    "expected ssl_ca_certs to be the CA that signed the server's certificate, and "
                    "ssl_certfile/ssl_keyfile a client certificate the server's tls-ca-cert-file trusts")
    finally:
        await client.aclose()
    return None
