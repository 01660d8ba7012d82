"""URL helpers shared by the MySQL and Redis settings: mask a password, refuse one on the command line."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit

from sync.errors import ConfigError

__all__ = ["mask_url", "refuse_password_in", "split_url"]


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


def split_url(url: str, where: str, schemes: tuple[str, ...], expected: str,
              expected_scheme: str | None = None) -> tuple[SplitResult, int | None]:
    """(parts, port) of a URL whose scheme is one of `schemes`. ConfigError naming `where`, the masked
    URL and what was expected (`expected`, e.g. "redis://host:port/db"; for a wrong scheme
    `expected_scheme` if given) when it does not parse or has another scheme."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: {mask_url(url)!r} is not a valid URL ({exc}); expected {expected}") from None
    if parts.scheme not in schemes:
        raise ConfigError(f"{where}: {mask_url(url)!r} has scheme {parts.scheme!r}; expected {expected_scheme or expected}")
    return parts, port
