"""`pip install .` (a wheel, not editable, as in the README's production steps and the Docker image)
ships the SQL: build the wheel, install it into a fresh venv, and from there install the UDFs and the
capture triggers into a throwaway MariaDB."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from sync.testing.servers import MariaDBServer
from tests.integration.udf_fixtures import LIBRARY, REPO, build_library, new_mariadb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the package sources (what the Docker image copies: no sql/ link, no
    build/ left in the checkout)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("sync", "workers"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    # The build backend comes from the package index pip is configured with, as for any `pip install .`.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)], cwd=tmp_path)
    (wheel,) = out.glob("gearsync-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], cwd=tmp_path)
    # The dependencies (pymysql, redis, …) from the current venv's site-packages. Python does not
    # process .pth files found in a directory added by a .pth file, so the current venv's editable
    # gearsync (__editable__*.pth) stays invisible: `sync` must come from the wheel.
    new_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
                    .stdout.strip())
    (new_site / "deps-from-dev-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


@pytest.fixture
def bare_mariadb(tmp_path: Path):
    build_library()
    server = new_mariadb(tmp_path / "mariadb", tmp_path / "plugin")
    server.start()
    yield server
    server.stop()


def test_wheel_installs_udfs_and_triggers(tmp_path: Path, bare_mariadb: MariaDBServer) -> None:
    wheel = _wheel(tmp_path)
    names = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True, text=True).stdout
    for sql in ("install-udf.sql", "uninstall-udf.sql", "spool.sql", "classic-trigger.sql"):
        assert f"sync/capture/sql/{sql}" in names, names
    venv = _fresh_venv(tmp_path, wheel)
    python, bindir = venv / "bin" / "python", venv / "bin"
    work = tmp_path / "elsewhere"   # not the checkout: `python -m` puts the cwd first on sys.path
    work.mkdir()
    where = _run([str(python), "-c", "import sync.capture.udf_install as m; print(m.__file__); print(m.INSTALL_SQL)"], cwd=work)
    module_file, sql_file = where.stdout.split()
    assert module_file.startswith(str(venv)) and sql_file.startswith(str(venv)), where.stdout

    bare_mariadb.execute("CREATE DATABASE app", "CREATE TABLE app.data (id INT PRIMARY KEY, volume INT)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "GEARSYNC_", "REDIS_", "GEARMAN_"))}
    env["GEARSYNC_MYSQL_URL"] = f"mysql://root@127.0.0.1:{bare_mariadb.port}/app"
    installed = _run([str(python), "-m", "sync.capture.udf_install", "install", "--library", str(LIBRARY)], cwd=work, env=env)
    assert "installed gearsync UDFs" in installed.stdout
    _run([str(bindir / "sync-triggers"), "install", "--table", "data"], cwd=work, env=env)

    conn = bare_mariadb.connect("app")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM mysql.func WHERE name LIKE 'gman%'")
            assert "gman_do_background" in {row[0] for row in cur.fetchall()}
            cur.execute("SELECT ACTION_TIMING, EVENT_MANIPULATION FROM information_schema.TRIGGERS "
                        "WHERE EVENT_OBJECT_SCHEMA = 'app' AND EVENT_OBJECT_TABLE = 'data'")
            assert sorted(cur.fetchall()) == [("AFTER", "DELETE"), ("AFTER", "INSERT"), ("AFTER", "UPDATE")]
            # The triggers run: no job server is set, so the change is kept in the spool.
            cur.execute("INSERT INTO data VALUES (1, 10)")
            cur.execute("SELECT COUNT(*) FROM gearsync_spool")
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()
