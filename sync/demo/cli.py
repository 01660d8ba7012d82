"""`make demo`: the whole gearsync pipeline on this machine, under a live display, then verified.

    python -m sync.demo [--rows 10000] [--workers 2] [--rate 300] [--seconds 20] [--state-dir .state/demo]
    python -m sync.demo --classic        # the classic recipe: one UPDATE trigger, SET <id> <payload>
    python -m sync.demo --ci             # no live display, a small load; exit 0 only when all is well
    python -m sync.demo --stop           # stop a demo left running (make demo-stop)

What a run does, in order (each step prints the command a user would type):

1. Bootstrap, with the standard library only (so the system python3 can run it): the missing Debian
   packages are installed with apt-get (as root, or through sudo; otherwise it says what to install),
   `make venv` runs when .venv is missing, and the demo re-executes itself with .venv/bin/python.
2. The state dir (default .state/demo) is reset: a demo left running there is stopped, the old data
   removed. Every run starts from empty servers.
3. Throwaway MariaDB (ROW binlog, full metadata), Redis and gearmand (its queue in that MariaDB, `-q
   mysql`) on free loopback ports (or --mysql-port/--redis-port/--gearman-port), all under the state
   dir; the UDF library is built and installed with the state dir as plugin dir, its
   gearsync_udf.conf pointing at the demo's gearmand.
4. Database `demo`, table `data` with --rows rows, `sync-triggers install`, --workers `sync-worker`
   processes, `sync-relay`, `sync-snapshot` (the rows that existed before the triggers), and
   `sync-binlog --sink redis` writing the same table under another key template (binlog:{table}:{pk}):
   binlog versions come from the commit position and trigger versions from UUID_SHORT(), so the two
   sources must never write the same keys.
5. A write load (--rate changes/s for --seconds: 25 % INSERT, 60 % UPDATE, 15 % DELETE, each its own
   transaction) while a live display shows changes written and synced per path, lag, gearmand queue
   depth and spool size. Lag is measured with a heartbeat row (id 0) that the load updates every tick
   with the number of changes committed so far: when Redis shows heartbeat n, the changes up to n
   have reached it.
6. Drain, then `sync-verify` for both key templates, a summary table, and everything stopped:
   clients first (SIGTERM to each process group, then SIGKILL after a grace period), then gearmand,
   Redis, MariaDB. Ctrl-C (or SIGTERM, or `make demo-stop`) at any point runs the same shutdown.

Pid files of everything started are kept in <state dir>/pids while it runs, so `--stop` finds a demo
whose terminal went away. The run's results go to <state dir>/summary.json.

Exit codes: 0 Redis equal to MySQL for both paths and every process stopped, 1 differences or a
process left running, 2 bad option or missing prerequisites, 3 a server or step failed, 130
interrupted.
"""

from __future__ import annotations

# Only the standard library at module level: the bootstrap runs under the system python3, before
# the venv (with pymysql, redis, rich, ...) exists.
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
DEFAULT_STATE_DIR = REPO / ".state" / "demo"
MARKER = ".gearsync-demo"          # a state dir holding this file may be wiped by the demo
DATABASE = "demo"
TABLE = "data"
TRIGGER_TEMPLATE = "{table}:{pk}"
BINLOG_TEMPLATE = "binlog:{table}:{pk}"
HEARTBEAT_ID = 0
CLASSIC_FUNCTION = "syncToRedis"
T0_ENV = "GEARSYNC_DEMO_T0"        # wall-clock start, carried over the re-exec into the venv

EXIT_OK, EXIT_DIFF, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# Stop order: what feeds others first, the servers last (gearmand before the MariaDB holding its queue).
STOP_ORDER = ("snapshot", "verify", "binlog", "relay", "worker", "gearmand", "redis", "mariadb")

# changes per kind of the write load (the heartbeat update comes on top)
LOAD_MIX = (("insert", 0.25), ("update", 0.60), ("delete", 0.15))


class DemoError(Exception):
    """A step failed; the message says which and where its log is."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def say(text: str) -> None:
    print(text, flush=True)


_T0 = time.monotonic()   # moved back to the run's wall-clock start by main() (see T0_ENV)


def step(text: str) -> None:
    say(f"==> [{time.monotonic() - _T0:5.1f} s] {text}")


# ------------------------------------------------------------------------------------------------
# 1. bootstrap: system packages and the venv (standard library only)


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


def _venv_ready() -> bool:
    python = VENV / "bin" / "python"
    if not python.exists() or not (VENV / "bin" / "sync-worker").exists():
        return False
    if _in_venv():
        try:
            exec(VENV_PROBE, {})
            return True
        except ImportError:
            return False
    return subprocess.run([str(python), "-c", VENV_PROBE], cwd=REPO, capture_output=True).returncode == 0


def _in_venv() -> bool:
    try:
        return Path(sys.prefix).resolve() == VENV.resolve()
    except OSError:
        return False


def bootstrap(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Install what is missing, then continue inside the venv (re-exec) if not already there."""
    venv_ready = _venv_ready()
    missing = missing_packages(need_venv=not venv_ready)
    if missing:
        install_packages(missing, interactive=sys.stdin.isatty() and not args.ci)
        still = missing_packages(need_venv=not venv_ready)
        if still:
            raise DemoError(f"still missing after apt-get: {' '.join(still)}", EXIT_USAGE)
    if not venv_ready:
        step("creating the venv: make venv")
        if subprocess.run(["make", "-s", "venv"], cwd=REPO).returncode != 0 or not _venv_ready():
            raise DemoError("make venv failed: see the pip output above", EXIT_USAGE)
    if not _in_venv():
        python = str(VENV / "bin" / "python")
        sys.stdout.flush()
        os.execv(python, [python, "-m", "sync.demo", *argv])


# ------------------------------------------------------------------------------------------------
# processes and pid files


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
    def write(cls, pid_dir: Path, name: str, pid: int) -> "PidFile":
        pid_dir.mkdir(parents=True, exist_ok=True)
        pf = cls(name, pid, _proc_start_time(pid), pid_dir / f"{name}.pid")
        pf.path.write_text(json.dumps({"name": name, "pid": pid, "start": pf.start}) + "\n")
        return pf

    @classmethod
    def read_all(cls, pid_dir: Path) -> list["PidFile"]:
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


# ------------------------------------------------------------------------------------------------
# the stack


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
        env = {k: v for k, v in os.environ.items()
               if k not in ("MYSQL_URL", "MYSQL_HOST", "MYSQL_PORT", "MYSQL_USER", "MYSQL_DATABASE", "MYSQL_SOCKET",
                            "REDIS_URL", "REDIS_PASSWORD", "GEARMAN_SERVERS")}
        env.update(MYSQL_PASSWORD="", PYTHONUNBUFFERED="1")
        return env

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
            raise DemoError(f"{name} failed (exit {proc.returncode}); log {log}:\n{_tail(log)}")
        return subprocess.CompletedProcess(argv, proc.returncode, text, "")

    def check_children(self) -> None:
        for c in self.children:
            if not c.running():
                raise DemoError(f"{c.name} exited early (exit {c.proc.returncode}); log {c.log}:\n{_tail(c.log)}")

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


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------------------------------------
# the table and the write load


CREATE_TABLE = f"""CREATE TABLE {TABLE} (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  volume INT NOT NULL,
  label VARCHAR(64) NOT NULL,
  updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB"""


def fill_statements(rows: int) -> list[str]:
    """The heartbeat row and rows 1..rows (MariaDB's SEQUENCE engine: seq_1_to_<n>)."""
    return [f"INSERT INTO {TABLE} VALUES ({HEARTBEAT_ID}, 0, 'heartbeat', NOW(6))",
            *([f"INSERT INTO {TABLE} SELECT seq, seq % 1000, CONCAT('row-', seq), NOW(6) FROM seq_1_to_{rows}"]
              if rows > 0 else [])]


def create_table(stack: Stack, rows: int) -> None:
    step(f"creating {DATABASE}.{TABLE} with {rows:,} rows (id {HEARTBEAT_ID} is the heartbeat row)")
    stack.mariadb.execute(f"CREATE DATABASE {DATABASE}", f"USE {DATABASE}", CREATE_TABLE, *fill_statements(rows))


class Load(threading.Thread):
    """Paced single-row writes, each its own transaction, plus a heartbeat update every tick."""

    tick_s = 0.05

    def __init__(self, connect: Callable[[], Any], *, rate: float, seconds: float, live_ids: list[int],
                 classic: bool, seed: int | None) -> None:
        super().__init__(name="demo-load", daemon=True)
        self.connect = connect
        self.rate = rate
        self.seconds = seconds
        self.classic = classic
        self.random = random.Random(seed)
        self.live: list[int] = [pk for pk in live_ids if pk != HEARTBEAT_ID]
        self.index = {pk: i for i, pk in enumerate(self.live)}
        self.next_id = max(self.live, default=HEARTBEAT_ID) + 1
        self.counts = {"insert": 0, "update": 0, "delete": 0}
        self.written = 0
        # (n, t): heartbeat n (changes committed before it) committed at monotonic time t
        self.beats: list[tuple[int, float]] = []
        self.touched: set[int] = set()     # classic mode: rows whose UPDATE reached the trigger
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def _pick(self) -> str:
        if self.classic:
            return "update"
        r = self.random.random()
        for kind, weight in LOAD_MIX:
            if r < weight:
                return kind if (kind == "insert" or self.live) else "insert"
            r -= weight
        return "update" if self.live else "insert"

    def _one(self, cur: Any) -> None:
        kind = self._pick()
        if kind == "insert":
            pk = self.next_id
            self.next_id += 1
            cur.execute(f"INSERT INTO {TABLE} VALUES (%s, %s, %s, NOW(6))",
                        (pk, self.random.randrange(1000), f"new-{pk}"))
            self.index[pk] = len(self.live)
            self.live.append(pk)
        else:
            pk = self.live[self.random.randrange(len(self.live))]
            if kind == "update":
                cur.execute(f"UPDATE {TABLE} SET volume = volume + 1, label = %s, updated_at = NOW(6) WHERE id = %s",
                            (f"upd-{self.written}", pk))
                self.touched.add(pk)
            else:
                cur.execute(f"DELETE FROM {TABLE} WHERE id = %s", (pk,))
                i = self.index.pop(pk)
                last = self.live.pop()
                if last != pk:
                    self.live[i] = last
                    self.index[last] = i
        self.counts[kind] += 1
        self.written += 1

    def _beat(self, cur: Any) -> None:
        # Heartbeat k sets volume = k (the classic trigger sends only id and volume); beats[k - 1]
        # remembers how many changes were committed before it, and when it committed.
        k = len(self.beats) + 1
        cur.execute(f"UPDATE {TABLE} SET volume = %s, updated_at = NOW(6) WHERE id = {HEARTBEAT_ID}", (k,))
        self.beats.append((self.written, time.monotonic()))

    def run(self) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                self.started_at = start = time.monotonic()
                end = start + self.seconds
                while not self.stop_event.is_set():
                    now = time.monotonic()
                    due = int(self.rate * (min(now, end) - start)) - self.written
                    for _ in range(max(0, min(due, int(self.rate) + 1))):
                        self._one(cur)
                    self._beat(cur)
                    if now >= end:
                        break
                    self.stop_event.wait(self.tick_s)
        except BaseException as exc:  # reported by the main thread, which stops the demo
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            conn.close()

    @property
    def rows(self) -> int:
        return len(self.live) + 1  # + the heartbeat row


# ------------------------------------------------------------------------------------------------
# the monitor: sync-status's collect() plus the heartbeat in Redis


@dataclass
class PathView:
    key: str                        # the heartbeat's Redis key on this path
    beat: int | None = None         # heartbeat number Redis shows (None: key absent)
    synced: int | None = None       # changes committed before that heartbeat
    lag_s: float | None = None      # how long the oldest change Redis lacks has waited (0: none)
    max_lag_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)   # commit -> first seen in Redis, per beat seen
    first_seen_wall: float | None = None   # time.time() when Redis first showed a load change

    def latency(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class View:
    paths: dict[str, PathView]
    state: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    updated: float = 0.0


class Monitor(threading.Thread):
    """Reads the heartbeat keys every `beat_poll_s` and sync-status's collect() every `status_poll_s`
    (its own asyncio loop) into `view`."""

    def __init__(self, stack: Stack, load: Load, paths: dict[str, str], *, function: str,
                 beat_poll_s: float = 0.005, status_poll_s: float = 0.5) -> None:
        super().__init__(name="demo-monitor", daemon=True)
        self.stack = stack
        self.load = load
        self.function = function
        self.beat_poll_s = beat_poll_s
        self.status_poll_s = status_poll_s
        self.view = View({name: PathView(key) for name, key in paths.items()})
        self.stop_event = threading.Event()

    def run(self) -> None:
        import asyncio

        asyncio.run(self._main())

    async def _main(self) -> None:
        import asyncio

        import redis.asyncio as aioredis

        client = aioredis.Redis(host=self.stack.redis.host, port=self.stack.redis.port, socket_timeout=3)
        try:
            await asyncio.gather(self._beats(client), self._status(client))
        finally:
            await client.aclose()

    async def _beats(self, client: Any) -> None:
        import asyncio

        names = list(self.view.paths)
        keys = [self.view.paths[n].key for n in names]
        while not self.stop_event.is_set():
            try:
                raw = await client.mget(keys)
            except Exception as exc:  # shown on the display; the main thread decides
                self.view.error = f"redis: {type(exc).__name__}: {exc}"
                await asyncio.sleep(0.5)
                continue
            now = time.monotonic()
            beats = self.load.beats
            for name, value in zip(names, raw):
                pv = self.view.paths[name]
                k = _heartbeat(value)
                if k is not None and k != pv.beat and 0 < k <= len(beats):
                    pv.latencies_s.append(now - beats[k - 1][1])
                    if pv.first_seen_wall is None:
                        pv.first_seen_wall = time.time()
                pv.beat = k
                pv.synced = None if k is None else (beats[k - 1][0] if 0 < k <= len(beats) else 0)
                if k is not None and self.load.started_at is not None:
                    # beats[k] is the first heartbeat Redis does not show yet
                    pv.lag_s = max(0.0, now - beats[k][1]) if k < len(beats) else 0.0
                    pv.max_lag_s = max(pv.max_lag_s, pv.lag_s)
            await asyncio.sleep(self.beat_poll_s)

    async def _status(self, client: Any) -> None:
        import asyncio

        from sync.mysql import from_url
        from sync.tools.status import collect

        mysql = from_url(self.stack.mysql_url)
        while not self.stop_event.is_set():
            try:
                self.view.state = await collect(servers=[(self.stack.gearmand.host, self.stack.gearmand.port)],
                                                redis=client, mysql=mysql, tables=[TABLE],
                                                functions={TABLE: self.function})
                self.view.error = None
            except Exception as exc:  # shown on the display; the main thread decides
                self.view.error = f"status: {type(exc).__name__}: {exc}"
            self.view.updated = time.monotonic()
            await asyncio.sleep(self.status_poll_s)


def _heartbeat(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(json.loads(raw)["volume"])
    except (ValueError, KeyError, TypeError):
        return None


def _fmt_lag(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _table_row_state(view: View) -> dict[str, Any]:
    return (view.state.get("tables") or {}).get(TABLE) or {}


def render_live(view: View, load: Load, args: argparse.Namespace, path_titles: dict[str, str]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.monotonic()
    elapsed = (min(now, load.finished_at or now) - load.started_at) if load.started_at else 0.0
    st = _table_row_state(view)
    gm = (view.state.get("gearman") or [{}])[0]
    spool = ((view.state.get("mysql") or {}).get("spool") or {}).get(DATABASE)
    head = Text.assemble(
        ("gearsync demo", "bold"), f"  load {elapsed:4.1f}/{args.seconds:g} s at {args.rate:g} changes/s   ",
        (f"{load.written:,} written", "bold"),
        f"  (insert {load.counts['insert']:,}, update {load.counts['update']:,}, delete {load.counts['delete']:,})"
        f"   rows in MySQL {load.rows:,}",
    )
    t = Table(show_header=True, header_style="bold", expand=False)
    t.add_column("")
    for name in view.paths:
        t.add_column(path_titles[name], justify="right")
    names = list(view.paths)
    paths = [view.paths[n] for n in names]

    def row(label: str, values: Sequence[str]) -> None:
        t.add_row(label, *values)

    def via_gearmand(value: Any) -> list[str]:
        """A gearmand-side figure: shown for the trigger/classic path, '–' for the binlog."""
        text = ("[red]gearmand down[/red]" if not gm.get("up", True) else "–" if value is None else f"{value:,}")
        return [text if n != "binlog" else "–" for n in names]

    row("changes synced", [("–" if p.synced is None else f"{p.synced:,}") for p in paths])
    row("behind", [("–" if p.synced is None else f"{max(0, load.written - p.synced):,}") for p in paths])
    row("lag now / max", [f"{_fmt_lag(p.lag_s)} / {_fmt_lag(p.max_lag_s)}" for p in paths])
    row("commit → Redis p50 / p99", [f"{_fmt_lag(p.latency(0.5))} / {_fmt_lag(p.latency(0.99))}" for p in paths])
    row("gearmand queue", via_gearmand(st.get("queued")))
    row("workers", via_gearmand(st.get("workers")))
    if not args.classic:
        row("spool rows", [("–" if spool is None else f"{spool:,}") if n != "binlog" else "–" for n in names])
        row("dead letters", [("–" if st.get("dead") is None else f"{st['dead']:,}") if n != "binlog" else "–"
                             for n in names])
    applied = st.get("applied_total")
    foot = Text(f"Redis applies (all sources, gearsync:stats:{TABLE}): {applied if applied is not None else '–'}"
                f"    Ctrl-C stops everything", style="dim")
    parts: list[Any] = [head, t, foot]
    if view.error:
        parts.append(Text(f"monitor: {view.error}", style="red"))
    return Group(*parts)


def plain_line(view: View, load: Load) -> str:
    st = _table_row_state(view)
    parts = [f"written={load.written}"]
    for name, p in view.paths.items():
        parts.append(f"{name}: synced={p.synced} lag={_fmt_lag(p.lag_s)} p50={_fmt_lag(p.latency(0.5))}")
    parts.append(f"queue={st.get('queued')}")
    if view.error:
        parts.append(f"monitor-error={view.error}")
    return "  ".join(parts)


# ------------------------------------------------------------------------------------------------
# the run


def run_load_only(args: argparse.Namespace) -> int:
    """--load-only: the write load alone against an existing demo table (the compose stack's load job)."""
    from sync.errors import ConfigError, SyncError
    from sync.mysql import mysql_settings

    try:
        settings = mysql_settings(args.mysql_url)
        database = settings.database or DATABASE
        conn = settings.connect(database=database)
    except ConfigError as exc:
        raise DemoError(str(exc), EXIT_USAGE) from None
    except SyncError as exc:
        raise DemoError(str(exc), EXIT_FAILED) from None
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {TABLE}")
            if cur.fetchone()[0] == 0:
                say(f"{database}.{TABLE} is empty: inserting the heartbeat row and {args.rows:,} rows")
                for stmt in fill_statements(args.rows):
                    cur.execute(stmt)
            cur.execute(f"SELECT id FROM {TABLE}")
            ids = [int(r[0]) for r in cur.fetchall()]
    finally:
        conn.close()
    load = Load(lambda: settings.connect(database=database), rate=args.rate, seconds=args.seconds, live_ids=ids,
                classic=args.classic, seed=args.seed)
    say(f"write load on {settings.display}: {args.rate:g} changes/s for {args.seconds:g} s")
    load.start()
    while load.is_alive():
        load.join(timeout=1.0)
        say(f"written={load.written} insert={load.counts['insert']} update={load.counts['update']} "
            f"delete={load.counts['delete']} rows={load.rows}")
    if load.error is not None:
        say(f"demo: error: the write load failed: {load.error!r}")
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sync.demo",
        description="""\
Run the whole gearsync pipeline on throwaway servers, watch it, verify it, stop it (make demo).

Installs what is missing (apt-get as root or with sudo; make venv), starts MariaDB, Redis and
gearmand (queue in MariaDB) on free loopback ports under --state-dir, installs the UDF library,
creates demo.data with --rows rows and the capture triggers, starts sync-worker, sync-relay,
sync-snapshot and sync-binlog (into binlog:{table}:{pk}, apart from the triggers' {table}:{pk}),
runs a write load under a live display, then sync-verify for both key templates, a summary, and
stops everything. Ctrl-C stops everything at any point.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
The state dir is reset on every run: a demo left running there is stopped first, then its data
removed. make demo DEMO_ARGS='...' passes options; make demo-stop is --stop.

exit codes: 0 Redis equal to MySQL and every process stopped, 1 differences or a process left
running, 2 bad option or missing prerequisites, 3 a server or step failed, 130 interrupted.""",
    )
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help="servers' data, logs and pid files (default .state/demo; reset on every run)")
    p.add_argument("--rows", type=int, metavar="N", help="rows in the table before the load (default 10000; --ci 1000)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="sync-worker processes (default 2; --classic 1: its unversioned SETs from two workers can "
                        "land out of order)")
    p.add_argument("--rate", type=float, metavar="N", help="changes per second of the write load (default 300; --ci 100)")
    p.add_argument("--seconds", type=float, metavar="S", help="how long the load runs (default 20; --ci 5)")
    p.add_argument("--mysql-port", type=int, default=0, metavar="PORT", help="MariaDB port (default: a free one)")
    p.add_argument("--redis-port", type=int, default=0, metavar="PORT", help="Redis port (default: a free one)")
    p.add_argument("--gearman-port", type=int, default=0, metavar="PORT", help="gearmand port (default: a free one)")
    p.add_argument("--classic", action="store_true",
                   help="the classic recipe instead: one AFTER UPDATE trigger datatoredis, sync-worker --classic, "
                        "SET <id> <payload> in Redis (make demo-classic)")
    p.add_argument("--no-binlog", action="store_true", help="leave out the sync-binlog path")
    p.add_argument("--ci", action="store_true",
                   help="no live display, a small load; exit 0 only if verify is clean and every process stopped")
    p.add_argument("--keep-running", action="store_true",
                   help="after the summary leave servers and workers running (stop them with make demo-stop)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the load's random choices")
    p.add_argument("--no-install", action="store_true",
                   help="do not install packages or create the venv; fail if something is missing")
    p.add_argument("--stop", action="store_true", help="stop a demo left running in --state-dir, then exit")
    p.add_argument("--load-only", action="store_true",
                   help="only run the write load against an existing demo table (--mysql-url / MYSQL_URL, "
                        "MYSQL_PASSWORD; an empty table gets --rows rows first): the docker compose load job")
    p.add_argument("--mysql-url", metavar="URL", help="--load-only: mysql://user@host:port/db (env MYSQL_URL)")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    small = args.ci
    args.workers = args.workers if args.workers is not None else (1 if args.classic else 2)
    args.rows = args.rows if args.rows is not None else (1000 if small else 10000)
    args.rate = args.rate if args.rate is not None else (100.0 if small else 300.0)
    args.seconds = args.seconds if args.seconds is not None else (5.0 if small else 20.0)
    for name, value, lo, hi in (("--rows", args.rows, 0, 10_000_000), ("--workers", args.workers, 1, 32),
                                ("--rate", args.rate, 1, 20_000), ("--seconds", args.seconds, 0, 86_400)):
        if not lo <= value <= hi:
            p.error(f"{name}: {value:g}; expected {lo} to {hi}")
    for name in ("mysql_port", "redis_port", "gearman_port"):
        port = getattr(args, name)
        if port and not 1024 <= port <= 65535:
            p.error(f"--{name.replace('_', '-')}: {port}; expected 1024 to 65535 (or 0 for a free port)")
    if args.mysql_url and not args.load_only:
        p.error("--mysql-url: only with --load-only (the demo starts its own MariaDB)")
    args.state_dir = args.state_dir.resolve()
    return args


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
        step(f"resetting {_rel(state_dir)} (every run starts from empty servers)")
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER).write_text("made by python -m sync.demo; removed by make clean\n")


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def build_udf(stack: Stack) -> None:
    step("building and installing the UDF library (make build-udf, make install-udf)")
    say("    $ make build-udf")
    result = subprocess.run(["make", "-s", "-C", str(REPO / "udf")], capture_output=True, text=True)
    if result.returncode != 0:
        raise DemoError(f"make build-udf failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    env_url = f"mysql://root@127.0.0.1:{stack.mariadb.port}/"
    say(f"    $ MYSQL_URL={env_url} make install-udf")
    argv = [sys.executable, "-m", "sync.capture.udf_install", "install", "--library", str(REPO / "udf" / "build" / "gearsync_udf.so")]
    log = stack.log_dir / "udf-install.log"
    with open(log, "ab") as fh:
        result2 = subprocess.run(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                 env={**stack.env(), "MYSQL_URL": env_url})
    if result2.returncode != 0:
        raise DemoError(f"installing the UDF library failed (exit {result2.returncode}); log {log}:\n{_tail(log)}")


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, stack: Stack) -> float:
    start = time.monotonic()
    while not check():
        stack.check_children()
        if time.monotonic() - start > timeout_s:
            raise DemoError(f"timed out after {timeout_s:g} s waiting for {what}; logs in {stack.log_dir}")
        time.sleep(0.1)
    return time.monotonic() - start


def start_pipeline(stack: Stack, args: argparse.Namespace) -> dict[str, str]:
    """Triggers, workers, relay, snapshot and binlog (or the classic pieces). Returns path name -> heartbeat key."""
    from sync.keys import row_key

    c = stack.command
    g, r, m = stack.gearman_servers, stack.redis_url, stack.mysql_url
    common_log = ["--log-format", "json", "--stats-interval", "5"]
    if args.classic:
        step("the classic recipe: sql/classic-trigger.sql (AFTER UPDATE trigger datatoredis)")
        client = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
        argv = [client, "--protocol=TCP", "-h127.0.0.1", f"-P{stack.mariadb.port}", "-uroot", DATABASE]
        say(f"    $ {os.path.basename(client)} {DATABASE} < sql/classic-trigger.sql")
        with open(REPO / "sql" / "classic-trigger.sql", "rb") as sql:
            result = subprocess.run(argv, stdin=sql, capture_output=True, env=stack.env())
        if result.returncode != 0:
            raise DemoError(f"applying sql/classic-trigger.sql failed: {result.stderr.decode(errors='replace')}")
        step(f"starting {args.workers} sync-worker --classic")
        for i in range(args.workers):
            stack.spawn(f"worker-{i + 1}", c("sync-worker", "--classic", "--servers", g, "--redis-url", r, *common_log))
        return {"classic": row_key("{pk}", TABLE, [("id", HEARTBEAT_ID)])}

    step("capture triggers: sync-triggers install (udf mode, spool when gearmand does not answer)")
    stack.run("sync-triggers", c("sync-triggers", "install", "--table", TABLE, "--mysql-url", m))
    step(f"starting {args.workers} sync-worker and sync-relay")
    for i in range(args.workers):
        stack.spawn(f"worker-{i + 1}", c("sync-worker", "--table", TABLE, "--servers", g, "--redis-url", r, *common_log))
    stack.spawn("relay", c("sync-relay", "--database", DATABASE, "--mysql-url", m, "--servers", g, *common_log))
    step("copying the rows that predate the triggers: sync-snapshot")
    stack.run("snapshot", c("sync-snapshot", "--table", TABLE, "--mysql-url", m, "--redis-url", r,
                            "--progress", "log", "--log-format", "json"))
    paths = {"trigger": row_key(TRIGGER_TEMPLATE, TABLE, [("id", HEARTBEAT_ID)])}
    if not args.no_binlog:
        step(f"binlog source into its own keys ({BINLOG_TEMPLATE}): sync-binlog --sink redis --start earliest")
        stack.spawn("binlog", c("sync-binlog", "--table", TABLE, "--sink", "redis", "--key-template", BINLOG_TEMPLATE,
                                "--start", "earliest", "--mysql-url", m, "--redis-url", r, *common_log))
        paths["binlog"] = row_key(BINLOG_TEMPLATE, TABLE, [("id", HEARTBEAT_ID)])
    return paths


PATH_TITLES = {
    "trigger": "triggers → gearmand → sync-worker\n(data:<id>)",
    "binlog": "binlog → sync-binlog\n(binlog:data:<id>)",
    "classic": "datatoredis → syncToRedis\n(SET <id> <payload>)",
}


def wait_ready(stack: Stack, args: argparse.Namespace, paths: dict[str, str]) -> None:
    """Before the load: every path shows the heartbeat row, every worker is registered in gearmand."""
    import asyncio

    from sync.gearman import admin

    function = CLASSIC_FUNCTION if args.classic else f"gearsync.{TABLE}"
    step(f"waiting until {args.workers} worker(s) are registered for {function}"
         + (" and the binlog source has caught up" if "binlog" in paths else ""))
    r = stack.redis.client()

    def ready() -> bool:
        if args.classic:
            # the classic trigger sends UPDATEs only: touch the heartbeat row until it shows
            stack.mariadb.execute(f"UPDATE {TABLE} SET volume = 0, updated_at = NOW(6) WHERE id = {HEARTBEAT_ID}",
                                  database=DATABASE)
        if not all(r.exists(key) for key in paths.values()):
            return False
        rows = asyncio.run(admin.status(stack.gearmand.host, stack.gearmand.port, timeout_s=3))
        return any(row.name == function and row.workers >= args.workers for row in rows)

    try:
        wait_for("the pipeline to be ready", ready, 120, stack)
    finally:
        r.close()


def run_load(stack: Stack, args: argparse.Namespace, paths: dict[str, str]) -> tuple[Load, Monitor, float]:
    """The write load under the live display; returns when it is done and Redis has caught up."""
    load = Load(lambda: stack.mariadb.connect(DATABASE), rate=args.rate, seconds=args.seconds,
                live_ids=list(range(1, args.rows + 1)), classic=args.classic, seed=args.seed)
    monitor = Monitor(stack, load, paths, function=CLASSIC_FUNCTION if args.classic else f"gearsync.{TABLE}")
    monitor.start()
    step(f"write load: {args.rate:g} changes/s for {args.seconds:g} s"
         + (" (UPDATEs only: the classic trigger)" if args.classic else " (25% INSERT, 60% UPDATE, 15% DELETE)"))
    load.start()
    tty = sys.stdout.isatty() and not args.ci

    def caught_up() -> bool:
        final = len(load.beats)
        return (not load.is_alive() and final > 0
                and all(p.beat is not None and p.beat >= final for p in monitor.view.paths.values())
                and _table_row_state(monitor.view).get("queued", 1) == 0)

    drain_start = None
    deadline_after_load = 120.0

    def loop(tick: Callable[[], None]) -> None:
        nonlocal drain_start
        while True:
            if load.error is not None:
                raise DemoError(f"the write load failed: {load.error!r}")
            stack.check_children()
            if not load.is_alive():
                drain_start = drain_start or time.monotonic()
                if caught_up() and monitor.view.updated > (load.finished_at or 0):
                    tick()
                    return
                if time.monotonic() - drain_start > deadline_after_load:
                    raise DemoError(f"Redis did not catch up within {deadline_after_load:g} s after the load; "
                                    f"logs in {stack.log_dir}")
            tick()
            time.sleep(0.25)

    try:
        if tty:
            from rich.live import Live

            with Live(render_live(monitor.view, load, args, PATH_TITLES), refresh_per_second=4, transient=False) as live:
                loop(lambda: live.update(render_live(monitor.view, load, args, PATH_TITLES)))
        else:
            last = [0.0]

            def tick() -> None:
                if time.monotonic() - last[0] >= 1.0:
                    last[0] = time.monotonic()
                    say("    " + plain_line(monitor.view, load))

            loop(tick)
    finally:
        load.stop_event.set()
        load.join(timeout=10)
    drain_s = time.monotonic() - (drain_start or time.monotonic())
    return load, monitor, drain_s


def verify(stack: Stack, args: argparse.Namespace, paths: dict[str, str], load: Load) -> dict[str, dict[str, Any]]:
    c = stack.command
    results: dict[str, dict[str, Any]] = {}
    if args.classic:
        step("checking the classic keys: GET <id> for every updated row equals the row's {id, volume}")
        results["classic"] = check_classic(stack, load)
        return results
    step("verifying Redis against MySQL: sync-verify, once per key template")
    for name, template in (("trigger", TRIGGER_TEMPLATE), ("binlog", BINLOG_TEMPLATE)):
        if name not in paths:
            continue
        argv = c("sync-verify", "--table", TABLE, "--key-template", template, "--mysql-url", stack.mysql_url,
                 "--redis-url", stack.redis_url, "--json", "--progress", "log")
        done = stack.run(f"verify-{name}", argv, ok=(0, 1), capture=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        report["exit_code"] = done.returncode
        results[name] = report
    return results


def check_classic(stack: Stack, load: Load) -> dict[str, Any]:
    """The classic recipe has no verify (bare ids, no versions): compare the updated rows directly."""
    conn = stack.mariadb.connect(DATABASE)
    r = stack.redis.client()
    start = time.monotonic()
    try:
        ids = sorted(load.touched | {HEARTBEAT_ID})
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, volume FROM {TABLE}")
            rows = dict(cur.fetchall())
        different, examples = 0, []
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            for pk, raw in zip(chunk, r.mget([str(pk) for pk in chunk])):
                want = {"id": pk, "volume": rows[pk]}
                got = json.loads(raw) if raw is not None else None
                if got != want:
                    different += 1
                    if len(examples) < 5:
                        examples.append(f"{pk}: redis {raw!r}, mysql {want}")
        sample = [(pk, r.get(str(pk))) for pk in ids[1:4]]
    finally:
        conn.close()
        r.close()
    return {"equal": different == 0, "rows": len(ids), "missing": 0, "different": different, "extra": 0,
            "examples": {"different": examples}, "seconds": round(time.monotonic() - start, 3),
            "sample": [f"SET {pk} {v.decode() if v else None}" for pk, v in sample], "exit_code": 0 if not different else 1}


def print_summary(summary: dict[str, Any], ci: bool) -> None:
    rows: list[tuple[str, ...]] = []
    names = list(summary["verify"])
    header = ("", *[PATH_TITLES[n].replace("\n", " ") for n in names])
    lag = summary["lag"]
    rows.append(("changes written", *[f"{summary['load']['written']:,}" for _ in names]))
    rows.append(("changes synced", *[f"{lag[n]['synced']:,}" if lag[n]['synced'] is not None else "–" for n in names]))
    rows.append(("commit → Redis p50 / p99", *[f"{_fmt_lag(lag[n]['latency_p50_s'])} / {_fmt_lag(lag[n]['latency_p99_s'])}"
                                               for n in names]))
    rows.append(("max lag during the load", *[_fmt_lag(lag[n]['max_lag_s']) for n in names]))
    for label, key in (("rows compared", "rows"), ("missing", "missing"), ("different", "different"), ("extra keys", "extra")):
        rows.append((label, *[f"{summary['verify'][n].get(key, 0):,}" for n in names]))
    rows.append(("result", *["EQUAL" if summary["verify"][n]["equal"] else "DIFFERENT" for n in names]))
    try:
        if ci or not sys.stdout.isatty():
            raise ImportError
        from rich.console import Console
        from rich.table import Table

        t = Table(title="gearsync demo: summary", title_justify="left", header_style="bold")
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*[(f"[green]{v}[/green]" if v == "EQUAL" else f"[red]{v}[/red]" if v == "DIFFERENT" else v)
                        for v in row])
        Console().print(t)
    except ImportError:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            say("  ".join(str(v).ljust(widths[i]) if i == 0 else str(v).rjust(widths[i]) for i, v in enumerate(r)))
    t = summary["times"]
    say(f"set-up {t['setup_s']:.1f} s (first synced change {t['first_synced_s']:.1f} s after start), "
        f"load {t['load_s']:.1f} s, caught up {t['drain_s']:.1f} s after it, verify {t['verify_s']:.1f} s, "
        f"stop {t.get('stop_s', 0):.1f} s; total {t.get('total_s', 0):.1f} s")
    for n in names:
        for s in summary["verify"][n].get("sample", []):
            say(f"    redis: {s}")
        for kind, ex in (summary["verify"][n].get("examples") or {}).items():
            for e in ex:
                say(f"    {n} {kind}: {e}")


def run_demo(args: argparse.Namespace) -> int:
    t0_wall = float(os.environ.get(T0_ENV) or time.time())
    t0 = time.monotonic() - (time.time() - t0_wall)
    state_dir: Path = args.state_dir
    reset_state_dir(state_dir)
    PidFile.write(state_dir / "pids", "demo", os.getpid())
    stack = Stack(state_dir, choose_ports(args), Path(sys.executable).parent)
    summary: dict[str, Any] = {"state_dir": str(state_dir), "mode": "classic" if args.classic else "gearsync",
                               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    stopping = {"flag": False}

    def on_signal(signum: int, _frame: Any) -> None:
        if stopping["flag"]:
            say(f"(signal {signum}: already stopping, please wait)")
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = EXIT_FAILED
    load: Load | None = None
    monitor: Monitor | None = None
    try:
        stack.start_servers()
        summary["ports"] = {"mysql": stack.mariadb.port, "redis": stack.redis.port, "gearmand": stack.gearmand.port}
        build_udf(stack)
        create_table(stack, args.rows)
        paths = start_pipeline(stack, args)
        wait_ready(stack, args, paths)
        setup_s = time.monotonic() - t0
        load, monitor, drain_s = run_load(stack, args, paths)
        load_s = (load.finished_at or 0) - (load.started_at or 0)
        t_verify = time.monotonic()
        results = verify(stack, args, paths, load)
        verify_s = time.monotonic() - t_verify
        first = [p.first_seen_wall for p in monitor.view.paths.values() if p.first_seen_wall]
        summary.update(
            load={"written": load.written, **load.counts, "rows": load.rows, "rate": args.rate, "seconds": args.seconds},
            lag={n: {"synced": p.synced, "max_lag_s": round(p.max_lag_s, 4), "beats_seen": len(p.latencies_s),
                     "latency_p50_s": p.latency(0.5), "latency_p99_s": p.latency(0.99),
                     "latency_max_s": max(p.latencies_s, default=None)}
                 for n, p in monitor.view.paths.items()},
            verify=results,
            times={"setup_s": setup_s, "first_synced_s": (min(first) - t0_wall) if first else float("nan"),
                   "first_synced_wall": min(first) if first else None, "start_wall": t0_wall,
                   "load_s": load_s, "drain_s": drain_s, "verify_s": verify_s},
        )
        code = EXIT_OK if all(r["equal"] for r in results.values()) else EXIT_DIFF
    except KeyboardInterrupt:
        say("\ninterrupted: stopping everything the demo started")
        code = EXIT_INTERRUPTED
    except DemoError as exc:
        say(f"demo: error: {exc}")
        code = exc.code
    except Exception as exc:  # a server that did not start (its log tail is in the message), ...
        say(f"demo: error: {type(exc).__name__}: {exc}")
        code = EXIT_FAILED
    finally:
        stopping["flag"] = True
        if monitor is not None:
            monitor.stop_event.set()
            monitor.join(timeout=10)
        if load is not None:
            load.stop_event.set()
            load.join(timeout=10)
        t_stop = time.monotonic()
        if args.keep_running and code == EXIT_OK:
            stack.detach()
            kept = True
        else:
            step("stopping: workers, relay, binlog, then gearmand, Redis, MariaDB")
            stack.stop()
            kept = False
        PidFile(name="demo", pid=os.getpid(), start=None, path=state_dir / "pids" / "demo.pid").remove()
        times = summary.setdefault("times", {})
        times["stop_s"] = time.monotonic() - t_stop
        times["total_s"] = time.monotonic() - t0
    left = [(n, pid) for n, pid in stack.stopped_pids if alive(pid)]
    summary["processes"] = {"stopped": [{"name": n, "pid": pid} for n, pid in stack.stopped_pids],
                            "left_running": [{"name": n, "pid": pid} for n, pid in left], "kept": kept}
    if left:
        say(f"demo: still running after the stop: {', '.join(f'{n} ({p})' for n, p in left)}")
        code = code or EXIT_DIFF
    (state_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if "verify" in summary:
        print_summary(summary, args.ci)
    if kept:
        say(f"\nstill running (stop with make demo-stop):\n"
            f"  mysql  mariadb -h127.0.0.1 -P{stack.mariadb.port} -uroot {DATABASE}\n"
            f"  redis  redis-cli -p {stack.redis.port}\n"
            f"  status {_rel(stack.bin_dir / 'sync-status')} --servers {stack.gearman_servers} "
            f"--redis-url {stack.redis_url} --mysql-url {stack.mysql_url} --table {TABLE}")
    say(f"demo: {'OK' if code == EXIT_OK else 'FAILED'} (exit {code}); logs and summary.json in {_rel(state_dir)}")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    global _T0
    os.environ.setdefault(T0_ENV, repr(time.time()))
    _T0 = time.monotonic() - (time.time() - float(os.environ[T0_ENV]))
    try:
        if args.load_only:
            return run_load_only(args)
        if args.stop:
            stopped = stop_left_running(args.state_dir) if args.state_dir.is_dir() else []
            say(f"stopped: {', '.join(stopped)}" if stopped else f"no demo running in {_rel(args.state_dir)}")
            return EXIT_OK
        if args.no_install:
            venv_ready = _venv_ready()
            missing = missing_packages(need_venv=False)
            if missing or not venv_ready:
                raise DemoError(f"--no-install: missing {' '.join(missing) or 'the venv (make venv)'}", EXIT_USAGE)
            if not _in_venv():
                python = str(VENV / "bin" / "python")
                os.execv(python, [python, "-m", "sync.demo", *argv])
        else:
            bootstrap(args, argv)
        return run_demo(args)
    except DemoError as exc:
        say(f"demo: error: {exc}")
        return exc.code
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
