"""Settings: precedence, validation messages that name the bad value, secrets kept out of text."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.config import default_function, parse_servers, worker_settings
from sync.errors import ConfigError
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
    env = {"GEARMAN_SERVERS": "g1:1", "REDIS_URL": "redis://r:7/1", "REDIS_PASSWORD": "s3cret"}
    s = worker_settings(tables=["data"], env=env)
    assert s.servers == [("g1", 1)] and s.redis.url == "redis://r:7/1" and s.redis.password == "s3cret"
    s = worker_settings(tables=["data"], env=env, servers="g2:2", redis_url="redis://r2:8/0")
    assert s.servers == [("g2", 2)] and s.redis.url == "redis://r2:8/0"


def test_password_never_in_repr() -> None:
    s = worker_settings(tables=["data"], env={"REDIS_URL": "redis://u:hunter2@h:1/0", "REDIS_PASSWORD": "hunter3"})
    text = repr(s) + str(s.redis) + s.redis.display_url
    assert "hunter2" not in text and "hunter3" not in text
    assert mask_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"


def test_password_on_command_line_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        worker_settings(tables=["data"], env={}, redis_url="redis://:hunter2@h:1/0")
    assert "hunter2" not in str(err.value) and "REDIS_PASSWORD" in str(err.value)


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
