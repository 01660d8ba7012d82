"""Exception hierarchy shared by all of gearsync.

Every error names the bad value and what was expected.
"""


class SyncError(Exception):
    """Base class of every error raised by gearsync on purpose."""


class ConfigError(SyncError):
    """Bad or missing configuration value."""


class ProtocolError(SyncError):
    """Bytes on the wire that do not follow the expected protocol."""


class SourceError(SyncError):
    """The change source (trigger jobs, binlog) failed."""


class ApplyError(SyncError):
    """Writing a change to Redis failed."""


class PayloadError(SyncError):
    """A job payload (change event) that cannot be parsed or violates the wire format."""


def short_error(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` of an exception in at most `limit` characters, for one log line or one
    error line (a driver's message can carry a whole statement)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
