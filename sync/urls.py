"""URL helpers shared by the MySQL and Redis settings: mask a password, refuse one on the command line."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from sync.errors import ConfigError

__all__ = ["mask_url", "refuse_password_in"]


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and errors."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "<unparsable url>"
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}:***@{hostport}", parts.path, parts.query, parts.fragment))


def refuse_password_in(url: str, option: str, password_env: str) -> None:
    """A URL given on the command line must not carry a password (the process list shows argv)."""
    if urlsplit(url).password:
        raise ConfigError(
            f"{option}: {mask_url(url)!r} carries a password, which would show in the process list; "
            f"expected it in {password_env}"
        )
