"""gearmand's text admin protocol (same port as the binary one), each call on a fresh connection with a deadline.

    rows = await status("127.0.0.1", 4730)      # [FunctionStatus(name, queued, running, workers)]

Every call opens a connection, sends one command, reads the reply and closes, all within ``timeout_s``; failures
raise GearmanConnectionError / GearmanTimeoutError, an ``ERR`` reply raises GearmanServerError, and a reply
that does not parse raises GearmanProtocolError: every failure is a GearmanError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from sync.errors import ProtocolError
from sync.gearman.errors import GearmanConnectionError, GearmanProtocolError, GearmanServerError, GearmanTimeoutError
from sync.gearman.protocol import (
    FunctionStatus,
    JobInfo,
    WorkerInfo,
    parse_admin_error,
    parse_show_jobs,
    parse_show_unique_jobs,
    parse_status,
    parse_version,
    parse_workers,
)

__all__ = ["admin_command", "getpid", "show_jobs", "show_unique_jobs", "status", "version", "workers"]

MAX_REPLY_BYTES = 64 * 1024 * 1024

T = TypeVar("T")


async def admin_command(host: str, port: int, command: str, *, multiline: bool, timeout_s: float = 5.0) -> list[str]:
    """Send one admin command; return the reply lines (without the final "." for a multi-line reply)."""
    if "\n" in command or "\r" in command:
        raise ValueError(f"admin command must be one line, got {command!r}")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_REPLY_BYTES)
            writer.write(command.encode("utf-8") + b"\n")
            await writer.drain()
            lines: list[str] = []
            received = 0
            while True:
                raw = await reader.readline()
                if not raw.endswith(b"\n"):
                    raise GearmanConnectionError(
                        f"{host}:{port}: connection closed during reply to {command!r}", (host, port)
                    )
                received += len(raw)
                if received > MAX_REPLY_BYTES:
                    raise GearmanProtocolError(
                        f"{host}:{port}: reply to {command!r} exceeds {MAX_REPLY_BYTES} bytes", (host, port)
                    )
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not lines:
                    error = parse_admin_error(line)
                    if error is not None:
                        raise GearmanServerError(error[0], error[1], (host, port))
                if not multiline:
                    return [line]
                if line == ".":
                    return lines
                lines.append(line)
    except TimeoutError:
        raise GearmanTimeoutError(
            f"{host}:{port}: admin command {command!r} timed out after {timeout_s}s", (host, port)
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: StreamReader line limit
        raise GearmanConnectionError(f"{host}:{port}: admin command {command!r} failed: {exc!r}", (host, port)) from exc
    finally:
        if writer is not None:
            writer.transport.abort()


async def _ask(host: str, port: int, command: str, parse: Callable[[list[str]], T], *, multiline: bool,
               timeout_s: float) -> T:
    """One admin command and its parsed reply; a reply the parser refuses is a GearmanProtocolError."""
    lines = await admin_command(host, port, command, multiline=multiline, timeout_s=timeout_s)
    try:
        return parse(lines)
    except (ProtocolError, ValueError) as exc:
        raise GearmanProtocolError(f"{host}:{port}: {exc}", (host, port)) from None


async def status(host: str, port: int, timeout_s: float = 5.0) -> list[FunctionStatus]:
    """``status``: one row per known function (queued counts running jobs too)."""
    return await _ask(host, port, "status", parse_status, multiline=True, timeout_s=timeout_s)


async def workers(host: str, port: int, timeout_s: float = 5.0) -> list[WorkerInfo]:
    """``workers``: one row per connection (clients too, with no functions)."""
    return await _ask(host, port, "workers", parse_workers, multiline=True, timeout_s=timeout_s)


async def version(host: str, port: int, timeout_s: float = 5.0) -> str:
    """``version`` -> e.g. "1.1.20+ds"."""
    return await _ask(host, port, "version", lambda lines: parse_version(lines[0]), multiline=False, timeout_s=timeout_s)


async def getpid(host: str, port: int, timeout_s: float = 5.0) -> int:
    """``getpid`` -> the gearmand process id."""
    def pid(lines: list[str]) -> int:
        text = parse_version(lines[0])
        if not text.isdigit():
            raise ProtocolError(f"getpid: expected 'OK <pid>', got {lines[0]!r}")
        return int(text)

    return await _ask(host, port, "getpid", pid, multiline=False, timeout_s=timeout_s)


async def show_jobs(host: str, port: int, timeout_s: float = 5.0) -> list[JobInfo]:
    """``show jobs``: every job gearmand holds (queued or running)."""
    return await _ask(host, port, "show jobs", parse_show_jobs, multiline=True, timeout_s=timeout_s)


async def show_unique_jobs(host: str, port: int, timeout_s: float = 5.0) -> list[str]:
    """``show unique jobs``: the unique id of every job ("" for none)."""
    return await _ask(host, port, "show unique jobs", parse_show_unique_jobs, multiline=True, timeout_s=timeout_s)
