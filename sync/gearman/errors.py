"""Gearman-specific errors; all are SyncError subclasses (see sync/errors.py)."""

from __future__ import annotations

from sync.errors import ProtocolError, SyncError

__all__ = [
    "GearmanConnectionError",
    "GearmanError",
    "GearmanJobFailed",
    "GearmanJobTimeoutError",
    "GearmanProtocolError",
    "GearmanServerError",
    "GearmanTimeoutError",
    "GearmanUnavailableError",
]


class GearmanError(SyncError):
    """Base of the errors raised by sync.gearman."""


class GearmanConnectionError(GearmanError):
    """The connection failed (refused, reset, closed, timed out, garbage received); it is closed now.

    ``address`` is the (host, port) of the server concerned.
    """

    def __init__(self, message: str, address: tuple[str, int] | None = None) -> None:
        super().__init__(message)
        self.address = address


class GearmanTimeoutError(GearmanConnectionError):
    """A connect, write or read did not finish within its deadline; the connection was closed."""


class GearmanProtocolError(GearmanConnectionError, ProtocolError):
    """The server sent bytes that are not valid Gearman; the connection was closed."""


class GearmanUnavailableError(GearmanConnectionError):
    """No server could take the request. ``retry_after_s`` is when the next server leaves its back-off."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GearmanServerError(GearmanError):
    """The server answered with an ERROR packet (``code``, ``text``), e.g. ARGUMENT_TOO_LARGE, QUEUE_FULL."""

    def __init__(self, code: str, text: str, address: tuple[str, int] | None = None) -> None:
        super().__init__(f"gearmand error {code}: {text}")
        self.code = code
        self.text = text
        self.address = address


class GearmanJobFailed(GearmanError):
    """A foreground job ended with WORK_FAIL (``exception`` is None) or WORK_EXCEPTION (its data)."""

    def __init__(self, handle: bytes, exception: bytes | None = None, data: bytes = b"") -> None:
        what = "failed" if exception is None else f"raised {exception[:200]!r}"
        super().__init__(f"job {handle.decode('ascii', 'replace')} {what}")
        self.handle = handle
        self.exception = exception
        self.data = data


class GearmanJobTimeoutError(GearmanError, TimeoutError):
    """A foreground job did not finish within the caller's timeout. The connection stays open; the job may still
    run on a worker (its result is then discarded)."""

    def __init__(self, handle: bytes, timeout_s: float) -> None:
        super().__init__(f"job {handle.decode('ascii', 'replace')} did not finish within {timeout_s}s")
        self.handle = handle
        self.timeout_s = timeout_s
