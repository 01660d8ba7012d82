"""The one settings resolver: what every command shares (MySQL, Redis, gearmand, logging, metrics).

Precedence, highest first: command-line option, environment variable, config file, default.

    args = parser.parse_args(argv)          # with the option groups of sync.cli
    cfg = load_config(args.config) if args.config else None
    mysql = resolve_mysql(args, os.environ, cfg)
    redis = resolve_redis(args, os.environ, cfg)
    servers = resolve_gearman_servers(args, os.environ, cfg)

`args` is anything with the option attributes (an argparse.Namespace; a missing attribute counts
as an option not given; None: no options at all). `cfg` is the parsed config file, or None for a
command that reads none. Secrets (the passwords) come only from the environment or the config
file, never from the command line (it would show in the process list).

    option          environment                         config file          default
    --mysql-url     MYSQL_URL, else MYSQL_HOST, MYSQL_PORT, MYSQL_USER,       127.0.0.1:3306, root
                    MYSQL_DATABASE, MYSQL_SOCKET; MYSQL_PASSWORD;
                    MYSQL_SSL_CA / _CERT / _KEY
    --redis-url     REDIS_URL                           [redis].url          redis://127.0.0.1:6379/0
                    REDIS_PASSWORD                      [redis].password
    --redis-cluster                                     [redis].cluster      off
    --servers       GEARMAN_SERVERS                     [gearman].servers    127.0.0.1:4730
    --log-level, --log-format                                                info (per command), auto
    --metrics-port                                                           off
    --metrics-addr                                                           127.0.0.1

The [mysql] section is accepted in the file but not read yet (as before).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sync.errors import ConfigError
from sync.mysql import DEFAULT_MYSQL_PORT, MySQLSettings, from_url
from sync.redis_client import DEFAULT_REDIS_URL, RedisSettings, check_redis_url
from sync.urls import refuse_password_in

__all__ = [
    "DEFAULT_GEARMAN_PORT",
    "ConfigFile",
    "LoggingSettings",
    "MetricsSettings",
    "check_float",
    "check_int",
    "load_config",
    "parse_servers",
    "resolve_gearman_servers",
    "resolve_logging",
    "resolve_metrics",
    "resolve_mysql",
    "resolve_redis",
]

DEFAULT_GEARMAN_PORT = 4730

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- validators ---------------------------------------------------------------------------------

def check_int(value: Any, where: str, lo: int, hi: int) -> int:
    """An integer from lo to hi (a number or its text); ConfigError naming `where` and the value."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r}; expected an integer from {lo} to {hi}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{where}: {value!r}; expected an integer from {lo} to {hi}") from None
    if not lo <= number <= hi:
        raise ConfigError(f"{where}: {number}; expected an integer from {lo} to {hi}")
    return number


def check_float(value: Any, where: str, lo: float, hi: float) -> float:
    """A number from lo to hi (a number or its text); ConfigError naming `where` and the value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r}; expected a number from {lo:g} to {hi:g}") from None
    if not lo <= number <= hi:
        raise ConfigError(f"{where}: {number:g}; expected a number from {lo:g} to {hi:g}")
    return number


def parse_servers(text: str, where: str = "--servers") -> list[tuple[str, int]]:
    """'host[:port][,host[:port]…]' (IPv6 as [addr]:port) → [(host, port), …]."""
    servers: list[tuple[str, int]] = []
    for raw in str(text).split(","):
        item = raw.strip()
        if not item:
            raise ConfigError(f"{where}: {text!r} has an empty entry; expected host:port[,host:port…]")
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
            if not sep or port_text is None:
                raise ConfigError(f"{where}: {item!r} is not [ipv6]:port")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host or _CONTROL.search(host) or " " in host:
            raise ConfigError(f"{where}: {item!r} has no valid host; expected host:port")
        if port_text == "":
            port = DEFAULT_GEARMAN_PORT
        else:
            try:
                port = int(port_text)
            except ValueError:
                raise ConfigError(f"{where}: {item!r} has port {port_text!r}; expected a number from 1 to 65535") from None
            if not 1 <= port <= 65535:
                raise ConfigError(f"{where}: {item!r} has port {port}; expected a number from 1 to 65535")
        servers.append((host, port))
    return servers


# -- the config file ----------------------------------------------------------------------------

# section → its known keys (None: any key; [tables] holds one [tables.<name>] table per table).
SECTIONS: dict[str, frozenset[str] | None] = {
    "gearman": frozenset({"servers"}),
    "redis": frozenset({"url", "password", "cluster"}),
    "worker": frozenset({"batch", "connections", "stats_interval_s", "shutdown_timeout_s", "tombstone_ttl_s",
                         "client_id"}),
    "tables": None,
    "mysql": None,
}


@dataclass(frozen=True)
class ConfigFile:
    """A parsed, checked TOML config file (``--config``)."""

    path: str
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def section(self, name: str) -> Mapping[str, Any]:
        return self.data.get(name, {})

    def where(self, key: str) -> str:
        """How an error names a value of the file, e.g. '--config g.toml: [redis].url'."""
        return f"--config {self.path}: {key}"


def load_config(path: str | os.PathLike[str]) -> ConfigFile:
    """Read and check a TOML config file: unknown sections or keys are errors that name them."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config: {str(p)!r} does not exist; expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {str(p)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"--config: {str(p)!r} cannot be read: {exc.strerror}") from None
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"--config {p}: unknown section [{key}]; expected one of {', '.join(sorted(SECTIONS))}")
    for name in ("gearman", "redis", "worker"):
        section = data.get(name, {})
        known = SECTIONS[name] or frozenset()
        if not isinstance(section, Mapping):
            raise ConfigError(f"--config {p}: [{name}] must be a table")
        for key in section:
            if key not in known:
                raise ConfigError(f"--config {p}: unknown key {key!r} in [{name}]; expected one of {', '.join(sorted(known))}")
    if not isinstance(data.get("tables", {}), Mapping):
        raise ConfigError(f"--config {p}: [tables] must hold [tables.<name>] sections")
    return ConfigFile(str(path), data)


# -- the resolvers ------------------------------------------------------------------------------

def _option(args: Any, name: str) -> Any:
    return getattr(args, name, None) if args is not None else None


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def resolve_mysql(args: Any = None, env: Mapping[str, str] | None = None, cfg: ConfigFile | None = None) -> MySQLSettings:
    """--mysql-url, else MYSQL_URL, else the MYSQL_* variables; MYSQL_PASSWORD and MYSQL_SSL_* always
    apply when set."""
    return mysql_settings(_option(args, "mysql_url"), env)


def mysql_settings(url: str | None = None, env: Mapping[str, str] | None = None) -> MySQLSettings:
    """resolve_mysql for a caller holding the --mysql-url value itself (None: not given)."""
    env = _env(env)
    if url is not None:
        settings = from_url(url, "--mysql-url")
        refuse_password_in(url, "--mysql-url", "MYSQL_PASSWORD")
    elif env.get("MYSQL_URL"):
        settings = from_url(env["MYSQL_URL"], "MYSQL_URL")
    else:
        port_text = env.get("MYSQL_PORT") or str(DEFAULT_MYSQL_PORT)
        try:
            port = int(port_text)
            if not 1 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise ConfigError(f"MYSQL_PORT: {port_text!r}; expected a port number from 1 to 65535") from None
        settings = MySQLSettings(
            host=env.get("MYSQL_HOST") or "127.0.0.1",
            port=port,
            user=env.get("MYSQL_USER") or "root",
            database=env.get("MYSQL_DATABASE") or None,
            unix_socket=env.get("MYSQL_SOCKET") or None,
        )
    overrides: dict[str, Any] = {}
    if env.get("MYSQL_PASSWORD"):
        overrides["password"] = env["MYSQL_PASSWORD"]
    for key in ("ssl_ca", "ssl_cert", "ssl_key"):
        value = env.get("MYSQL_" + key.upper())
        if value:
            overrides[key] = value
    return replace(settings, **overrides) if overrides else settings


def resolve_redis(args: Any = None, env: Mapping[str, str] | None = None, cfg: ConfigFile | None = None) -> RedisSettings:
    """--redis-url / REDIS_URL / [redis].url; REDIS_PASSWORD / [redis].password; --redis-cluster /
    [redis].cluster."""
    env = _env(env)
    section = cfg.section("redis") if cfg is not None else {}
    url = _option(args, "redis_url")
    if url is not None:
        check_redis_url(url, "--redis-url")
        refuse_password_in(url, "--redis-url", "REDIS_PASSWORD" if cfg is None else "REDIS_PASSWORD or the config file")
    elif env.get("REDIS_URL"):
        url = check_redis_url(env["REDIS_URL"], "REDIS_URL")
    elif cfg is not None:
        url = check_redis_url(str(section.get("url", DEFAULT_REDIS_URL)), cfg.where("[redis].url"))
    else:
        url = DEFAULT_REDIS_URL
    password = env.get("REDIS_PASSWORD") or section.get("password") or None
    cluster = _option(args, "redis_cluster")
    if cluster is None:
        cluster = section.get("cluster", False)
    return RedisSettings(url=url, password=password, cluster=bool(cluster))


def resolve_gearman_servers(args: Any = None, env: Mapping[str, str] | None = None,
                            cfg: ConfigFile | None = None) -> list[tuple[str, int]]:
    """--servers / GEARMAN_SERVERS / [gearman].servers (a string or a list) / 127.0.0.1:4730."""
    env = _env(env)
    servers = _option(args, "servers")
    if servers is not None:
        return parse_servers(servers, "--servers")
    if env.get("GEARMAN_SERVERS"):
        return parse_servers(env["GEARMAN_SERVERS"], "GEARMAN_SERVERS")
    if cfg is not None and "servers" in cfg.section("gearman"):
        raw = cfg.section("gearman")["servers"]
        return parse_servers(",".join(raw) if isinstance(raw, list) else str(raw), cfg.where("[gearman].servers"))
    return [("127.0.0.1", DEFAULT_GEARMAN_PORT)]


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"
    format: str = "auto"   # auto: console on a terminal, JSON otherwise

    def apply(self) -> None:
        from sync.logging import setup_logging

        setup_logging(self.level, self.format)


def resolve_logging(args: Any = None, env: Mapping[str, str] | None = None,
                    cfg: ConfigFile | None = None) -> LoggingSettings:
    """--log-level / --log-format (their defaults come from the command's option group)."""
    return LoggingSettings(level=_option(args, "log_level") or "info", format=_option(args, "log_format") or "auto")


@dataclass(frozen=True)
class MetricsSettings:
    port: int | None = None   # None: no metrics endpoint
    addr: str = "127.0.0.1"

    def start(self) -> None:
        """Serve /metrics and /healthz on http://<addr>:<port>/ when a port is set (sync.health)."""
        if self.port is not None:
            from sync.health import start_metrics_server

            start_metrics_server(self.port, self.addr)


def resolve_metrics(args: Any = None, env: Mapping[str, str] | None = None,
                    cfg: ConfigFile | None = None) -> MetricsSettings:
    """--metrics-port (off when not given), --metrics-addr (default 127.0.0.1)."""
    return MetricsSettings(port=_option(args, "metrics_port"), addr=_option(args, "metrics_addr") or "127.0.0.1")
