"""`python -m sync.capture.udf_install` against real throwaway MariaDB servers: install, re-install, uninstall,
and the one-line errors (bad URL, refused connection, manual steps) with the password never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.testing.servers import MariaDBServer, free_port
from tests.integration.udf_fixtures import LIBRARY, REPO, build_library, new_mariadb, sanitizer_reports

pytestmark = pytest.mark.timeout(120)

SECRET = "s3cr3t-pw"


def run_installer(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "GEARSYNC_"))}
    return subprocess.run([sys.executable, "-m", "sync.capture.udf_install", *args], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def bare_mariadb(tmp_path: Path) -> Iterator[MariaDBServer]:
    """A mariadbd with an empty plugin dir and a password user: nothing installed yet."""
    build_library()
    server = new_mariadb(tmp_path / "mariadb", tmp_path / "plugin", extra_args=["--bind-address=0.0.0.0"])
    server.start()
    server.execute(f"CREATE USER 'gs'@'%' IDENTIFIED BY '{SECRET}'", "GRANT ALL ON *.* TO 'gs'@'%'")
    yield server
    server.stop()
    reports = sanitizer_reports()
    assert not reports, reports


def url(server: MariaDBServer, host: str = "127.0.0.1") -> str:
    return f"mysql://gs:{SECRET}@{host}:{server.port}/"


def assert_one_clean_line(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_install_reinstall_uninstall(bare_mariadb: MariaDBServer) -> None:
    env = {"GEARSYNC_MYSQL_URL": url(bare_mariadb)}
    first = run_installer("install", "--library", str(LIBRARY), env=env)
    assert first.returncode == 0, first.stderr
    assert SECRET not in first.stdout + first.stderr and "gs:***@" in first.stdout
    copied = bare_mariadb.plugin_dir / LIBRARY.name
    assert copied.read_bytes() == LIBRARY.read_bytes()
    assert not [p for p in bare_mariadb.plugin_dir.iterdir() if p.name.startswith(".")]  # no temp file left
    conn = bare_mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT gman_json_object(1 AS a), gman_servers_set('127.0.0.1:4730')")
            assert cur.fetchone() == (b'{"a":1}', b"127.0.0.1:4730")
            cur.execute("SELECT name, type, dl FROM mysql.func ORDER BY name")
            funcs = cur.fetchall()
    finally:
        conn.close()
    assert len(funcs) == 12 and all(dl == "gearsync_udf.so" for _, _, dl in funcs)
    assert ("gman_sum", "aggregate", "gearsync_udf.so") in funcs

    again = run_installer("install", "--library", str(LIBRARY), env=env)  # re-runnable
    assert again.returncode == 0, again.stderr

    # the separate variables work too
    split_env = {"GEARSYNC_MYSQL_HOST": "127.0.0.1", "GEARSYNC_MYSQL_PORT": str(bare_mariadb.port), "GEARSYNC_MYSQL_USER": "gs",
                 "GEARSYNC_MYSQL_PASSWORD": SECRET}
    gone = run_installer("uninstall", "--remove-library", env=split_env)
    assert gone.returncode == 0, gone.stderr
    assert not copied.exists()
    bare_mariadb.execute("SELECT 1")
    conn = bare_mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM mysql.func")
            assert cur.fetchone() == (0,)
    finally:
        conn.close()
    assert run_installer("uninstall", env=split_env).returncode == 0  # re-runnable


@pytest.mark.parametrize(
    "env, shown",
    [
        ({"GEARSYNC_MYSQL_URL": f"mysql://gs:{SECRET}@127.0.0.1:notaport/"}, "GEARSYNC_MYSQL_URL"),
        ({"GEARSYNC_MYSQL_URL": f"postgres://gs:{SECRET}@127.0.0.1:5432/"}, "expected mysql://"),
        ({"GEARSYNC_MYSQL_PORT": "70000"}, "GEARSYNC_MYSQL_PORT"),
    ],
)
def test_bad_configuration_is_one_line_exit_2(env: dict[str, str], shown: str) -> None:
    result = run_installer("install", "--library", str(LIBRARY), env=env)
    assert result.returncode == 2
    assert shown in result.stderr
    assert_one_clean_line(result)


def test_refused_connection_is_one_line_exit_3() -> None:
    port = free_port()
    result = run_installer("uninstall", env={"GEARSYNC_MYSQL_URL": f"mysql://gs:{SECRET}@127.0.0.1:{port}/db"})
    assert result.returncode == 3
    assert f"mysql://gs:***@127.0.0.1:{port}/db" in result.stderr
    assert_one_clean_line(result)


def test_missing_library_is_exit_2(bare_mariadb: MariaDBServer) -> None:
    result = run_installer("install", "--library", "/nonexistent/gearsync_udf.so",
                           env={"GEARSYNC_MYSQL_URL": url(bare_mariadb)})
    assert result.returncode == 2 and "make build-udf" in result.stderr
    assert_one_clean_line(result)


def test_plugin_dir_not_here_prints_the_manual_steps_exit_3(bare_mariadb: MariaDBServer) -> None:
    bare_mariadb.plugin_dir.rmdir()  # as if the server's filesystem were not ours
    result = run_installer("install", "--library", str(LIBRARY), env={"GEARSYNC_MYSQL_URL": url(bare_mariadb)})
    assert result.returncode == 3, result.stderr
    assert f"plugin dir {bare_mariadb.plugin_dir}" in result.stderr and "not writable" in result.stderr
    assert "CREATE OR REPLACE AGGREGATE FUNCTION gman_sum" in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr
