"""Waiting at start for the servers a long-running command needs (sync-worker, sync-binlog, sync-relay).

    wait_for_servers(60, mysql=settings.mysql, redis=settings.redis, gearman=settings.servers)

At boot a command may start before MariaDB, Redis or gearmand accept connections. Each server is
tried in turn (MySQL, Redis, gearmand) with back-off (sync.retry.retry_for) until it answers or
`wait_s` seconds since the call have passed; each wait is one log line
(`server_unreachable_at_start`). When a server is still unreachable then, SourceError with one
line naming it: the command exits 3, and its systemd unit restarts it later. 0 = one attempt each.

Only reachability is checked: when a server answers with an error retrying cannot fix (a login
refused, a Redis password refused), the wait ends there and the command reports that error as it
always has (exit 2 or 3, as before). A running command keeps its own reconnect logic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from sync.errors import SourceError, short_error
from sync.mysql import MySQLSettings
from sync.redis_client import RedisSettings, connect_redis
from sync.retry import DeadlinePassed, retry_for

__all__ = ["DEFAULT_STARTUP_WAIT_S", "wait_for_servers"]

log = structlog.get_logger(__name__)

DEFAULT_STARTUP_WAIT_S = 60.0
CONNECT_TIMEOUT_S = 5.0

# pymysql client error codes of a server that is not (yet) there, or not ready: worth a retry.
# 2002/2003 cannot connect (socket / TCP), 2005 unknown host (DNS not up yet at boot),
# 2006/2013 connection lost, 1040 too many connections, 1053 server shutdown in progress.
MYSQL_RETRY_CODES = frozenset({2002, 2003, 2005, 2006, 2013, 1040, 1053})


class Unreachable(Exception):
    """A probe found the server not (yet) reachable: worth another attempt."""


def wait_for_servers(
    wait_s: float,
    *,
    mysql: MySQLSettings | None = None,
    redis: RedisSettings | None = None,
    gearman: Sequence[tuple[str, int]] = (),
) -> None:
    """Block until every given server answers, at most `wait_s` seconds in all (see the module docstring)."""
    asyncio.run(_wait_all(wait_s, mysql, redis, tuple(gearman)))


async def _wait_all(wait_s: float, mysql: MySQLSettings | None, redis: RedisSettings | None,
                    gearman: tuple[tuple[str, int], ...]) -> None:
    deadline = time.monotonic() + wait_s
    probes: list[tuple[str, str, Callable[[], Awaitable[bool]]]] = []
    if mysql is not None:
        probes.append(("mysql", mysql.url_display, lambda: _probe_mysql(mysql)))
    if redis is not None:
        probes.append(("redis", redis.display_url, lambda: _probe_redis(redis)))
    if gearman:
        probes.append(("gearmand", ",".join(f"{h}:{p}" for h, p in gearman), lambda: _probe_gearman(gearman)))
    started = time.monotonic()
    for server, address, probe in probes:
        def on_retry(exc: BaseException, delay: float, server: str = server, address: str = address) -> None:
            log.warning("server_unreachable_at_start", server=server, address=address, error=str(exc)[:300],
                        retry_in_s=round(delay, 2), waited_s=round(time.monotonic() - started, 1), startup_wait_s=wait_s)

        try:
            answered_ok = await retry_for(max(0.0, deadline - time.monotonic()), probe, retry_on=(Unreachable,),
                                          on_retry=on_retry)
        except DeadlinePassed as gave_up:
            raise SourceError(f"{server} unreachable: {gave_up.__cause__} (gave up after {time.monotonic() - started:.1f} s "
                              f"of --startup-wait {wait_s:g})") from None
        log.debug("server_reachable_at_start", server=server, address=address, ok=answered_ok)
        if not answered_ok:
            return  # the command itself meets that error first and reports it


async def _probe_mysql(settings: MySQLSettings) -> bool:
    def connect() -> None:
        # No default database: only the server is waited for (a missing database is the command's error).
        settings.connect(database="", connect_timeout=int(CONNECT_TIMEOUT_S)).close()

    try:
        await asyncio.to_thread(connect)
    except SourceError as exc:
        # MySQLSettings.connect raises `from None`: the driver's error is still the context.
        cause = exc.__context__
        code = cause.args[0] if cause is not None and cause.args else None
        if code in MYSQL_RETRY_CODES:
            raise Unreachable(str(exc)) from None
        return False  # it answered (e.g. access denied)
    return True


async def _probe_redis(settings: RedisSettings) -> bool:
    import redis.exceptions as rex

    client = connect_redis(settings, socket_timeout_s=CONNECT_TIMEOUT_S)
    try:
        await client.ping()
        return True
    except (rex.AuthenticationError, rex.AuthenticationWrongNumberOfArgsError):
        return False  # it answered (a password refused)
    except (rex.ConnectionError, rex.TimeoutError, rex.ClusterError, rex.RedisClusterException, OSError) as exc:
        # BusyLoadingError (a Redis loading its dataset at boot) is a ConnectionError too.
        raise Unreachable(f"cannot connect to {settings.display_url}: {exc or type(exc).__name__}") from None
    except rex.RedisError:
        return False  # it answered (NOAUTH, …)
    finally:
        try:
            await client.aclose()
        except Exception as exc:  # closing a client that never connected must not hide the outcome
            log.debug("redis_close_failed", error=short_error(exc))


async def _probe_gearman(servers: tuple[tuple[str, int], ...]) -> bool:
    """Reachable when at least one of the job servers accepts a connection (the commands connect to
    the others when they come up)."""
    async def one(host: str, port: int) -> str | None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            return f"{host}:{port}: {exc or type(exc).__name__}"
        writer.close()
        return None

    errors = await asyncio.gather(*(one(h, p) for h, p in servers))
    if all(errors):
        raise Unreachable("cannot connect to gearmand " + "; ".join(e for e in errors if e))
    return True
