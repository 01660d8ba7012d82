"""sync-worker's settings: its options, the environment and its TOML config file, validated at the edge.

The settings every command shares (Gearman servers, Redis, MySQL; the precedence option >
environment > config file > default) are resolved by sync.settings; this module adds the tables
(sync.tables.TableSpec) and the [worker] section. Secrets (the Redis password) come only from the
environment or the config file, never from the command line (it would show in the process list),
and every repr/str here masks them.

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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

from sync.errors import ConfigError
from sync.redis_client import RedisSettings
from sync.settings import (
    ConfigFile,
    check_float,
    check_int,
    load_config,
    resolve_gearman_servers,
    resolve_redis,
)
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
    # sync-worker reads a config file: without --config it is an empty one.
    cfg = load_config(config_path) if config_path else ConfigFile("")
    worker_sec = cfg.section("worker")
    tables_sec = cfg.section("tables")

    options = SimpleNamespace(servers=servers, redis_url=redis_url, redis_cluster=redis_cluster)
    server_list = resolve_gearman_servers(options, env, cfg)
    redis = resolve_redis(options, env, cfg)

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
        if t.gearman_function in functions:
            raise ConfigError(
                f"function {t.function!r} is used by tables {functions[t.gearman_function]!r} and {t.name!r}; "
                "expected one function per table"
            )
        functions[t.gearman_function] = t.name
    if classic and CLASSIC_FUNCTION in functions:
        raise ConfigError(f"--classic: function {CLASSIC_FUNCTION!r} is already used by table {functions[CLASSIC_FUNCTION]!r}")

    settings = WorkerSettings(servers=server_list, redis=redis, tables=table_map, classic=classic)
    overrides: dict[str, Any] = {}
    b = batch if batch is not None else worker_sec.get("batch")
    if b is not None:
        overrides["batch"] = check_int(b, "--batch", 1, 10000)
    c = connections if connections is not None else worker_sec.get("connections")
    if c is not None:
        overrides["connections"] = check_int(c, "--connections", 1, 64)
    for key, lo, hi in (("stats_interval_s", 0.0, 86400.0), ("shutdown_timeout_s", 0.1, 3600.0)):
        if key in worker_sec:
            overrides[key] = check_float(worker_sec[key], f"[worker].{key}", lo, hi)
    if stats_interval_s is not None:
        overrides["stats_interval_s"] = check_float(stats_interval_s, "--stats-interval", 0.0, 86400.0)
    if "tombstone_ttl_s" in worker_sec:
        overrides["tombstone_ttl_s"] = check_int(worker_sec["tombstone_ttl_s"], "[worker].tombstone_ttl_s", 1, 365 * 86400)
    if "client_id" in worker_sec:
        overrides["client_id"] = check_function_name(str(worker_sec["client_id"]), "[worker].client_id")
    return replace(settings, **overrides) if overrides else settings
