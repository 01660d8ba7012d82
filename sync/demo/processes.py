"""The demo's processes: pid files (so --stop finds a demo whose terminal went away), terminate(),
the state dir reset, the choice of ports, and the Stack of throwaway servers and spawned gearsync
commands that stop() undoes.

Standard library only at module level; the servers' module is imported when a Stack is made.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync.demo.common import DATABASE, EXIT_USAGE, MARKER, REPO, DemoError, rel, say, step
from sync.settings import DEPRECATED_ENV

# Stop order: what feeds others first, the servers last (gearmand before the MariaDB holding its queue).
STOP_ORDER = ("snapshot", "verify", "binlog", "relay", "worker", "gearmand", "redis", "mariadb")


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of pid (field 22 of /proc/<pid>/stat); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def alive(pid: int, start: str | None = None) -> bool:
    now = _proc_start_time(pid)
    return now is not None and (start is None or now == start)


@dataclass
class PidFile:
    name: str
    pid: int
    start: str | None
    path: Path

    @classmethod
    def write(cls, pid_dir: Path, name: str, pid: int) -> PidFile:
        pid_dir.mkdir(parents=True, exist_ok=True)
        pf = cls(name, pid, _proc_start_time(pid), pid_dir / f"{name}.pid")
        pf.path.write_text(json.dumps({"name": name, "pid": pid, "start": pf.start}) + "\n")
        return pf

    @classmethod
    def read_all(cls, pid_dir: Path) -> list[PidFile]:
        out = []
        for path in sorted(pid_dir.glob("*.pid")):
            try:
                data = json.loads(path.read_text())
                out.append(cls(str(data["name"]), int(data["pid"]), data.get("start"), path))
            except (OSError, ValueError, KeyError, TypeError):
                say(f"ignoring unreadable pid file {path}")
        return out

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _order(name: str) -> int:
    base = name.split("-")[0]
    return STOP_ORDER.index(base) if base in STOP_ORDER else -1


def terminate(pid: int, start: str | None, grace_s: float) -> bool:
    """SIGTERM the process group pid leads (or pid alone), SIGKILL after grace_s. True when gone."""
    if not alive(pid, start):
        return True
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return True
    kill: Callable[[int, int], None] = os.killpg if group else os.kill
    for sig, wait_s in ((signal.SIGCONT, 0.0), (signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not alive(pid, start):
                return True
            time.sleep(0.05)
    return not alive(pid, start)


def stop_left_running(state_dir: Path, quiet: bool = False) -> list[str]:
    """Stop everything the pid files of state_dir name (the demo process first). Returns what was stopped."""
    pid_dir = state_dir / "pids"
    entries = PidFile.read_all(pid_dir) if pid_dir.is_dir() else []
    stopped: list[str] = []
    main = [e for e in entries if e.name == "demo"]
    for e in main:
        if alive(e.pid, e.start) and e.pid != os.getpid():
            if not quiet:
                say(f"stopping the demo process {e.pid} (it stops what it started)")
            os.kill(e.pid, signal.SIGTERM)
            deadline = time.monotonic() + 90
            while alive(e.pid, e.start) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(e.pid, e.start):
                os.kill(e.pid, signal.SIGKILL)
            stopped.append("demo")
        e.remove()
    rest = [e for e in PidFile.read_all(pid_dir)] if pid_dir.is_dir() else []
    for e in sorted(rest, key=lambda e: _order(e.name)):
        if alive(e.pid, e.start):
            if not quiet:
                say(f"stopping {e.name} (pid {e.pid})")
            if not terminate(e.pid, e.start, grace_s=10.0):
                raise DemoError(f"{e.name} (pid {e.pid}) did not stop, even on SIGKILL")
            stopped.append(e.name)
        e.remove()
    return stopped


@dataclass
class Child:
    """A gearsync command run in its own process group, its output in a log file."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes]
    pidfile: PidFile

    def running(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Ports:
    mysql: int
    redis: int
    gearman: int


class Stack:
    """Servers and gearsync processes of one demo run; stop() undoes everything start_*() did."""

    def __init__(self, state_dir: Path, ports: Ports, bin_dir: Path) -> None:
        from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

        self.state_dir = state_dir
        self.pid_dir = state_dir / "pids"
        self.log_dir = state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.plugin_dir = state_dir / "plugin"
        self.bin_dir = bin_dir
        self.mariadb = MariaDBServer(state_dir / "mariadb", plugin_dir=self.plugin_dir, port=ports.mysql)
        self.redis = RedisServer(state_dir / "redis", port=ports.redis)
        self.gearmand = GearmanServer(state_dir / "gearmand", queue="mysql", mysql=self.mariadb, port=ports.gearman)
        self.servers: list[tuple[Any, PidFile]] = []
        self.children: list[Child] = []
        self.stopped_pids: list[tuple[str, int]] = []

    # -- addresses ---------------------------------------------------------------------------
    @property
    def mysql_url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.mariadb.port}/{DATABASE}"

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def gearman_servers(self) -> str:
        return self.gearmand.address

    def env(self) -> dict[str, str]:
        # none of the user's own settings (old names or GEARSYNC_*, a config file) reaches the demo
        env = {k: v for k, v in os.environ.items() if k not in DEPRECATED_ENV and not k.startswith("GEARSYNC_")}
        env.update(GEARSYNC_MYSQL_PASSWORD="", PYTHONUNBUFFERED="1", GEARSYNC_JOB_KEY=self.job_key())
        return env

    def job_key(self) -> str:
        """The demo's key of signed jobs (docs/security.md): generated once into <state dir>/job.key
        (mode 0600), the same for every later run; make install-udf copies it beside the UDF."""
        path = self.state_dir / "job.key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        return path.read_text().strip()

    # -- servers -----------------------------------------------------------------------------
    def start_server(self, server: Any, what: str) -> None:
        step(f"starting {what} on 127.0.0.1:{server.port}")
        server.start()
        self.servers.append((server, PidFile.write(self.pid_dir, server.name, server.proc.pid)))

    def start_servers(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        # The UDF library reads this when mysqld loads it, so triggers find the demo's gearmand
        # (also after a restart) without gman_servers_set().
        (self.plugin_dir / "gearsync_udf.conf").write_text(
            f"# written by the gearsync demo\nservers = {self.gearmand.address}\n")
        self.start_server(self.mariadb, "MariaDB (ROW binlog, binlog_row_metadata=FULL)")
        self.start_server(self.redis, "Redis")
        self.start_server(self.gearmand, "gearmand (persistent queue in MariaDB: -q mysql, database gearman)")

    # -- gearsync commands -------------------------------------------------------------------
    def command(self, name: str, *argv: str) -> list[str]:
        return [str(self.bin_dir / name), *argv]

    def spawn(self, name: str, argv: list[str]) -> Child:
        say(f"    $ {_shown(argv)}")
        log = self.log_dir / f"{name}.log"
        fh = open(log, "ab")
        try:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env(), cwd=self.state_dir, start_new_session=True)
        finally:
            fh.close()
        child = Child(name, argv, log, proc, PidFile.write(self.pid_dir, name, proc.pid))
        self.children.append(child)
        return child

    def run(self, name: str, argv: list[str], *, ok: Sequence[int] = (0,), capture: bool = False,
            timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
        """Run a command to its end (its own process group, so Ctrl-C reaches it through us)."""
        say(f"    $ {_shown(argv)}")
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE if capture else fh, stderr=fh,
                                    stdin=subprocess.DEVNULL, env=self.env(), cwd=REPO, start_new_session=True)
            pf = PidFile.write(self.pid_dir, name, proc.pid)
            try:
                out, _ = proc.communicate(timeout=timeout_s)
            except BaseException:
                terminate(proc.pid, pf.start, grace_s=5.0)
                proc.wait()
                pf.remove()
                raise
            pf.remove()
        text = out.decode() if out else ""
        if proc.returncode not in ok:
            raise DemoError(f"{name} failed (exit {proc.returncode}); log {log}:\n{tail(log)}")
        return subprocess.CompletedProcess(argv, proc.returncode, text, "")

    def check_children(self) -> None:
        for c in self.children:
            if not c.running():
                raise DemoError(f"{c.name} exited early (exit {c.proc.returncode}); log {c.log}:\n{tail(c.log)}")

    # -- shutdown ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Clients first (SIGTERM to each group, together), then gearmand, Redis, MariaDB."""
        for c in self.children:
            if c.running():
                try:
                    os.killpg(c.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for c in self.children:
            try:
                c.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                say(f"{c.name} did not stop on SIGTERM within 20 s: SIGKILL")
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                c.proc.wait(timeout=10)
            self.stopped_pids.append((c.name, c.proc.pid))
            c.pidfile.remove()
        self.children.clear()
        for server, pf in sorted(self.servers, key=lambda sp: _order(sp[1].name)):
            pid = server.proc.pid if server.proc is not None else pf.pid
            server.stop()
            self.stopped_pids.append((pf.name, pid))
            pf.remove()
        self.servers.clear()

    def detach(self) -> None:
        """Leave everything running (--keep-running): the pid files stay for --stop."""
        self.children.clear()
        for server, _ in self.servers:
            if server._log_fh is not None:
                server._log_fh.close()
                server._log_fh = None
            server.proc = None
        self.servers.clear()


def _shown(argv: Sequence[str]) -> str:
    """argv as a user would type it: the venv's bin dir left out, templates quoted."""
    out = []
    for a in argv:
        if a.startswith(str(REPO) + "/"):
            a = os.path.relpath(a, REPO)
            a = a[len(".venv/bin/"):] if a.startswith(".venv/bin/") else a
        out.append(f"'{a}'" if any(ch in a for ch in "{} ") else a)
    return " ".join(out)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def choose_ports(args: argparse.Namespace) -> Ports:
    import socket

    from sync.testing.servers import free_port

    chosen: list[int] = []

    def pick(port: int, what: str, option: str) -> int:
        if port:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError as exc:
                    raise DemoError(f"{option} {port}: 127.0.0.1:{port} is in use ({exc.strerror}); "
                                    f"expected a free port for the demo's {what}, or leave it out", EXIT_USAGE) from None
        else:
            port = free_port()
            while port in chosen:
                port = free_port()
        chosen.append(port)
        return port

    return Ports(pick(args.mysql_port, "MariaDB", "--mysql-port"), pick(args.redis_port, "Redis", "--redis-port"),
                 pick(args.gearman_port, "gearmand", "--gearman-port"))


def reset_state_dir(state_dir: Path) -> None:
    """Stop what a previous run left there, then empty it. Only a dir made by the demo is wiped."""
    if state_dir.exists() and any(state_dir.iterdir()):
        if not (state_dir / MARKER).exists():
            raise DemoError(f"--state-dir {state_dir}: not empty and not a demo state dir (no {MARKER}); "
                            "expected an empty or new directory", EXIT_USAGE)
        pid_dir = state_dir / "pids"
        for e in (PidFile.read_all(pid_dir) if pid_dir.is_dir() else []):
            if e.name == "demo" and alive(e.pid, e.start):
                raise DemoError(f"a demo is still running in {state_dir} (pid {e.pid}); stop it with make demo-stop "
                                "(or python -m sync.demo --stop), or use another --state-dir", EXIT_USAGE)
        stopped = stop_left_running(state_dir)
        if stopped:
            say(f"stopped what the last demo left running: {', '.join(stopped)}")
        step(f"resetting {rel(state_dir)} (every run starts from empty servers)")
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER).write_text("made by python -m sync.demo; removed by make clean\n")
