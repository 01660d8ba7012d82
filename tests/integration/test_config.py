"""One config file for every command, GEARSYNC_ environment, exit codes and JSON logs — run as a user
runs them: the installed console scripts, against real MariaDB and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from sync.testing.servers import MariaDBServer, RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"

# each command with the arguments that make it do its work (a table, a subcommand) when the
# config file or the environment supply the rest
COMMANDS: dict[str, list[str]] = {
    "sync-worker": [str(BIN / "sync-worker"), "--replay-dead"],
    "sync-triggers": [str(BIN / "sync-triggers"), "check"],
    "sync-relay": [str(BIN / "sync-relay"), "--once"],
    "sync-binlog": [str(BIN / "sync-binlog")],
    "sync-snapshot": [str(BIN / "sync-snapshot")],
    "sync-verify": [str(BIN / "sync-verify")],
    "sync-status": [str(BIN / "sync-status")],
    "udf_install": [sys.executable, "-m", "sync.capture.udf_install", "uninstall"],
}


def clean_env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "REDIS_", "GEARMAN_", "GEARSYNC_"))}
    env.update(kw)
    return env


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env if env is not None else clean_env())


def one_error_line(r: subprocess.CompletedProcess[str], name: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    prog = "python -m sync.capture.udf_install" if name == "udf_install" else name
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def config(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "gearsync.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


ERRORS = {
    "unknown key in [tables.x]": ('[tables.data]\nkeytemplate = "{pk}"\n',
                                  "unknown key 'keytemplate' in [tables.data]; expected one of columns, format"),
    "unknown section": ("[mysqld]\nport = 1\n", "unknown section [mysqld]; expected one of binlog"),
    "wrong type": ('[redis]\ncluster = "no"\n', "[redis].cluster: 'no'; expected true or false"),
    "data = 5": ("[tables]\ndata = 5\n", "data = 5 under [tables]; expected a section [tables.data]"),
    "password readable by others": ('[mysql]\npassword = "hunter2"\n[redis]\npassword = "hunter2"\n',
                                    "holds a password and is readable by others (mode 0644); expected it private: chmod 600"),
}
CASES = [(cmd, kind) for cmd in COMMANDS for kind in ("unknown key in [tables.x]", "password readable by others")]
CASES += [(cmd, kind) for cmd in ("sync-worker", "sync-snapshot", "sync-triggers", "udf_install")
          for kind in ("unknown section", "wrong type", "data = 5")]


@pytest.mark.parametrize("command, kind", CASES)
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, command: str, kind: str) -> None:
    text, message = ERRORS[kind]
    path = config(tmp_path, text, 0o644 if "password" in kind else 0o600)
    r = run([*COMMANDS[command], "--config", str(path)])
    assert r.returncode == 2, r.stderr
    line = one_error_line(r, command)
    assert f"--config {path}: " in line and message in line
    assert "hunter2" not in r.stdout + r.stderr


def test_gearsync_config_names_the_file_when_no_option_does(tmp_path: Path) -> None:
    path = config(tmp_path, "[worker]\nbatchsize = 1\n")
    r = run(COMMANDS["sync-worker"], clean_env(GEARSYNC_CONFIG=str(path)))
    assert r.returncode == 2 and f"--config {path}: unknown key 'batchsize' in [worker]" in one_error_line(r, "sync-worker")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreachable_server_is_exit_3(command: str) -> None:
    port = free_port()
    env = clean_env(GEARSYNC_MYSQL_URL=f"mysql://root@127.0.0.1:{port}/app",
                    GEARSYNC_REDIS_URL=f"redis://127.0.0.1:{port}/0", GEARSYNC_GEARMAN_SERVERS=f"127.0.0.1:{port}")
    args = [] if command in ("sync-status", "udf_install", "sync-relay") else ["--table", "data"]
    if command in ("sync-worker", "sync-binlog", "sync-relay"):
        args += ["--startup-wait", "0"]  # no wait for the servers to come up (sync.startup)
    r = run([*COMMANDS[command], *args], env)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


@pytest.fixture
def two_tables(db) -> str:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("INSERT INTO data VALUES (1, 10), (2, 20), (3, 30)")
        cur.execute("INSERT INTO users VALUES (1, 'ann'), (2, 'bob')")
    return db.db_name


def test_precedence_option_over_environment_over_file(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                                      redis_client, two_tables: str) -> None:
    redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    path = config(tmp_path, f'[mysql]\nurl = "mysql://root@127.0.0.1:{mariadb.port}/{two_tables}"\n'
                            f'[redis]\nurl = "{redis_url}"\n[tables.data]\nformat = "hash"\n')
    # the file alone: its servers, its table (no --table) and that table's format
    r = run([*COMMANDS["sync-snapshot"], "--config", str(path)])
    assert r.returncode == 0, r.stderr
    assert redis_client.type("data:1") == b"hash" and redis_client.hgetall("data:2") == {b"id": b"2", b"volume": b"20"}
    assert not redis_client.exists("users:1")
    # the environment over the file: a Redis that is not there
    down = clean_env(GEARSYNC_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    r = run([*COMMANDS["sync-snapshot"], "--config", str(path), "--restart"], down)
    assert r.returncode == 3, r.stderr
    # the option over both, and --format over [tables.data]
    redis_client.flushall()
    r = run([*COMMANDS["sync-snapshot"], "--config", str(path), "--redis-url", redis_url, "--format", "json"], down)
    assert r.returncode == 0, r.stderr
    assert orjson.loads(redis_client.get("data:3")) == {"id": 3, "volume": 30}


def test_old_variable_names_work_with_one_deprecation_line(mariadb: MariaDBServer, redis_server: RedisServer,
                                                          redis_client, two_tables: str) -> None:
    old = clean_env(MYSQL_URL=f"mysql://root@127.0.0.1:{mariadb.port}/{two_tables}", MYSQL_PASSWORD="",
                    REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0")
    r = run([*COMMANDS["sync-snapshot"], "--table", "data,users", "--log-format", "json"], old)
    assert r.returncode == 0, r.stderr
    assert redis_client.exists("data:1", "users:2") == 2
    events = [orjson.loads(line) for line in r.stderr.splitlines()]
    deprecations = [e for e in events if e["event"] == "deprecated_environment_variables"]
    assert len(deprecations) == 1, r.stderr
    assert set(deprecations[0]["use"].split(",")) == {"GEARSYNC_MYSQL_URL", "GEARSYNC_REDIS_URL"}
    new = clean_env(GEARSYNC_MYSQL_URL=old["MYSQL_URL"], GEARSYNC_REDIS_URL=old["REDIS_URL"])
    r = run([*COMMANDS["sync-verify"], "--table", "data,users", "--log-format", "json", "--log-level", "info"], new)
    assert r.returncode == 0, r.stderr
    assert "deprecated" not in r.stderr


def test_json_logs_mean_nothing_but_json_on_stderr(mariadb: MariaDBServer, redis_server: RedisServer, redis_client,
                                                   two_tables: str) -> None:
    env = clean_env(GEARSYNC_MYSQL_URL=f"mysql://root@127.0.0.1:{mariadb.port}/{two_tables}",
                    GEARSYNC_REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0")
    r = run([*COMMANDS["sync-snapshot"], "--table", "data,users", "--log-format", "json", "--progress", "bar"], env)
    assert r.returncode == 0, r.stderr
    events = [orjson.loads(line) for line in r.stderr.splitlines()]  # fails on any line that is not JSON
    done = {e["table"]: e["rows"] for e in events if e["event"] == "snapshot_table_done"}
    assert done == {"data": 3, "users": 2}
    summary = [e for e in events if e["event"] == "snapshot_summary"]
    assert len(summary) == 1 and summary[0]["total_rows"] == 5
    # the same run under console logs: the person-readable lines
    redis_client.flushall()
    r = run([*COMMANDS["sync-snapshot"], "--table", "data", "--table", "users", "--log-format", "console",
             "--restart"], env)
    assert r.returncode == 0 and "sync-snapshot: summary of" in r.stderr, r.stderr


def test_tables_options_from_the_file_reach_the_triggers(tmp_path: Path, mariadb: MariaDBServer, two_tables: str) -> None:
    path = config(tmp_path, f'[mysql]\nurl = "mysql://root@127.0.0.1:{mariadb.port}/{two_tables}"\n'
                            '[tables.users]\ncolumns = ["id"]\nmode = "outbox"\nfunction = "jobs.users"\n')
    r = run([*COMMANDS["sync-triggers"][:1], "show", "--config", str(path)])
    assert r.returncode == 0, r.stderr
    assert "jobs.users" in r.stdout and "gearsync_spool" in r.stdout and "`name`" not in r.stdout
