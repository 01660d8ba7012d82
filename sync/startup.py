"""Waiting at start for the servers a long-running command needs (sync-worker, sync-binlog, sync-relay).

    wait_for_servers(60, mysql=settings.mysql, redis=settings.redis, gearman=settings.servers)

At boot a command may start before MariaDB, Redis or gearmand listen. Each server is tried in turn
(MySQL, Redis, gearmand) with back-off (sync.retry.retry_for) until it accepts a connection or
`wait_s` seconds since the call have passed; each wait is one log line
(`server_unreachable_at_start`). When a server is still unreachable then, SourceError with one
line naming it: the command exits 3, and its systemd unit starts it again later. 0 = one attempt.

Only reachability is checked: a TCP (or unix socket) connection, nothing sent; for a rediss:// URL
also the TLS handshake (one PING), whose certificate refused is SourceError at once. What happens past
that (a login refused, a Redis still loading its data, a hung server) is the command's own
business, as it always was: it reports the error, or its reconnect logic waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import structlog

from sync.errors import SourceError
from sync.mysql import MySQLSettings
from sync.redis_client import RedisSettings, tls_refused
from sync.retry import DeadlinePassed, retry_for

__all__ = ["wait_for_servers"]

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 5.0
DEFAULT_REDIS_PORT = 6379

# (host, port) of a TCP server, or (path, None) of a unix socket
Address = tuple[str, int | None]


class Unreachable(Exception):
    """No address of a server accepted a connection: worth another attempt."""


def wait_for_servers(
    wait_s: float,
    *,
    mysql: MySQLSettings | None = None,
    redis: RedisSettings | None = None,
    gearman: Sequence[tuple[str, int]] = (),
) -> None:
    """Block until every given server accepts a connection, at most `wait_s` seconds in all (see the
    module docstring). Several gearmand servers: one that accepts is enough (the commands connect
    to the others when they come up)."""
    servers: list[tuple[str, str, list[Address]]] = []
    if mysql is not None:
        servers.append(("mysql", mysql.url_display,
                        [(mysql.unix_socket, None)] if mysql.unix_socket else [(mysql.host, mysql.port)]))
    if redis is not None:
        servers.append(("redis", redis.display_url, [_redis_address(redis.url)]))
    if gearman:
        servers.append(("gearmand", ",".join(f"{h}:{p}" for h, p in gearman), [(h, p) for h, p in gearman]))
    asyncio.run(_wait_all(wait_s, servers))
    refused = asyncio.run(tls_refused(redis)) if redis is not None else None
    if refused:
        raise SourceError(f"redis: {refused}")


def _redis_address(url: str) -> Address:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return unquote(parts.path), None
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_REDIS_PORT


async def _wait_all(wait_s: float, servers: list[tuple[str, str, list[Address]]]) -> None:
    deadline = time.monotonic() + wait_s
    started = time.monotonic()
    for server, display, addresses in servers:
        def on_retry(exc: BaseException, delay: float, server: str = server, display: str = display) -> None:
            log.warning("server_unreachable_at_start", server=server, address=display, error=str(exc)[:300],
                        retry_in_s=round(delay, 2), waited_s=round(time.monotonic() - started, 1), startup_wait_s=wait_s)

        async def attempt(display: str = display, addresses: list[Address] = addresses) -> None:
            await _connect_any(display, addresses)

        try:
            await retry_for(max(0.0, deadline - time.monotonic()), attempt, retry_on=(Unreachable,), on_retry=on_retry)
        except DeadlinePassed as gave_up:
            raise SourceError(f"{server} unreachable: {gave_up.__cause__} (gave up after {time.monotonic() - started:.1f} s "
                              f"of --startup-wait {wait_s:g})") from None
        log.debug("server_reachable_at_start", server=server, address=display)


async def _connect_any(display: str, addresses: list[Address]) -> None:
    async def one(host: str, port: int | None) -> str | None:
        where = f"{host}:{port}" if port is not None else host
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                if port is None:
                    _reader, writer = await asyncio.open_unix_connection(host)
                else:
                    _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            return f"{where}: {exc or 'timed out'}"
        writer.close()
        return None

    errors = await asyncio.gather(*(one(h, p) for h, p in addresses))
    if all(errors):
        raise Unreachable(f"cannot connect to {display} (" + "; ".join(e for e in errors if e) + ")")
