"""How one table is synced: its Gearman function and how its rows are stored in Redis.

    spec = TableSpec("data")                                   # gearsync.data, "{table}:{pk}", json
    spec = TableSpec("data", "{{{table}}}:{pk}", "hash", ttl_s=3600, function="jobs.data")
    spec = TableSpec("items", shape=build_shape("items", {"filter": "active = 1"}, "[tables.items]"))

A TableSpec is checked once, when it is made (name, function, key template, format, TTL), and
carries the compiled key builder of its template. The config file, sync-worker's options, the
applier, snapshot/verify and sync-binlog all describe a table with it.

`where` (not a field) names what the values came from in error messages, e.g. "[tables.data]"
or "--table"; the default is "[tables.<name>]".
"""

from __future__ import annotations

import re
from dataclasses import InitVar, dataclass, field

from sync.errors import ConfigError
from sync.keys import DEFAULT_TEMPLATE, KeyBuilder, compile_template
from sync.shape import Shape

__all__ = [
    "FORMATS",
    "MAX_TTL_S",
    "TableSpec",
    "check_function_name",
    "check_key_template",
    "check_table_name",
    "default_function",
]

FORMATS = ("json", "hash")
MAX_TTL_S = 10 * 365 * 86400

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def default_function(table: str) -> str:
    """The Gearman function that carries changes of `table` (triggers and workers agree on it)."""
    return f"gearsync.{table}"


def check_table_name(name: str, where: str = "--table") -> str:
    """A MySQL table name as gearsync accepts it: 1-64 characters, no control characters."""
    if not name or len(name) > 64 or _CONTROL.search(name) or name != name.strip():
        raise ConfigError(
            f"{where}: {name!r} is not a table name; expected 1 to 64 characters without control "
            "characters or surrounding spaces"
        )
    return name


def check_function_name(name: str, where: str = "--function") -> str:
    if not name or len(name) > 512 or _CONTROL.search(name) or name != name.strip():
        raise ConfigError(f"{where}: {name!r} is not a Gearman function name; expected 1 to 512 printable "
                          "characters, no leading or trailing spaces")
    return name


def check_key_template(template: str, where: str = "--key-template") -> str:
    """Placeholders {table}, {pk} and {pk.<column>}; a literal brace is doubled, so a Redis Cluster
    hash tag on the table is written '{{{table}}}:{pk}' (→ '{data}:5'). The rules live in keys.py."""
    if _CONTROL.search(template) or not template or len(template) > 512:
        raise ConfigError(f"{where}: {template!r}; expected printable text up to 512 characters")
    try:
        compile_template(template)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return template


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One synced table. `function` defaults to gearsync.<name>; `ttl_s` None = no expiry."""

    name: str
    key_template: str = DEFAULT_TEMPLATE
    format: str = "json"  # "json" | "hash"
    ttl_s: int | None = None
    function: str | None = None
    shape: Shape | None = None  # exclude/rename/filter/indexes/stream (sync.shape; None: the row as it is)
    where: InitVar[str | None] = None
    build_key: KeyBuilder = field(init=False, repr=False, compare=False)

    def __post_init__(self, where: str | None) -> None:
        label = where or f"[tables.{self.name}]"
        check_table_name(self.name, label)
        if self.function is None:
            object.__setattr__(self, "function", default_function(self.name))
        check_function_name(str(self.function), f"{label}.function")
        check_key_template(self.key_template, f"{label}.key_template")
        if self.format not in FORMATS:
            raise ConfigError(f"{label}.format: {self.format!r}; expected json or hash")
        if self.ttl_s is not None and (type(self.ttl_s) is not int or not 0 < self.ttl_s <= MAX_TTL_S):
            raise ConfigError(f"{label}.ttl_s: {self.ttl_s!r}; expected None or 1..{MAX_TTL_S} seconds")
        object.__setattr__(self, "build_key", compile_template(self.key_template))
        if self.shape is not None and self.shape.indexes and self.ttl_s is not None:
            raise ConfigError(f"{label}: indexes with ttl_s {self.ttl_s}; expected one of them (an expired row "
                              "would stay in its indexes)")

    @property
    def gearman_function(self) -> str:
        """`function`, typed as set: __post_init__ fills in the default, so it is never None."""
        assert self.function is not None
        return self.function
