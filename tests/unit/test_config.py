"""Settings: precedence, validation messages that name the bad value, secrets kept out of text."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from sync.config import worker_settings
from sync.errors import ConfigError
from sync.settings import (
    ConfigFile,
    check_float,
    check_int,
    load_config,
    parse_servers,
    resolve_gearman_servers,
    resolve_logging,
    resolve_metrics,
    resolve_mysql,
    resolve_redis,
)
from sync.tables import TableSpec, default_function
from sync.urls import mask_url


def test_parse_servers_forms() -> None:
    assert parse_servers("a:1,b,[::1]:4731") == [("a", 1), ("b", 4730), ("::1", 4731)]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("a:0", "port 0"),
        ("a:x", "port 'x'"),
        ("a:1,,b:2", "empty entry"),
        (":4730", "no valid host"),
        ("[::1", "[ipv6]:port"),
    ],
)
def test_parse_servers_rejects_with_the_bad_value(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_servers(text)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_defaults() -> None:
    s = worker_settings(tables=["data"], env={})
    assert s.servers == [("127.0.0.1", 4730)]
    assert s.redis.url == "redis://127.0.0.1:6379/0"
    assert s.tables["data"].function == default_function("data") == "gearsync.data"
    assert s.tables["data"].format == "json"
    assert s.tables["data"].ttl_s is None
    assert s.batch == 128


def test_env_then_option_precedence() -> None:
    env = {"GEARSYNC_GEARMAN_SERVERS": "g1:1", "GEARSYNC_REDIS_URL": "redis://r:7/1", "GEARSYNC_REDIS_PASSWORD": "s3cret"}
    s = worker_settings(tables=["data"], env=env)
    assert s.servers == [("g1", 1)] and s.redis.url == "redis://r:7/1" and s.redis.password == "s3cret"
    s = worker_settings(tables=["data"], env=env, servers="g2:2", redis_url="redis://r2:8/0")
    assert s.servers == [("g2", 2)] and s.redis.url == "redis://r2:8/0"


def test_password_never_in_repr() -> None:
    s = worker_settings(tables=["data"], env={"GEARSYNC_REDIS_URL": "redis://u:hunter2@h:1/0", "GEARSYNC_REDIS_PASSWORD": "hunter3"})
    text = repr(s) + str(s.redis) + s.redis.display_url
    assert "hunter2" not in text and "hunter3" not in text
    assert mask_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"


def test_password_on_command_line_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        worker_settings(tables=["data"], env={}, redis_url="redis://:hunter2@h:1/0")
    assert "hunter2" not in str(err.value) and "GEARSYNC_REDIS_PASSWORD" in str(err.value)


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"batch": 0}, "--batch: 0; expected an integer from 1 to 10000"),
        ({"connections": 100}, "--connections: 100"),
        ({"fmt": "xml"}, "'xml'; expected json or hash"),
        ({"key_template": "{table}"}, "expected {pk} or {pk.<column>}"),
        ({"key_template": "{tbl}:{pk}"}, "unknown placeholder"),
        ({"redis_url": "http://x"}, "scheme 'http'"),
        ({"redis_url": "redis://h:1/abc"}, "database 'abc'"),
    ],
)
def test_bad_options_name_the_value(kw: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        worker_settings(tables=["data"], env={}, **kw)
    assert fragment in str(err.value)


def test_bad_table_names() -> None:
    for bad in ["", "a\nb", "x" * 65, " data"]:
        with pytest.raises(ConfigError, match="--table"):
            worker_settings(tables=[bad], env={})
    with pytest.raises(ConfigError, match="none given"):
        worker_settings(tables=[], env={})


def test_hash_tag_template_is_allowed() -> None:
    s = worker_settings(tables=["data"], env={}, key_template="{{{table}}}:{pk}")
    assert s.tables["data"].key_template == "{{{table}}}:{pk}"
    with pytest.raises(ConfigError, match="single .{. at 0"):
        worker_settings(tables=["data"], env={}, key_template="{table:{pk}")


def test_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        '[gearman]\nservers = ["a:1", "b:2"]\n[redis]\nurl = "redis://r:3/0"\npassword = "pw"\n'
        '[worker]\nbatch = 64\n[tables.data]\nformat = "hash"\nttl_s = 60\n[tables.users]\nfunction = "u"\n'
    )
    cfg.chmod(0o600)
    s = worker_settings(tables=None, config_path=str(cfg), env={})
    assert s.servers == [("a", 1), ("b", 2)]
    assert s.redis.password == "pw" and s.batch == 64
    assert s.tables["data"].format == "hash" and s.tables["data"].ttl_s == 60
    assert s.functions == {"gearsync.data": "data", "u": "users"}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[gearman\n", "not valid TOML"),
        ("[bogus]\n", "unknown section [bogus]"),
        ("[worker]\nbatchsize = 1\n", "unknown key 'batchsize' in [worker]"),
        ("[tables.data]\nformat = 'csv'\n", "[tables.data].format: 'csv'"),
    ],
)
def test_bad_config_file(tmp_path: Path, text: str, fragment: str) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        worker_settings(tables=["data"], config_path=str(cfg), env={})
    assert fragment in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        worker_settings(tables=["data"], config_path=str(tmp_path / "nope.toml"), env={})


# -- the shared resolver (sync.settings) and the one table type (sync.tables) -------------------

def test_resolvers_precedence_option_env_file_default(tmp_path: Path) -> None:
    cfg_path = tmp_path / "g.toml"
    cfg_path.write_text('[gearman]\nservers = "f:3"\n[redis]\nurl = "redis://f:3/0"\npassword = "filepw"\ncluster = true\n')
    cfg_path.chmod(0o640)
    cfg = load_config(cfg_path)
    env = {"GEARSYNC_GEARMAN_SERVERS": "e:2", "GEARSYNC_REDIS_URL": "redis://e:2/0"}
    opts = SimpleNamespace(servers="o:1", redis_url="redis://o:1/0", redis_cluster=None)
    assert resolve_gearman_servers(opts, env, cfg) == [("o", 1)]
    assert resolve_gearman_servers(None, env, cfg) == [("e", 2)]
    assert resolve_gearman_servers(None, {}, cfg) == [("f", 3)]
    assert resolve_gearman_servers(None, {}, None) == [("127.0.0.1", 4730)]
    assert resolve_redis(opts, env, cfg).url == "redis://o:1/0"
    assert resolve_redis(None, env, cfg).url == "redis://e:2/0"
    r = resolve_redis(None, {}, cfg)
    assert (r.url, r.password, r.cluster) == ("redis://f:3/0", "filepw", True)
    assert resolve_redis(None, {"GEARSYNC_REDIS_PASSWORD": "envpw"}, cfg).password == "envpw"
    r = resolve_redis(None, {}, None)
    assert (r.url, r.password, r.cluster) == ("redis://127.0.0.1:6379/0", None, False)


def test_redis_password_hint_names_the_config_file_only_when_the_command_reads_one() -> None:
    opts = SimpleNamespace(redis_url="redis://:pw@h:1/0")
    with pytest.raises(ConfigError, match=r"expected it in GEARSYNC_REDIS_PASSWORD$"):
        resolve_redis(opts, {}, None)
    with pytest.raises(ConfigError, match="GEARSYNC_REDIS_PASSWORD or the config file"):
        resolve_redis(opts, {}, ConfigFile(""))


def test_resolve_mysql_option_over_env() -> None:
    env = {"GEARSYNC_MYSQL_URL": "mysql://e@e:2/edb", "GEARSYNC_MYSQL_PASSWORD": "pw"}
    assert resolve_mysql(SimpleNamespace(mysql_url="mysql://o@o:1/odb"), env).host == "o"
    s = resolve_mysql(None, env)
    assert (s.host, s.port, s.password) == ("e", 2, "pw")


def test_logging_and_metrics_from_options() -> None:
    assert resolve_logging(SimpleNamespace(log_level="warning")).format == "auto"
    assert resolve_logging(SimpleNamespace(log_level="debug", log_format="json")).level == "debug"
    assert resolve_metrics(SimpleNamespace(metrics_port=9100)).port == 9100
    assert resolve_metrics(None).port is None


def test_check_int_and_float_name_the_value() -> None:
    assert check_int("12", "--n", 1, 20) == 12 and check_float("0.5", "--s", 0, 1) == 0.5
    with pytest.raises(ConfigError, match="--n: True; expected an integer from 1 to 20"):
        check_int(True, "--n", 1, 20)
    with pytest.raises(ConfigError, match="--s: 'x'; expected a number from 0 to 1"):
        check_float("x", "--s", 0, 1)


def test_table_spec_checks_once_and_names_the_source() -> None:
    spec = TableSpec("data")
    assert (spec.function, spec.key_template, spec.format, spec.ttl_s) == ("gearsync.data", "{table}:{pk}", "json", None)
    assert spec.build_key("data", (("id", 5),)) == "data:5"
    assert TableSpec("data", function="gearsync.data") == spec
    with pytest.raises(ConfigError, match=r"^\[tables.t\].format: 'xml'; expected json or hash$"):
        TableSpec("t", format="xml")
    with pytest.raises(ConfigError, match=r"^--table.ttl_s: 0"):
        TableSpec("t", ttl_s=0, where="--table")
    with pytest.raises(ConfigError, match=r"^\[tables.t\].function: ''"):
        TableSpec("t", function="")
    s = worker_settings(tables=["data"], env={}, ttl_s=0)
    assert isinstance(s.tables["data"], TableSpec) and s.tables["data"].ttl_s is None


# -- every command's settings from the one file ----------------------------------------------------

def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "all.toml"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_binlog_reads_its_section_and_the_tables(tmp_path: Path) -> None:
    from workers.sync_binlog import build_parser, settings_from_args

    cfg = _file(tmp_path, '[mysql]\nurl = "mysql://sync@db1:3306/app"\npassword = "pw"\n'
                          '[binlog]\nsink = "gearman"\nbatch = 500\nname = "main"\n'
                          '[tables.data]\ncolumns = ["id", "volume"]\nformat = "hash"\nfunction = "jobs.data"\n'
                          '[tables.users]\nformat = "hash"\n')
    s = settings_from_args(build_parser().parse_args(["--config", cfg]), {})
    assert (s.tables, s.database, s.mysql.password, s.sink, s.batch, s.name) == (("data", "users"), "app", "pw", "gearman",
                                                                                  500, "main")
    assert s.format == "hash" and s.columns == {"data": ("id", "volume")} and s.functions == {"data": "jobs.data"}
    s = settings_from_args(build_parser().parse_args(["--config", cfg, "--table", "users", "--batch", "7"]),
                           {"GEARSYNC_BINLOG_SINK": "redis"})
    assert (s.tables, s.batch, s.sink, s.columns, s.functions) == (("users",), 7, "redis", {}, {})
    mixed = _file(tmp_path, '[mysql]\nurl = "mysql://u@h/app"\n[tables.a]\nformat = "hash"\n[tables.b]\n')
    with pytest.raises(ConfigError, match="differ in key_template, format or ttl_s"):
        settings_from_args(build_parser().parse_args(["--config", mixed]), {})


def test_relay_reads_its_section(tmp_path: Path) -> None:
    from workers.sync_relay import build_parser, settings_from_args

    cfg = _file(tmp_path, '[mysql]\nurl = "mysql://u@h/app"\n[gearman]\nservers = "g1:1"\n'
                          '[relay]\ndatabase = ["shop", "crm"]\nbatch = 50\nwatch_triggers = false\n')
    s = settings_from_args(build_parser().parse_args(["--config", cfg]), {})
    assert (s.databases, s.batch, s.watch_triggers, s.servers) == (("shop", "crm"), 50, False, [("g1", 1)])
    s = settings_from_args(build_parser().parse_args(["--config", cfg, "--database", "x", "--watch-triggers"]),
                           {"GEARSYNC_RELAY_BATCH": "60"})
    assert (s.databases, s.batch, s.watch_triggers) == (("x",), 60, True)
    with pytest.raises(ConfigError, match="^GEARSYNC_RELAY_POLL_INTERVAL_S: 'soon'"):
        settings_from_args(build_parser().parse_args(["--config", cfg]), {"GEARSYNC_RELAY_POLL_INTERVAL_S": "soon"})


def test_worker_section_and_environment(tmp_path: Path) -> None:
    cfg = _file(tmp_path, "[worker]\nbatch = 64\nconnections = 3\nclient_id = 'w'\n[tables.data]\n")
    s = worker_settings(tables=None, config_path=cfg, env={"GEARSYNC_WORKER_CONNECTIONS": "2"})
    assert (list(s.tables), s.batch, s.connections, s.client_id) == (["data"], 64, 2, "w")
    s = worker_settings(tables=None, config_path=None, env={"GEARSYNC_CONFIG": cfg})
    assert s.batch == 64


def test_startup_wait_from_the_option_the_environment_or_the_section(tmp_path: Path) -> None:
    from sync.settings import Resolver
    from workers.sync_worker import build_parser

    cfg = load_config(_file(tmp_path, "[worker]\nstartup_wait_s = 5\n"))
    assert Resolver(build_parser().parse_args([]), {}, None).get("worker", "startup_wait_s") == 60.0
    assert Resolver(build_parser().parse_args([]), {}, cfg).get("worker", "startup_wait_s") == 5
    env = {"GEARSYNC_WORKER_STARTUP_WAIT_S": "7"}
    assert Resolver(build_parser().parse_args([]), env, cfg).get("worker", "startup_wait_s") == 7
    assert Resolver(build_parser().parse_args(["--startup-wait", "0"]), env, cfg).get("worker", "startup_wait_s") == 0
