"""The config file schema, the GEARSYNC_ environment and the one resolver (sync.settings)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from sync.errors import ConfigError
from sync.settings import (
    SCHEMA,
    TABLE_KEYS,
    Resolver,
    deprecated_env,
    env_name,
    load_config,
    resolve_logging,
    resolve_metrics,
    resolve_mysql,
    resolve_redis,
)

REPO = Path(__file__).resolve().parent.parent.parent


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "g.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("[mysqld]\n", "unknown section [mysqld]; expected one of binlog, gearman, logging, metrics, mysql, redis, "
                       "relay, snapshot, tables, verify, worker"),
        ('[tables.data]\nkeytemplate = "{pk}"\n',
         "unknown key 'keytemplate' in [tables.data]; expected one of columns, format, function, key_template, mode, "
         "on_enqueue_failure, ttl_s"),
        ("[tables]\ndata = 5\n", "data = 5 under [tables]; expected a section [tables.data] with keys columns"),
        ("tables = 5\n", "tables = 5; expected [tables.<name>] sections"),
        ('[worker]\nbatch = "64"\n', "[worker].batch: '64'; expected an integer from 1 to 10000"),
        ("[worker]\nbatch = 0\n", "[worker].batch: 0; expected an integer from 1 to 10000"),
        ("[worker]\nbatch = true\n", "[worker].batch: True; expected an integer from 1 to 10000"),
        ('[redis]\ncluster = "yes"\n', "[redis].cluster: 'yes'; expected true or false"),
        ("[gearman]\nservers = [1, 2]\n", "[gearman].servers: [1, 2]; expected a list of strings"),
        ("[mysql]\nport = 70000\n", "[mysql].port: 70000; expected an integer from 1 to 65535"),
        ('[binlog]\nsink = "kafka"\n', "[binlog].sink: 'kafka'; expected one of redis, gearman"),
        ('[tables.data]\nformat = "csv"\n', "[tables.data].format: 'csv'; expected one of json, hash"),
        ("[tables.data]\nttl_s = 1.5\n", "[tables.data].ttl_s: 1.5; expected an integer"),
        ("[redis]\nurl = 5\n", "[redis].url: 5; expected a string"),
        ("[logging]\nlevel = 'loud'\n", "[logging].level: 'loud'; expected one of debug, info, warning, error"),
        ("[worker\n", "is not valid TOML"),
    ],
)
def test_each_error_is_one_line_naming_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_wrong_password_type_does_not_show_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[mysql\].password: a value; expected a string"):
        load_config(write(tmp_path, "[mysql]\npassword = 123456789\n"))


@pytest.mark.parametrize("text", ['[mysql]\npassword = "hunter2"\n', '[redis]\npassword = "hunter2"\n',
                                  '[mysql]\nurl = "mysql://u:hunter2@h/db"\n'])
def test_a_password_in_a_file_others_can_read_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text, 0o644)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"chmod 600 {path}" in str(err.value) and "readable by others" in str(err.value)
    assert "hunter2" not in str(err.value)
    for private in (0o600, 0o640):
        path.chmod(private)
        load_config(path)


def test_a_file_without_password_may_be_world_readable(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[redis]\nurl = "redis://r:1/0"\n', 0o644))
    assert resolve_redis(None, {}, cfg).url == "redis://r:1/0"


def test_values_are_converted_and_lists_may_be_one_string(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[gearman]\nservers = "a:1, b:2"\n[tables.t]\ncolumns = ["id", "v"]\n'
                                      "[binlog]\nflush_ms = 5\n"))
    assert cfg.section("gearman")["servers"] == ["a:1", "b:2"]
    assert cfg.tables["t"]["columns"] == ["id", "v"]
    assert Resolver(None, {}, cfg).get("binlog", "flush_ms") == 5


def test_precedence_option_env_file_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[binlog]\nbatch = 300\n[logging]\nlevel = 'debug'\n[metrics]\nport = 9001\n"))
    env = {"GEARSYNC_BINLOG_BATCH": "200", "GEARSYNC_METRICS_PORT": "9002"}
    assert Resolver(SimpleNamespace(batch=100), env, cfg).get("binlog", "batch") == 100
    assert Resolver(SimpleNamespace(batch=None), env, cfg).get("binlog", "batch") == 200
    assert Resolver(None, {}, cfg).get("binlog", "batch") == 300
    assert Resolver(None, {}, None).get("binlog", "batch") == 2000
    assert resolve_metrics(None, env, cfg).port == 9002 and resolve_metrics(None, {}, cfg).port == 9001
    assert resolve_metrics(SimpleNamespace(metrics_port=9003), env, cfg).port == 9003
    # logging: the option, else GEARSYNC_LOG_LEVEL, else [logging], else the command's own default
    defaults = SimpleNamespace(log_level=None, log_format=None, log_level_default="warning")
    assert resolve_logging(defaults, {}, None).level == "warning"
    assert resolve_logging(defaults, {}, cfg).level == "debug"
    assert resolve_logging(defaults, {"GEARSYNC_LOG_LEVEL": "error"}, cfg).level == "error"
    assert resolve_logging(SimpleNamespace(log_level="info"), {"GEARSYNC_LOG_LEVEL": "error"}, cfg).level == "info"


def test_bad_environment_values_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^GEARSYNC_WORKER_BATCH: 'lots'; expected an integer from 1 to 10000$"):
        Resolver(None, {"GEARSYNC_WORKER_BATCH": "lots"}).get("worker", "batch")
    with pytest.raises(ConfigError, match=r"^GEARSYNC_REDIS_CLUSTER: 'maybe'; expected true or false$"):
        Resolver(None, {"GEARSYNC_REDIS_CLUSTER": "maybe"}).get("redis", "cluster")
    assert Resolver(None, {"GEARSYNC_REDIS_CLUSTER": "yes"}).get("redis", "cluster") is True


def test_every_key_has_a_gearsync_variable() -> None:
    names = {env_name(s, k) for s, keys in SCHEMA.items() for k in keys}
    assert {"GEARSYNC_MYSQL_URL", "GEARSYNC_MYSQL_PASSWORD", "GEARSYNC_REDIS_URL", "GEARSYNC_REDIS_PASSWORD",
            "GEARSYNC_GEARMAN_SERVERS", "GEARSYNC_LOG_LEVEL", "GEARSYNC_LOG_FORMAT", "GEARSYNC_METRICS_PORT",
            "GEARSYNC_WORKER_BATCH", "GEARSYNC_RELAY_POLL_INTERVAL_S"} <= names
    assert all(n.startswith("GEARSYNC_") for n in names)


def test_old_names_still_work_and_are_listed_as_deprecated() -> None:
    old = {"MYSQL_URL": "mysql://o@old:1/db", "MYSQL_PASSWORD": "pw", "REDIS_URL": "redis://old:2/0",
           "GEARMAN_SERVERS": "old:3"}
    s = resolve_mysql(None, old)
    assert (s.host, s.port, s.database, s.password) == ("old", 1, "db", "pw")
    assert resolve_redis(None, old).url == "redis://old:2/0"
    assert sorted(deprecated_env(old)) == [("GEARMAN_SERVERS", "GEARSYNC_GEARMAN_SERVERS"),
                                           ("MYSQL_PASSWORD", "GEARSYNC_MYSQL_PASSWORD"),
                                           ("MYSQL_URL", "GEARSYNC_MYSQL_URL"), ("REDIS_URL", "GEARSYNC_REDIS_URL")]
    both = {**old, "GEARSYNC_MYSQL_URL": "mysql://n@new:5/db"}
    assert resolve_mysql(None, both).host == "new"
    assert ("MYSQL_URL", "GEARSYNC_MYSQL_URL") not in deprecated_env(both)
    assert deprecated_env({"GEARSYNC_MYSQL_URL": "mysql://n@new:5/db"}) == []
    settings = resolve_logging(None, old)
    assert ("REDIS_URL", "GEARSYNC_REDIS_URL") in settings.deprecated


def test_mysql_sources_layer_field_by_field(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[mysql]\nurl = "mysql://sync@db1:3307/app"\npassword = "filepw"\n'
                                      'ssl_ca = "/ca.pem"\n'))
    s = resolve_mysql(None, {}, cfg)
    assert (s.host, s.port, s.user, s.database, s.password, s.ssl_ca) == ("db1", 3307, "sync", "app", "filepw", "/ca.pem")
    s = resolve_mysql(None, {"GEARSYNC_MYSQL_DATABASE": "other", "GEARSYNC_MYSQL_PASSWORD": "envpw"}, cfg)
    assert (s.host, s.database, s.password) == ("db1", "other", "envpw")
    s = resolve_mysql(SimpleNamespace(mysql_url="mysql://o@o:1/odb"), {"GEARSYNC_MYSQL_DATABASE": "other"}, cfg)
    assert (s.host, s.port, s.user, s.database, s.password) == ("o", 1, "o", "odb", "filepw")
    assert "filepw" not in repr(s) + str(s) + s.url_display
    with pytest.raises(ConfigError, match=r"^--config .*g.toml: \[mysql\].url: .* has scheme 'postgres'"):
        resolve_mysql(None, {}, load_config(write(tmp_path, '[mysql]\nurl = "postgres://h/db"\n')))


def test_the_deploy_example_loads_and_names_every_section() -> None:
    cfg = load_config(REPO / "deploy" / "gearsync.toml")
    assert set(SCHEMA) <= set(cfg.data) and "data" in cfg.tables
    text = (REPO / "deploy" / "gearsync.toml").read_text()
    for section, keys in SCHEMA.items():
        for key in keys:
            assert re.search(rf"^#? ?{key} = ", text, re.M), f"[{section}].{key} missing from deploy/gearsync.toml"


def test_the_docs_list_every_key_and_variable() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    for section, keys in SCHEMA.items():
        assert f"### [{section}]" in text
        for key in keys:
            assert f"| `{key}` |" in text and f"`{env_name(section, key)}`" in text, (section, key)
    for key in TABLE_KEYS:
        assert f"| `{key}` |" in text


def test_the_schema_choices_match_the_commands() -> None:
    from sync.capture.binlog.service import SINKS
    from sync.capture.triggers import FAILURE_POLICIES, MODES
    from sync.cli import LOG_FORMATS, LOG_LEVELS

    assert TABLE_KEYS["mode"].choices == MODES and TABLE_KEYS["on_enqueue_failure"].choices == FAILURE_POLICIES
    assert SCHEMA["binlog"]["sink"].choices == SINKS
    assert SCHEMA["logging"]["level"].choices == LOG_LEVELS and SCHEMA["logging"]["format"].choices == LOG_FORMATS
