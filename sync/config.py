"""Settings for gearsync's commands: parsed from options, env vars and a TOML file, validated at the edge.

Precedence, highest first: command-line option, environment variable, config file, default.
Secrets (the Redis password) come only from the environment or the config file, never from the
command line (it would show in the process list), and every repr/str here masks them.

Config file (``--config gearsync.toml``)::

    [gearman]
    servers = "127.0.0.1:4730,10.0.0.2:4730"

    [redis]
    url = "redis://127.0.0.1:6379/0"
    password = "..."            # or REDIS_PASSWORD

    [worker]
    batch = 128
    connections = 2

    [tables.data]
    function = "gearsync.data"  # default: gearsync.<table>
    key_template = "{table}:{pk}"
    format = "json"             # or "hash"
    ttl_s = 0                   # 0 = no expiry
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from sync.errors import ConfigError
from sync.redis_client import DEFAULT_REDIS_URL, RedisSettings, check_redis_url
from sync.tables import (
    FORMATS,
    MAX_TTL_S,
    TableSpec,
    check_function_name,
    check_key_template,
    check_table_name,
    default_function,
)
from sync.urls import refuse_password_in

__all__ = [
    "CLASSIC_FUNCTION", "DEFAULT_GEARMAN_PORT", "WorkerSettings", "build_table", "load_toml", "parse_servers",
    "worker_settings",
    # Kept importable from here for the merge of the parallel branches (their home is sync.tables):
    "FORMATS", "TableConfig", "check_function_name", "check_key_template", "check_table_name", "default_function",
]

DEFAULT_GEARMAN_PORT = 4730
CLASSIC_FUNCTION = "syncToRedis"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


TableConfig = TableSpec  # alias for the merge; use sync.tables.TableSpec


@dataclass(frozen=True)
class WorkerSettings:
    servers: list[tuple[str, int]]
    redis: RedisSettings
    tables: dict[str, TableSpec]
    classic: bool = False
    batch: int = 128
    connections: int = 1
    stats_interval_s: float = 10.0
    shutdown_timeout_s: float = 10.0
    tombstone_ttl_s: int = 86400
    client_id: str = "gearsync-worker"

    @property
    def functions(self) -> dict[str, str]:
        """function name → table name."""
        return {t.function: t.name for t in self.tables.values()}


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r}; expected an integer from {lo} to {hi}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{where}: {value!r}; expected an integer from {lo} to {hi}") from None
    if not lo <= number <= hi:
        raise ConfigError(f"{where}: {number}; expected an integer from {lo} to {hi}")
    return number


def _float(value: Any, where: str, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r}; expected a number from {lo:g} to {hi:g}") from None
    if not lo <= number <= hi:
        raise ConfigError(f"{where}: {number:g}; expected a number from {lo:g} to {hi:g}")
    return number


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
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
    known = {"gearman", "redis", "worker", "tables", "mysql"}
    for key in data:
        if key not in known:
            raise ConfigError(f"--config {p}: unknown section [{key}]; expected one of {', '.join(sorted(known))}")
    return data


def _section(data: Mapping[str, Any], name: str, known: set[str], path: str) -> Mapping[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"--config {path}: [{name}] must be a table")
    for key in section:
        if key not in known:
            raise ConfigError(f"--config {path}: unknown key {key!r} in [{name}]; expected one of {', '.join(sorted(known))}")
    return section


def build_table(name: str, values: Mapping[str, Any], where: str) -> TableSpec:
    """A table from the values of its [tables.<name>] section (and the options that override them)."""
    ttl_raw = values.get("ttl_s", 0)
    ttl = _int(ttl_raw, f"{where}.ttl_s", 0, MAX_TTL_S) if ttl_raw is not None else 0
    return TableSpec(name=name, function=values.get("function") or None,
                     key_template=str(values.get("key_template", "{table}:{pk}")),
                     format=str(values.get("format", "json")), ttl_s=ttl or None, where=where)


def worker_settings(
    *,
    tables: list[str] | None,
    config_path: str | None = None,
    servers: str | None = None,
    redis_url: str | None = None,
    function: str | None = None,
    key_template: str | None = None,
    fmt: str | None = None,
    ttl_s: int | None = None,
    batch: int | None = None,
    connections: int | None = None,
    classic: bool = False,
    redis_cluster: bool | None = None,
    stats_interval_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> WorkerSettings:
    """Merge options, env vars and the config file into validated WorkerSettings."""
    env = os.environ if env is None else env
    data: dict[str, Any] = load_toml(config_path) if config_path else {}
    path = str(config_path or "")

    gearman = _section(data, "gearman", {"servers"}, path)
    redis_sec = _section(data, "redis", {"url", "password", "cluster"}, path)
    worker_sec = _section(data, "worker", {"batch", "connections", "stats_interval_s", "shutdown_timeout_s",
                                           "tombstone_ttl_s", "client_id"}, path)
    tables_sec = data.get("tables", {})
    if not isinstance(tables_sec, Mapping):
        raise ConfigError(f"--config {path}: [tables] must hold [tables.<name>] sections")

    if servers is not None:
        server_list = parse_servers(servers, "--servers")
    elif env.get("GEARMAN_SERVERS"):
        server_list = parse_servers(env["GEARMAN_SERVERS"], "GEARMAN_SERVERS")
    elif "servers" in gearman:
        raw = gearman["servers"]
        server_list = parse_servers(",".join(raw) if isinstance(raw, list) else str(raw), f"--config {path}: [gearman].servers")
    else:
        server_list = [("127.0.0.1", DEFAULT_GEARMAN_PORT)]

    if redis_url is not None:
        url = check_redis_url(redis_url, "--redis-url")
        refuse_password_in(url, "--redis-url", "REDIS_PASSWORD or the config file")
    elif env.get("REDIS_URL"):
        url = check_redis_url(env["REDIS_URL"], "REDIS_URL")
    else:
        url = check_redis_url(str(redis_sec.get("url", DEFAULT_REDIS_URL)), f"--config {path}: [redis].url")
    password = env.get("REDIS_PASSWORD") or redis_sec.get("password") or None
    cluster = bool(redis_cluster) if redis_cluster is not None else bool(redis_sec.get("cluster", False))
    redis = RedisSettings(url=url, password=password, cluster=cluster)

    names = list(tables or [])
    if not names:
        names = list(tables_sec.keys())
    if not names and not classic:
        raise ConfigError("--table: none given; expected --table NAME (or [tables.NAME] in --config, or --classic)")
    if function is not None and len(names) > 1:
        raise ConfigError(f"--function: {function!r} given with {len(names)} tables; expected one --table with --function")
    table_map: dict[str, TableSpec] = {}
    for name in names:
        check_table_name(name)
        values = dict(tables_sec.get(name, {}))
        where = f"[tables.{name}]" if name in tables_sec else "--table"
        if function is not None:
            values["function"] = function
        if key_template is not None:
            values["key_template"] = key_template
        if fmt is not None:
            values["format"] = fmt
        if ttl_s is not None:
            values["ttl_s"] = ttl_s
        table_map[name] = build_table(name, values, where)

    functions: dict[str, str] = {}
    for t in table_map.values():
        if t.function in functions:
            raise ConfigError(f"function {t.function!r} is used by tables {functions[t.function]!r} and {t.name!r}; expected one function per table")
        functions[t.function] = t.name
    if classic and CLASSIC_FUNCTION in functions:
        raise ConfigError(f"--classic: function {CLASSIC_FUNCTION!r} is already used by table {functions[CLASSIC_FUNCTION]!r}")

    settings = WorkerSettings(servers=server_list, redis=redis, tables=table_map, classic=classic)
    overrides: dict[str, Any] = {}
    b = batch if batch is not None else worker_sec.get("batch")
    if b is not None:
        overrides["batch"] = _int(b, "--batch", 1, 10000)
    c = connections if connections is not None else worker_sec.get("connections")
    if c is not None:
        overrides["connections"] = _int(c, "--connections", 1, 64)
    for key, lo, hi in (("stats_interval_s", 0.0, 86400.0), ("shutdown_timeout_s", 0.1, 3600.0)):
        if key in worker_sec:
            overrides[key] = _float(worker_sec[key], f"[worker].{key}", lo, hi)
    if stats_interval_s is not None:
        overrides["stats_interval_s"] = _float(stats_interval_s, "--stats-interval", 0.0, 86400.0)
    if "tombstone_ttl_s" in worker_sec:
        overrides["tombstone_ttl_s"] = _int(worker_sec["tombstone_ttl_s"], "[worker].tombstone_ttl_s", 1, 365 * 86400)
    if "client_id" in worker_sec:
        overrides["client_id"] = check_function_name(str(worker_sec["client_id"]), "[worker].client_id")
    return replace(settings, **overrides) if overrides else settings
