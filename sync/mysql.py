"""MySQL/MariaDB connection settings shared by every gearsync command, and the mysql:// URL form.

Which settings a command uses (--mysql-url, GEARSYNC_MYSQL_URL, GEARSYNC_MYSQL_HOST, …, the [mysql]
section of the config file) is decided in one place:
sync.settings.resolve_mysql. Defaults: 127.0.0.1:3306, user root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from sync.errors import ConfigError, SourceError
from sync.urls import mask_url, split_url

DEFAULT_MYSQL_PORT = 3306


@dataclass(frozen=True)
class MySQLSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_MYSQL_PORT
    user: str = "root"
    password: str = field(default="", repr=False)
    database: str | None = None
    unix_socket: str | None = None
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None

    def __repr__(self) -> str:
        return (f"MySQLSettings(host={self.host!r}, port={self.port}, user={self.user!r}, "
                f"password={'***' if self.password else ''!r}, database={self.database!r})")

    __str__ = __repr__

    @property
    def display(self) -> str:
        """user@host:port/db, for messages (never the password)."""
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.database or ''}"

    @property
    def url_display(self) -> str:
        """The connection as a mysql:// URL with the password masked."""
        auth = self.user + (":***" if self.password else "")
        where = f"{self.host}:{self.port}" if not self.unix_socket else f"localhost?unix_socket={self.unix_socket}"
        return f"mysql://{auth}@{where}/{self.database or ''}"

    @property
    def is_local(self) -> bool:
        return bool(self.unix_socket) or self.host in ("localhost", "127.0.0.1", "::1") or self.host.startswith("127.")

    def connect(self, *, database: str | None = None, autocommit: bool = True, **kw: Any) -> Any:
        """A pymysql connection (utf8mb4); SourceError naming the server when it fails."""
        import pymysql

        args: dict[str, Any] = dict(
            user=self.user,
            password=self.password,
            database=database if database is not None else self.database,
            charset="utf8mb4",
            autocommit=autocommit,
            connect_timeout=kw.pop("connect_timeout", 5),
            read_timeout=kw.pop("read_timeout", None),
            write_timeout=kw.pop("write_timeout", None),
        )
        if self.unix_socket:
            args["unix_socket"] = self.unix_socket
        else:
            args["host"], args["port"] = self.host, self.port
        if self.ssl_ca:
            args["ssl"] = {"ca": self.ssl_ca, **({"cert": self.ssl_cert} if self.ssl_cert else {}),
                           **({"key": self.ssl_key} if self.ssl_key else {})}
        args.update(kw)
        try:
            return pymysql.connect(**args)
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else "?"
            text = exc.args[1] if len(exc.args) > 1 else str(exc)
            if self.password:
                text = str(text).replace(self.password, "***")
            raise SourceError(f"cannot connect to {self.url_display}: ({code}, {text!r})") from None


def from_url(url: str, where: str = "--mysql-url") -> MySQLSettings:
    parts, port = split_url(url, where, ("mysql", "mariadb"), "mysql://user@host:port/db")
    query = parse_qs(parts.query)
    sock = query.get("unix_socket", [None])[0]
    if not parts.hostname and not sock:
        raise ConfigError(f"{where}: {mask_url(url)!r} has no host; expected mysql://user@host:port/db")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{where}: {mask_url(url)!r} has port {port}; expected 1 to 65535")
    db = unquote(parts.path.lstrip("/")) or None
    return MySQLSettings(
        host=parts.hostname or "localhost",
        port=port or DEFAULT_MYSQL_PORT,
        user=unquote(parts.username) if parts.username else "root",
        password=unquote(parts.password) if parts.password else "",
        database=db,
        unix_socket=sock,
    )
