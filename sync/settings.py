"""The one settings resolver and the one config file of every gearsync command.

Precedence, highest first: command-line option, environment variable, config file, default.

    args = parser.parse_args(argv)          # with the option groups of sync.cli (--config among them)
    cfg = config_for(args)                  # --config FILE, else GEARSYNC_CONFIG, else None
    mysql = resolve_mysql(args, os.environ, cfg)
    redis = resolve_redis(args, os.environ, cfg)
    servers = resolve_gearman_servers(args, os.environ, cfg)
    batch = Resolver(args, os.environ, cfg).get("binlog", "batch")

`args` is anything with the option attributes (an argparse.Namespace; a missing attribute or None
counts as an option not given; None: no options at all). `cfg` is the checked config file, or None.

The file is described by SCHEMA (section → key → Key: type, range or choices, default, option,
environment variable) and TABLE_KEYS (the keys of a [tables.<name>] section). It is strict: an
unknown section or key, or a value of the wrong type, is one ConfigError naming the file, the key
and what was expected. A small schema of our own rather than pydantic(-settings): every command
imports this at start-up (pydantic costs ~100 ms of import time per command), and the one-line
wording of every error is ours.

Environment: every key of the shared and per-command sections has a GEARSYNC_<SECTION>_<KEY>
variable (GEARSYNC_MYSQL_URL, GEARSYNC_REDIS_PASSWORD, GEARSYNC_WORKER_BATCH, …; logging is
GEARSYNC_LOG_LEVEL / GEARSYNC_LOG_FORMAT), GEARSYNC_CONFIG names the file. The old names (MYSQL_URL,
MYSQL_HOST, …, REDIS_URL, REDIS_PASSWORD, GEARMAN_SERVERS) still work when the new one is unset;
LoggingSettings.apply() logs one deprecation line per process naming the new ones.

Secrets (the passwords) come only from the environment or the config file, never from the command
line (it would show in the process list). A config file holding a password that others may read
(mode & 0o004) is refused.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sync.errors import ConfigError
from sync.events import MAX_BATCH_CHANGES
from sync.mysql import DEFAULT_MYSQL_PORT, MySQLSettings, from_url
from sync.redis_client import DEFAULT_REDIS_URL, TLS_KEYS, RedisSettings, check_redis_url, check_tls_files
from sync.shape import build_shape
from sync.tables import FORMATS, MAX_TTL_S, check_table_name
from sync.urls import refuse_password_in

__all__ = [
    "DEFAULT_GEARMAN_PORT",
    "DEPRECATED_ENV",
    "SCHEMA",
    "TABLE_KEYS",
    "ConfigFile",
    "Key",
    "LoggingSettings",
    "MetricsSettings",
    "Resolver",
    "check_float",
    "check_int",
    "config_for",
    "deprecated_env",
    "env_name",
    "load_config",
    "mysql_settings",
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
        if isinstance(value, bool):
            raise ValueError
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


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Key:
    """One key of the config file: its type ("str", "secret", "int", "float", "bool", "list": a
    string "a,b" or a list of strings), its range or choices, default, command-line option and
    help; `env` overrides the environment variable's name (default GEARSYNC_<SECTION>_<KEY>;
    "" = none)."""

    kind: str
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    option: str | None = None
    help: str = ""
    env: str | None = None

    @property
    def secret(self) -> bool:
        return self.kind == "secret"

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind == "int":
            return f"an integer from {self.lo:g} to {self.hi:g}"
        if self.kind == "float":
            return f"a number from {self.lo:g} to {self.hi:g}"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "list":
            return 'a list of strings (or one string "a,b")'
        return "a string"

    def check(self, value: Any, where: str, *, text: bool) -> Any:
        """The value checked and converted. `text`: it came from an option or the environment
        (numbers and booleans may be text); from the file the TOML type must be right."""
        shown = "a value" if self.secret else repr(value)
        if self.kind == "int":
            if not text and (type(value) is not int):
                raise ConfigError(f"{where}: {shown}; expected {self.expected()}")
            return check_int(value, where, int(self.lo or 0), int(self.hi or 0))
        if self.kind == "float":
            if not text and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"{where}: {shown}; expected {self.expected()}")
            return check_float(value, where, float(self.lo or 0), float(self.hi or 0))
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if text and str(value).strip().lower() in _TRUE + _FALSE:
                return str(value).strip().lower() in _TRUE
            raise ConfigError(f"{where}: {shown}; expected {self.expected()}")
        if self.kind == "shape":
            return value  # a [tables.NAME] shaping key: _check_tables checks them together (sync.shape)
        if self.kind == "list":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"{where}: {shown}; expected {self.expected()}")
            items = [i.strip() for i in items]
            if not items or any(not i or _CONTROL.search(i) for i in items):
                raise ConfigError(f"{where}: {shown} has an empty or unprintable entry; expected {self.expected()}")
            return items
        if not isinstance(value, str) or (_CONTROL.search(value) and not self.secret):
            raise ConfigError(f"{where}: {shown}; expected {self.expected()}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where}: {shown}; expected {self.expected()}")
        return value


# the choices of the capture triggers and sync-binlog, declared here once (sync.capture imports them)
CAPTURE_MODES = ("udf", "outbox")
FAILURE_POLICIES = ("spool", "fail", "ignore")
SINKS = ("redis", "gearman")
JOB_CHANGES = 256   # sync-binlog --sink gearman: changes per job (measured: sync.capture.binlog.writer)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
PROGRESS = ("auto", "bar", "log")

# --startup-wait of the long-running commands (sync.startup)
STARTUP_WAIT = Key("float", 60.0, 0, 86400, option="--startup-wait",
                   help="at start, seconds to wait for unreachable servers before exit 3")

# section → key → Key. The shared sections first, then one per command with its own keys.
SCHEMA: dict[str, dict[str, Key]] = {
    "mysql": {
        "url": Key("str", option="--mysql-url", help="mysql://user@host:port/db[?unix_socket=/path]; sets host, "
                   "port, user, database and socket together (a password in it only in the file or environment)"),
        "host": Key("str", "127.0.0.1", help="server host (when no url)"),
        "port": Key("int", DEFAULT_MYSQL_PORT, 1, 65535, help="server port (when no url)"),
        "user": Key("str", "root", help="user (when no url)"),
        "database": Key("str", help="database (when no url; --database where a command has it)"),
        "socket": Key("str", help="unix socket path (when no url)"),
        "password": Key("secret", help="password (never an option)"),
        "ssl_ca": Key("str", help="CA file: connect with TLS"),
        "ssl_cert": Key("str", help="client certificate file (with ssl_ca)"),
        "ssl_key": Key("str", help="client key file (with ssl_ca)"),
    },
    "redis": {
        "url": Key("str", DEFAULT_REDIS_URL, option="--redis-url",
                   help="redis://host:port/db, rediss:// for TLS, or unix:///path (without password)"),
        "password": Key("secret", help="password (never an option)"),
        "cluster": Key("bool", False, option="--redis-cluster", help="the url is a Redis Cluster node"),
        "ssl_ca_certs": Key("str", help="CA file that signed the server's certificate (rediss:// url)"),
        "ssl_certfile": Key("str", help="client certificate file, for a server with tls-auth-clients (rediss:// url)"),
        "ssl_keyfile": Key("str", help="the client certificate's key file (rediss:// url)"),
    },
    "gearman": {
        "servers": Key("list", ["127.0.0.1:4730"], option="--servers", help="gearmand servers, host:port"),
    },
    "metrics": {
        "port": Key("int", None, 1, 65535, option="--metrics-port",
                    help="serve Prometheus metrics on http://ADDR:PORT/metrics and health on /healthz (default: off)"),
        "addr": Key("str", "127.0.0.1", option="--metrics-addr",
                    help="address the metrics server binds (0.0.0.0: every interface, for a remote Prometheus)"),
    },
    "logging": {
        "level": Key("str", "info", choices=LOG_LEVELS, option="--log-level", env="GEARSYNC_LOG_LEVEL",
                     help="least severe messages logged (default info; warning for sync-verify, sync-status)"),
        "format": Key("str", "auto", choices=LOG_FORMATS, option="--log-format", env="GEARSYNC_LOG_FORMAT",
                      help="auto: console on a terminal, JSON lines otherwise"),
    },
    "worker": {
        "batch": Key("int", 128, 1, 10000, option="--batch", help="jobs grabbed per round trip and applied per Redis call"),
        "connections": Key("int", 1, 1, 64, option="--connections", help="parallel grab/apply loops"),
        "stats_interval_s": Key("float", 10.0, 0, 86400, option="--stats-interval", help="seconds between stats lines (0 = off)"),
        "shutdown_timeout_s": Key("float", 10.0, 0.1, 3600, help="seconds to finish the jobs in hand at SIGTERM"),
        "tombstone_ttl_s": Key("int", 86400, 1, 365 * 86400, help="seconds a delete's version fence is kept"),
        "client_id": Key("str", "gearsync-worker", help="gearmand client id prefix"),
        "startup_wait_s": STARTUP_WAIT,
    },
    "binlog": {
        "sink": Key("str", "redis", choices=SINKS, option="--sink", help="apply to Redis, or submit to gearmand"),
        "server_id": Key("int", None, 1, 2**32 - 1, option="--server-id", help="replica server_id (default: derived from the name)"),
        "name": Key("str", None, option="--name", help="name of the saved position (default host:port/db/tables)"),
        "batch": Key("int", 2000, 1, 100000, option="--batch", help="most events per Redis call / gearman batch"),
        "flush_ms": Key("float", 20.0, 0.1, 1000, option="--flush-ms", help="longest a change waits to join a batch under load"),
        "job_changes": Key("int", JOB_CHANGES, 1, MAX_BATCH_CHANGES, option="--job-changes",
                           help="--sink gearman: most changes of one table per gearman job (1: a job per change)"),
        "stats_interval_s": Key("float", 10.0, 0, 86400, option="--stats-interval", help="seconds between stats lines (0 = off)"),
        "startup_wait_s": STARTUP_WAIT,
    },
    "relay": {
        "database": Key("list", None, option="--database", help="databases holding gearsync_spool (default [mysql].database)"),
        "batch": Key("int", 500, 1, 100000, option="--batch", help="rows per transaction"),
        "poll_interval_s": Key("float", 0.02, 0.001, 60, option="--poll-interval", help="seconds between polls of an empty spool"),
        "stats_interval_s": Key("float", 10.0, 0, 86400, option="--stats-interval", help="seconds between stats lines (0 = off)"),
        "watch_triggers": Key("bool", True, option="--watch-triggers", help="re-install stale capture triggers"),
        "watch_interval_s": Key("float", 5.0, 0.1, 3600, option="--watch-interval", help="seconds between trigger checks"),
        "startup_wait_s": STARTUP_WAIT,
    },
    "snapshot": {
        "chunk": Key("int", 5000, 1, 1_000_000, option="--chunk", help="rows per query and per saved step"),
        "versions": Key("str", "trigger", choices=("trigger", "binlog"), option="--versions",
                        help="which change source's versions the snapshot orders against"),
        "progress": Key("str", "auto", choices=PROGRESS, option="--progress", help="progress bar or a log line every 10 s"),
    },
    "verify": {
        "chunk": Key("int", 5000, 1, 1_000_000, option="--chunk", help="rows per MySQL query / Redis pipeline"),
        "recheck_delay_s": Key("float", 1.0, 0, 3600, option="--recheck-delay", help="seconds before differences are checked again"),
        "extra": Key("bool", True, option="--no-extra", help="scan Redis for extra keys (--no-extra: false)"),
        "versions": Key("str", "trigger", choices=("trigger", "binlog"), option="--versions",
                        help="--repair's versions: trigger, or binlog for tables synced by sync-binlog"),
        "progress": Key("str", "auto", choices=PROGRESS, option="--progress", help="progress bar or a log line every 10 s"),
    },
}

# The keys of a [tables.<name>] section (options with the same name override them for every table).
TABLE_KEYS: dict[str, Key] = {
    "columns": Key("list", None, option="--columns", help="only these columns (the key columns always)"),
    "format": Key("str", "json", choices=FORMATS, option="--format", help="json: SET key <row JSON>; hash: HSET key <columns>"),
    "function": Key("str", None, option="--function", help="Gearman function (default gearsync.<name>)"),
    "key_template": Key("str", "{table}:{pk}", option="--key-template", help="Redis key of a row: {table}, {pk}, {pk.<column>}"),
    "mode": Key("str", "udf", choices=CAPTURE_MODES, option="--mode", help="sync-triggers: udf or outbox"),
    "on_enqueue_failure": Key("str", "spool", choices=FAILURE_POLICIES, option="--on-enqueue-failure",
                              help="sync-triggers --mode udf: when gearmand did not take a change"),
    "ttl_s": Key("int", 0, 0, MAX_TTL_S, option="--ttl", help="expire row keys after this many seconds (0 = never)"),
    # shaping (sync.shape, docs/shaping.md): checked as a whole by build_shape when the file is read
    "exclude": Key("shape", help="columns never written"),
    "rename": Key("shape", help="{ column = \"field\" }: write a column under another name"),
    "filter": Key("shape", help="only rows matching it live in Redis, e.g. \"active = 1 AND price > 0\""),
    "indexes": Key("shape", help="[[tables.NAME.indexes]] type = zset|set, column, key: indexes kept with the row"),
    "stream": Key("shape", help="[tables.NAME.stream] maxlen, key: XADD every applied change"),
}

# old environment variable → its GEARSYNC_ name (read when the new one is unset; deprecated)
DEPRECATED_ENV: dict[str, str] = {
    **{f"MYSQL_{k.upper()}": f"GEARSYNC_MYSQL_{k.upper()}" for k in SCHEMA["mysql"]},
    "REDIS_URL": "GEARSYNC_REDIS_URL",
    "REDIS_PASSWORD": "GEARSYNC_REDIS_PASSWORD",
    "GEARMAN_SERVERS": "GEARSYNC_GEARMAN_SERVERS",
}
_OLD_ENV = {new: old for old, new in DEPRECATED_ENV.items()}
CONFIG_ENV = "GEARSYNC_CONFIG"


def env_name(section: str, key: str) -> str:
    """The environment variable of a key ("" when it has none)."""
    spec = SCHEMA[section][key]
    return spec.env if spec.env is not None else f"GEARSYNC_{section}_{key}".upper()


def deprecated_env(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(old, new) for each old-style variable set (and read: its new name is unset)."""
    env = _env(env)
    return [(old, new) for old, new in DEPRECATED_ENV.items() if env.get(old) and not env.get(new)]


def _env_value(env: Mapping[str, str], section: str, key: str) -> tuple[str, str] | None:
    """(variable, value) of a key from the environment: the GEARSYNC_ name, else its old name."""
    name = env_name(section, key)
    if not name:
        return None
    for var in (name, _OLD_ENV.get(name)):
        if var and env.get(var):
            return var, env[var]
    return None


# -- the config file ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ConfigFile:
    """A parsed, checked TOML config file (``--config``): values converted to their Key's type."""

    path: str
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def section(self, name: str) -> Mapping[str, Any]:
        return self.data.get(name, {})

    @property
    def tables(self) -> Mapping[str, Mapping[str, Any]]:
        """[tables.<name>] sections, in file order."""
        return self.data.get("tables", {})

    def where(self, key: str) -> str:
        """How an error names a value of the file, e.g. '--config g.toml: [redis].url'."""
        return f"--config {self.path}: {key}"


def _one_of(names: Mapping[str, Any] | list[str]) -> str:
    return ", ".join(sorted(names))


def _keys_of(keys: Mapping[str, Key]) -> str:
    """The keys of a section, its shaping keys ([tables.NAME]) last."""
    shaping = [k for k, spec in keys.items() if spec.kind == "shape"]
    plain = _one_of([k for k in keys if k not in shaping])
    return plain + (f", or the shaping keys {_one_of(shaping)}" if shaping else "")


def _check_section(path: str, label: str, values: Any, keys: Mapping[str, Key]) -> dict[str, Any]:
    where = f"--config {path}: "
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}{label} is {values!r}; expected a section {label} with keys {_one_of(keys)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in keys:
            raise ConfigError(f"{where}unknown key {key!r} in {label}; expected one of {_keys_of(keys)}")
        out[key] = keys[key].check(value, f"{where}{label}.{key}", text=False)
    return out


def _holds_secret(data: Mapping[str, Any]) -> bool:
    from urllib.parse import urlsplit

    for section in ("mysql", "redis"):
        values = data.get(section, {})
        if values.get("password"):
            return True
        try:
            if values.get("url") and urlsplit(values["url"]).password:
                return True
        except ValueError:
            pass
    return False


def load_config(path: str | os.PathLike[str]) -> ConfigFile:
    """Read and check a TOML config file: an unknown section or key, a wrong type, or a password
    in a file others may read are ConfigErrors in one line naming the file and the key."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config: {str(p)!r} does not exist; expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {str(p)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"--config: {str(p)!r} cannot be read: {exc.strerror}") from None
    data: dict[str, Any] = {}
    for name, values in raw.items():
        if name == "tables":
            data[name] = _check_tables(str(p), values)
        elif name in SCHEMA:
            data[name] = _check_section(str(p), f"[{name}]", values, SCHEMA[name])
        else:
            raise ConfigError(f"--config {p}: unknown section [{name}]; expected one of "
                              f"{_one_of([*SCHEMA, 'tables'])}")
    if mode & stat.S_IROTH and _holds_secret(data):
        raise ConfigError(f"--config {p}: holds a password and is readable by others (mode {stat.S_IMODE(mode):04o}); "
                          f"expected it private: chmod 600 {p} (or 640 for a group)")
    return ConfigFile(str(path), data)


def _check_tables(path: str, values: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"--config {path}: tables = {values!r}; expected [tables.<name>] sections")
    tables: dict[str, dict[str, Any]] = {}
    for name, section in values.items():
        check_table_name(name, f"--config {path}: [tables.{name}]")
        if not isinstance(section, Mapping):
            raise ConfigError(f"--config {path}: {name} = {section!r} under [tables]; expected a section "
                              f"[tables.{name}] with keys {_one_of(TABLE_KEYS)}")
        tables[name] = _check_section(path, f"[tables.{name}]", section, TABLE_KEYS)
        build_shape(name, tables[name], f"--config {path}: [tables.{name}]")
    return tables


def config_for(args: Any = None, env: Mapping[str, str] | None = None) -> ConfigFile | None:
    """The config file of a command: --config FILE, else GEARSYNC_CONFIG, else None."""
    path = _option(args, "config") or _env(env).get(CONFIG_ENV)
    return load_config(path) if path else None


# -- the resolvers ------------------------------------------------------------------------------

def _option(args: Any, name: str) -> Any:
    return getattr(args, name, None) if args is not None else None


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _file_where(cfg: ConfigFile | None, key: str) -> str:
    return cfg.where(key) if cfg is not None else key


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


class Resolver:
    """Values of SCHEMA keys for one command: option > environment > config file > default."""

    def __init__(self, args: Any = None, env: Mapping[str, str] | None = None, cfg: ConfigFile | None = None) -> None:
        self.args, self.env, self.cfg = args, _env(env), cfg

    def source(self, section: str, key: str, dest: str | None = None) -> tuple[Any, str] | None:
        """(raw value, where) from the option (attribute `dest`, default the Key's option), the
        environment or the file; None when none of them sets it. File values are checked already."""
        spec = SCHEMA[section][key]
        dest = dest or (_dest(spec.option) if spec.option else None)
        value = _option(self.args, dest) if dest else None
        if value is not None:
            return value, spec.option or f"--{dest}"
        found = _env_value(self.env, section, key)
        if found is not None:
            return found[1], found[0]
        if self.cfg is not None and key in self.cfg.section(section):
            return self.cfg.section(section)[key], ""
        return None

    def get(self, section: str, key: str, dest: str | None = None) -> Any:
        """The checked value (the Key's default when nothing sets it)."""
        spec = SCHEMA[section][key]
        found = self.source(section, key, dest)
        if found is None:
            return spec.default
        value, where = found
        return spec.check(value, where, text=True) if where else value

    def tables(self, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """The [tables.<name>] values of `names` (default: every table of the file), {} for a
        table the file does not name."""
        sections = self.cfg.tables if self.cfg is not None else {}
        return {n: dict(sections.get(n, {})) for n in (names if names is not None else list(sections))}


def resolve_mysql(args: Any = None, env: Mapping[str, str] | None = None, cfg: ConfigFile | None = None) -> MySQLSettings:
    """[mysql] from the file, then the environment, then --mysql-url, each over the one before.
    In each, a url sets host, port, user, database and socket together (the separate keys of the
    same source are then not read); password and ssl_* apply whenever set."""
    env = _env(env)
    fields: dict[str, Any] = {}
    file_values = cfg.section("mysql") if cfg is not None else {}
    sources: list[dict[str, tuple[Any, str]]] = [
        {k: (v, "") for k, v in file_values.items()},
        {k: found[::-1] for k in SCHEMA["mysql"] if (found := _env_value(env, "mysql", k)) is not None},
    ]
    url = _option(args, "mysql_url")
    if url is not None:
        refuse_password_in(url, "--mysql-url", "GEARSYNC_MYSQL_PASSWORD or the config file")
        sources.append({"url": (url, "--mysql-url")})
    def get(values: dict[str, tuple[Any, str]], key: str) -> Any:
        value, where = values[key]
        return SCHEMA["mysql"][key].check(value, where, text=True) if where else value

    for values in sources:
        if "url" in values:
            where = values["url"][1] or _file_where(cfg, "[mysql].url")
            s = from_url(values["url"][0], where)
            fields.update(host=s.host, port=s.port, user=s.user, database=s.database, unix_socket=s.unix_socket)
            if s.password:
                fields["password"] = s.password
        else:
            for key, name in (("host", "host"), ("port", "port"), ("user", "user"), ("database", "database"),
                              ("socket", "unix_socket")):
                if key in values:
                    fields[name] = get(values, key)
        for key in ("password", "ssl_ca", "ssl_cert", "ssl_key"):
            if key in values:
                fields[key] = get(values, key)
    return MySQLSettings(**fields)


def mysql_settings(url: str | None = None, env: Mapping[str, str] | None = None,
                   cfg: ConfigFile | None = None) -> MySQLSettings:
    """resolve_mysql for a caller holding the --mysql-url value itself (None: not given)."""
    return resolve_mysql(SimpleNamespace(mysql_url=url), env, cfg)


def resolve_redis(args: Any = None, env: Mapping[str, str] | None = None, cfg: ConfigFile | None = None) -> RedisSettings:
    """url: --redis-url / GEARSYNC_REDIS_URL / [redis].url; password: GEARSYNC_REDIS_PASSWORD /
    [redis].password; cluster: --redis-cluster / GEARSYNC_REDIS_CLUSTER / [redis].cluster; TLS files:
    GEARSYNC_REDIS_SSL_CA_CERTS / [redis].ssl_ca_certs (…_CERTFILE, …_KEYFILE), or the url's query
    (?ssl_ca_certs=…), which is used over them as redis-py does."""
    r = Resolver(args, env, cfg)
    found = r.source("redis", "url")
    url_where = "[redis].url"
    if found is None:
        url = DEFAULT_REDIS_URL
    else:
        url, where = found
        url_where = where or _file_where(cfg, "[redis].url")
        check_redis_url(url, url_where)
        if where == "--redis-url":
            refuse_password_in(url, "--redis-url", "GEARSYNC_REDIS_PASSWORD" if cfg is None
                               else "GEARSYNC_REDIS_PASSWORD or the config file")
    tls = {k: (r.get("redis", k), found[1] or _file_where(cfg, f"[redis].{k}"))
           for k in TLS_KEYS if (found := r.source("redis", k)) is not None}
    return RedisSettings(url=url, password=r.get("redis", "password") or None, cluster=bool(r.get("redis", "cluster")),
                         **check_tls_files(url, tls, url_where))


def resolve_gearman_servers(args: Any = None, env: Mapping[str, str] | None = None,
                            cfg: ConfigFile | None = None) -> list[tuple[str, int]]:
    """--servers / GEARSYNC_GEARMAN_SERVERS / [gearman].servers (a string or a list) / 127.0.0.1:4730."""
    found = Resolver(args, env, cfg).source("gearman", "servers")
    if found is None:
        return [("127.0.0.1", DEFAULT_GEARMAN_PORT)]
    value, where = found
    text = ",".join(value) if isinstance(value, list) else str(value)
    return parse_servers(text, where or _file_where(cfg, "[gearman].servers"))


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"
    format: str = "auto"   # auto: console on a terminal, JSON otherwise
    deprecated: tuple[tuple[str, str], ...] = ()   # (old, new) environment names in use

    @property
    def json(self) -> bool:
        """--log-format json: stderr carries nothing but JSON lines."""
        return self.format == "json"

    def apply(self) -> None:
        """Set up structlog; then, once per process, one line naming the old environment
        variables in use and their GEARSYNC_ names."""
        from sync.logging import setup_logging

        setup_logging(self.level, self.format)
        global _deprecation_logged
        if self.deprecated and not _deprecation_logged:
            import structlog

            _deprecation_logged = True
            structlog.get_logger("gearsync").warning(
                "deprecated_environment_variables", old=",".join(o for o, _ in self.deprecated),
                use=",".join(n for _, n in self.deprecated))


_deprecation_logged = False


def resolve_logging(args: Any = None, env: Mapping[str, str] | None = None,
                    cfg: ConfigFile | None = None) -> LoggingSettings:
    """--log-level / GEARSYNC_LOG_LEVEL / [logging].level / the command's default (the option
    group stores it as log_level_default); --log-format likewise."""
    r = Resolver(args, env, cfg)
    level = r.get("logging", "level") if r.source("logging", "level") else (_option(args, "log_level_default") or "info")
    return LoggingSettings(level=level, format=r.get("logging", "format"), deprecated=tuple(deprecated_env(env)))


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
    """--metrics-port / GEARSYNC_METRICS_PORT / [metrics].port (off when none); --metrics-addr likewise
    (default 127.0.0.1: this host only)."""
    r = Resolver(args, env, cfg)
    return MetricsSettings(port=r.get("metrics", "port"), addr=r.get("metrics", "addr"))
