"""The demo's first step, standard library only (the system python3 runs it): the missing Debian
packages installed with apt-get (as root or through sudo), .venv created with make venv, then the
demo re-executed with .venv/bin/python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sync.demo.common import EXIT_USAGE, REPO, VENV, DemoError, step


@dataclass(frozen=True)
class Requirement:
    what: str
    package: str                   # the Debian/Ubuntu package that provides it
    candidates: tuple[str, ...]    # names looked up on PATH, or absolute paths


REQUIREMENTS = (
    Requirement("mariadbd", "mariadb-server", ("mariadbd", "/usr/sbin/mariadbd")),
    Requirement("mariadb-install-db", "mariadb-server", ("mariadb-install-db", "mysql_install_db")),
    Requirement("mariadb (client)", "mariadb-client", ("mariadb", "mysql")),
    Requirement("redis-server", "redis-server", ("redis-server", "/usr/bin/redis-server")),
    Requirement("gearmand", "gearman-job-server", ("gearmand", "/usr/sbin/gearmand")),
    Requirement("C compiler", "gcc", ("cc", "gcc")),
    Requirement("make", "make", ("make",)),
    Requirement("MariaDB server UDF headers", "libmariadbd-dev", ("/usr/include/mariadb/server/mysql.h",)),
)


def _found(candidate: str) -> bool:
    if candidate.startswith("/"):
        return os.path.exists(candidate)
    return shutil.which(candidate) is not None


def missing_packages(need_venv: bool) -> list[str]:
    """Debian packages to install; need_venv: .venv must still be created (python3-venv)."""
    missing = [r.package for r in REQUIREMENTS if not any(_found(c) for c in r.candidates)]
    if need_venv and subprocess.run([sys.executable, "-c", "import ensurepip"], capture_output=True).returncode != 0:
        missing.append("python3-venv")
    return sorted(set(missing))


def install_packages(packages: Sequence[str], interactive: bool) -> None:
    """apt-get install, as root or through sudo; a clear message when neither is possible."""
    wanted = " ".join(packages)
    if shutil.which("apt-get") is None:
        raise DemoError(f"missing: {wanted}. This is not a Debian/Ubuntu system (no apt-get): install the "
                        "equivalents of these packages, then run make demo again.", EXIT_USAGE)
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo"):
        prefix = ["sudo"] if interactive else ["sudo", "-n"]
    else:
        raise DemoError(f"missing packages: {wanted}. Installing them needs root, and sudo is not installed: run "
                        f"as root `apt-get install -y {wanted}`, then make demo again.", EXIT_USAGE)
    step(f"installing {wanted} ({'as root' if not prefix else 'with sudo'})")
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        result = subprocess.run(prefix + env_cmd + cmd)
        if result.returncode != 0:
            how = ("sudo needs a password here (non-interactive run): " if prefix == ["sudo", "-n"] else "")
            raise DemoError(f"{how}`{' '.join(cmd)}` failed (exit {result.returncode}); install {wanted} yourself "
                            "(`sudo apt-get install -y " + wanted + "`), then run make demo again.", EXIT_USAGE)


VENV_PROBE = "import pymysql, redis, rich, structlog, orjson, pymysqlreplication, sync.apply.worker"


def venv_is_ready() -> bool:
    python = VENV / "bin" / "python"
    if not python.exists() or not (VENV / "bin" / "sync-worker").exists():
        return False
    if in_venv():
        try:
            exec(VENV_PROBE, {})
            return True
        except ImportError:
            return False
    return subprocess.run([str(python), "-c", VENV_PROBE], cwd=REPO, capture_output=True).returncode == 0


def in_venv() -> bool:
    try:
        return Path(sys.prefix).resolve() == VENV.resolve()
    except OSError:
        return False


def bootstrap(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Install what is missing, then continue inside the venv (re-exec) if not already there."""
    venv_ready = venv_is_ready()
    missing = missing_packages(need_venv=not venv_ready)
    if missing:
        install_packages(missing, interactive=sys.stdin.isatty() and not args.ci)
        still = missing_packages(need_venv=not venv_ready)
        if still:
            raise DemoError(f"still missing after apt-get: {' '.join(still)}", EXIT_USAGE)
    if not venv_ready:
        step("creating the venv: make venv")
        if subprocess.run(["make", "-s", "venv"], cwd=REPO).returncode != 0 or not venv_is_ready():
            raise DemoError("make venv failed: see the pip output above", EXIT_USAGE)
    if not in_venv():
        python = str(VENV / "bin" / "python")
        sys.stdout.flush()
        os.execv(python, [python, "-m", "sync.demo", *argv])
