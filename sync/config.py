"""sync-worker's settings: its options, the environment and its TOML config file, validated at the edge.

The settings every command shares (Gearman servers, Redis, MySQL; the precedence option >
environment > config file > default) are resolved by sync.settings; this module adds the tables
(sync.tables.TableSpec) and the [worker] section. Secrets (the Redis password) come only from the
environment or the config file, never from the command line (it would show in the process list),
and every repr/str here masks them.

The config file, every key and its environment variable: docs/configuration.md; a complete
example: deploy/gearsync.toml.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sync.errors import ConfigError
from sync.redis_client import RedisSettings
from sync.settings import (
    ConfigFile,
    Resolver,
    check_int,
    config_for,
    resolve_gearman_servers,
    resolve_redis,
)
from sync.shape import build_shape
from sync.tables import (
    MAX_TTL_S,
    TableSpec,
    check_function_name,
    check_table_name,
)

__all__ = [
    "CLASSIC_FUNCTION",
    "WorkerSettings",
    "build_table",
    "table_values",
    "worker_settings",
]

CLASSIC_FUNCTION = "syncToRedis"


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
        return {t.gearman_function: t.name for t in self.tables.values()}


def build_table(name: str, values: Mapping[str, Any], where: str) -> TableSpec:
    """A table from the values of its [tables.<name>] section (and the options that override them)."""
    ttl_raw = values.get("ttl_s", 0)
    ttl = check_int(ttl_raw, f"{where}.ttl_s", 0, MAX_TTL_S) if ttl_raw is not None else 0
    return TableSpec(name=name, function=values.get("function") or None,
                     key_template=str(values.get("key_template", "{table}:{pk}")),
                     format=str(values.get("format", "json")), ttl_s=ttl or None, where=where,
                     shape=build_shape(name, values, where))


def table_values(cfg: ConfigFile | None, names: list[str], overrides: Mapping[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """name → (its [tables.<name>] values with the options that were given (not None) over them,
    where they came from: "[tables.<name>]" or "--table")."""
    sections = cfg.tables if cfg is not None else {}
    out: dict[str, tuple[dict[str, Any], str]] = {}
    for name in names:
        check_table_name(name)
        values = dict(sections.get(name, {}))
        values.update({k: v for k, v in overrides.items() if v is not None})
        out[name] = (values, f"[tables.{name}]" if name in sections else "--table")
    return out


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
    """Merge options, env vars and the config file (config_path, else GEARSYNC_CONFIG) into
    validated WorkerSettings."""
    env = os.environ if env is None else env
    # sync-worker reads a config file: without one it is an empty one (a password hint names it).
    cfg = config_for(SimpleNamespace(config=config_path), env) or ConfigFile("")
    options = SimpleNamespace(servers=servers, redis_url=redis_url, redis_cluster=redis_cluster, batch=batch,
                              connections=connections, stats_interval=stats_interval_s)
    r = Resolver(options, env, cfg)
    server_list = resolve_gearman_servers(options, env, cfg)
    redis = resolve_redis(options, env, cfg)

    names = list(tables or []) or list(cfg.tables)
    if not names and not classic:
        raise ConfigError("--table: none given; expected --table NAME (or [tables.NAME] in --config, or --classic)")
    if function is not None and len(names) > 1:
        raise ConfigError(f"--function: {function!r} given with {len(names)} tables; expected one --table with --function")
    overrides = {"function": function, "key_template": key_template, "format": fmt, "ttl_s": ttl_s}
    table_map = {name: build_table(name, values, where)
                 for name, (values, where) in table_values(cfg, names, overrides).items()}

    functions: dict[str, str] = {}
    for t in table_map.values():
        if t.gearman_function in functions:
            raise ConfigError(
                f"function {t.function!r} is used by tables {functions[t.gearman_function]!r} and {t.name!r}; "
                "expected one function per table"
            )
        functions[t.gearman_function] = t.name
    if classic and CLASSIC_FUNCTION in functions:
        raise ConfigError(f"--classic: function {CLASSIC_FUNCTION!r} is already used by table {functions[CLASSIC_FUNCTION]!r}")

    client_id = r.get("worker", "client_id")
    return WorkerSettings(
        servers=server_list, redis=redis, tables=table_map, classic=classic,
        batch=r.get("worker", "batch"), connections=r.get("worker", "connections"),
        stats_interval_s=r.get("worker", "stats_interval_s"), shutdown_timeout_s=r.get("worker", "shutdown_timeout_s"),
        tombstone_ttl_s=r.get("worker", "tombstone_ttl_s"),
        client_id=check_function_name(client_id, "[worker].client_id"),
    )
