"""Throwaway real servers on free loopback ports: MariaDB, Redis (single and cluster), gearmand.

Used by the test fixtures, the benchmarks and the demo, so they all start the same stack the
same way.  Every server lives in its own directory (data, socket, log, pid) and is started from
the system binaries; nothing here touches the machine's own services on 3306/6379/4730.

    with MariaDBServer(tmp / "db", plugin_dir=udf_build) as db, GearmanServer(tmp / "g") as g:
        conn = db.connect()
        ...

When a server does not come up, `ServerStartError` carries the tail of the server's own log,
so a failing test shows why.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

__all__ = [
    "ServerStartError",
    "free_port",
    "MariaDBServer",
    "RedisServer",
    "RedisClusterNodes",
    "GearmanServer",
    "TLSFiles",
    "make_tls_files",
]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class ServerStartError(RuntimeError):
    """A server process did not start; the message ends with its log tail."""


def free_port(max_port: int = 65535) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (at most max_port)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port <= max_port:
            return port
    raise ServerStartError(f"no free port at or below {max_port} found")


def _which(name: str, *fallbacks: str) -> str:
    for candidate in (name, *fallbacks):
        found = shutil.which(candidate) or (candidate if os.path.exists(candidate) else None)
        if found:
            return found
    raise ServerStartError(f"{name}: not found on PATH (install the Debian package that provides it)")


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class _Server:
    """Common process handling: start, wait until ready, stop, kill, pause."""

    name = "server"
    stop_timeout_s = STOP_TIMEOUT_S

    def __init__(self, base_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self._log_fh: Any = None

    # -- to override -------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.base_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """One-time set-up before the first start (e.g. initialise a data dir)."""

    def ready(self) -> bool:
        return _port_open(self.host, self.port)

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        self.prepare()
        env = {**os.environ, **self.env}
        stdout_path = self.base_dir / f"{self.name}.stdout"
        self._log_fh = open(stdout_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ready():
                return self
            time.sleep(0.05)
        code = self.proc.poll()
        self._terminate(force=True)
        raise ServerStartError(
            f"{self.name} on port {self.port} did not start (exit code {code}); "
            f"log {self.log_path}:\n{_log_tail(self.log_path)}\n"
            f"stdout {stdout_path}:\n{_log_tail(stdout_path)}"
        )

    def _terminate(self, force: bool = False) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                if force:
                    proc.kill()
                else:
                    # A stopped process cannot handle SIGTERM until continued.
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
            except ProcessLookupError:
                pass
        self.proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        self._wait_port_closed()

    def _wait_port_closed(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _port_open(self.host, self.port):
            time.sleep(0.05)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), waiting for the process to exit."""
        self._terminate(force=False)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or shut down cleanly."""
        self._terminate(force=True)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a hung server). Returns once
        /proc shows it stopped (at most 5 s): the signal alone returns before that, and a server
        still running on the other core could answer what a test sends next."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)
            stat = Path(f"/proc/{self.proc.pid}/stat")
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                try:
                    state = stat.read_text().rpartition(")")[2].split()[0]
                except (OSError, IndexError):
                    return
                if state in ("T", "t"):
                    return
                time.sleep(0.001)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class TLSFiles:
    """A throwaway CA and the server and client certificates it signed (PEM files)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: str | os.PathLike[str], name: str = "test") -> TLSFiles:
    """A new CA ("<name> CA") and, signed by it, a server certificate for 127.0.0.1/localhost and a
    client certificate, made with the openssl command line; each call makes a different CA."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    openssl = _which("openssl")

    def run(*args: str) -> None:
        result = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=60, cwd=d)
        if result.returncode != 0:
            raise ServerStartError(f"openssl {args[0]} failed ({result.returncode}): {result.stderr[-2000:]}")

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name} CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name} {who}", "-keyout", f"{who}.key",
            "-out", f"{who}.csr")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{who}.ext", "-out", f"{who}.pem")
    for key in ("ca.key", "server.key", "client.key"):
        (d / key).chmod(0o600)
    return TLSFiles(ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key",
                    client_cert=d / "client.pem", client_key=d / "client.key")


class MariaDBServer(_Server):
    """A throwaway mariadbd: ROW binlog with full metadata, GTIDs, a chosen plugin dir.

    root can log in over TCP from 127.0.0.1 without a password (`connect()`, `url`).
    """

    name = "mariadb"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        plugin_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        server_id: int = 1,
        tls: TLSFiles | None = None,
    ) -> None:
        super().__init__(base_dir, port)
        self.tls = tls  # set: the server offers TLS with this certificate (clients choose; REQUIRE SSL per user)
        self.datadir = self.base_dir / "data"
        self.socket = self.base_dir / "mysql.sock"
        self.plugin_dir = Path(plugin_dir) if plugin_dir else self.base_dir / "plugin"
        self.extra_args = list(extra_args)
        self.server_id = server_id
        self.user = "root"
        self.password = ""

    @property
    def url(self) -> str:
        return f"mysql://{self.user}@{self.host}:{self.port}/"

    @property
    def tmpdir(self) -> Path:
        """The server's own temporary directory: nothing else on the machine creates or removes its
        files (in /tmp, install-db once failed on a temporary table something removed under it)."""
        return self.base_dir / "tmp"

    def prepare(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        if (self.datadir / "mysql").is_dir():
            return
        install = _which("mariadb-install-db", "mysql_install_db")
        result = subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
                f"--tmpdir={self.tmpdir}",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if result.returncode != 0:
            raise ServerStartError(
                f"mariadb-install-db failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        self._first_boot = True

    def command(self) -> list[str]:
        return [
            _which("mariadbd", "/usr/sbin/mariadbd", "/usr/sbin/mysqld"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.base_dir / 'mariadb.pid'}",
            f"--log-error={self.log_path}",
            f"--plugin-dir={self.plugin_dir}",
            f"--tmpdir={self.tmpdir}",
            "--skip-name-resolve",
            "--log-bin=binlog",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
            f"--server-id={self.server_id}",
            "--innodb-buffer-pool-size=256M",
            "--innodb-log-file-size=256M",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--max-connections=500",
            "--max-allowed-packet=64M",
            "--user=root",
            *([f"--ssl-ca={self.tls.ca}", f"--ssl-cert={self.tls.server_cert}", f"--ssl-key={self.tls.server_key}"]
              if self.tls else []),
            *self.extra_args,
        ]

    def ready(self) -> bool:
        if not _port_open(self.host, self.port):
            return False
        try:
            conn = self._raw_connect()
        except Exception:
            return False
        try:
            if getattr(self, "_first_boot", False):
                with conn.cursor() as cur:
                    # skip-name-resolve: root@localhost does not match TCP from 127.0.0.1.
                    cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''")
                    cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
                self._first_boot = False
        finally:
            conn.close()
        return True

    def _raw_connect(self, **kw: Any) -> Any:
        import pymysql

        return pymysql.connect(unix_socket=str(self.socket), user="root", connect_timeout=2, autocommit=True, **kw)

    def connect(self, database: str | None = None, **kw: Any) -> Any:
        """A pymysql connection over TCP as root (autocommit on unless given)."""
        import pymysql

        kw.setdefault("autocommit", True)
        kw.setdefault("connect_timeout", 5)
        kw.setdefault("charset", "utf8mb4")
        return pymysql.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, database=database, **kw
        )

    def execute(self, *statements: str, database: str | None = None) -> None:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                for stmt in statements:
                    cur.execute(stmt)
        finally:
            conn.close()

    def _terminate(self, force: bool = False) -> None:
        super()._terminate(force)
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass


class RedisServer(_Server):
    """A throwaway redis-server with no persistence unless extra_args ask for it."""

    name = "redis"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        password: str | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        super().__init__(base_dir, port)
        self.extra_args = list(extra_args)
        self.password = password
        # set: TLS only (port 0, tls-port = self.port) and clients must show a certificate of tls.ca
        self.tls = tls

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{self.host}:{self.port}/0"

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.server_cert),
                "--tls-key-file", str(self.tls.server_key), "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "yes"]

    def command(self) -> list[str]:
        cmd = [
            _which("redis-server"),
            "--bind",
            "127.0.0.1",
            *self._tls_args(),
            "--dir",
            str(self.base_dir),
            "--logfile",
            str(self.log_path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + self.extra_args

    def ready(self) -> bool:
        if not _port_open(self.host, self.port):
            return False
        if self.tls is not None:
            try:
                with self.client(socket_timeout=0.5) as c:
                    c.ping()
                return True
            except Exception:
                return False
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    s.recv(64)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def client(self, **kw: Any) -> Any:
        """A synchronous redis-py client."""
        import redis

        if self.tls is not None:
            kw = dict(ssl=True, ssl_ca_certs=str(self.tls.ca), ssl_certfile=str(self.tls.client_cert),
                      ssl_keyfile=str(self.tls.client_key), **kw)
        return redis.Redis(host=self.host, port=self.port, password=self.password, **kw)


class RedisClusterNodes:
    """n redis-server nodes in cluster mode (masters only), slots spread by redis-cli."""

    def __init__(self, base_dir: str | os.PathLike[str], n: int = 3) -> None:
        self.base_dir = Path(base_dir)
        # A cluster node also listens on port + 10000 (the cluster bus), so its port must stay
        # at or below 55535, and that bus port must be free too.
        self.nodes = [
            RedisServer(
                self.base_dir / f"node{i}",
                port=_cluster_port(),
                extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", "5000"],
            )
            for i in range(n)
        ]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(node.host, node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        node = self.nodes[0]
        return f"redis://{node.host}:{node.port}/0"

    def start(self) -> RedisClusterNodes:
        for node in self.nodes:
            node.start()
        addrs = [f"{h}:{p}" for h, p in self.startup_nodes]
        result = subprocess.run(
            [_which("redis-cli"), "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            self.stop()
            raise ServerStartError(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            info = subprocess.run(
                [_which("redis-cli"), "-p", str(self.nodes[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            if "cluster_state:ok" in info:
                return self
            time.sleep(0.1)
        raise ServerStartError("redis cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterNodes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_port() -> int:
    for _ in range(200):
        port = free_port(55535)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise ServerStartError("no free port pair (p, p+10000) for a cluster node")


class GearmanServer(_Server):
    """A throwaway gearmand: in-memory queue, or persistent with `-q libsqlite3` / `-q mysql`.

    For `queue="mysql"` pass the MariaDBServer to keep the queue in (database `gearman`).
    """

    name = "gearmand"
    # gearmand with a persistent queue and connected clients can take 30 s to exit on SIGTERM;
    # its queue is already durable, so a short grace period then SIGKILL loses nothing.
    stop_timeout_s = 5.0

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        queue: str = "builtin",
        mysql: MariaDBServer | None = None,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        threads: int = 2,
    ) -> None:
        super().__init__(base_dir, port)
        if queue not in ("builtin", "libsqlite3", "mysql"):
            raise ValueError(f"queue: {queue!r}; expected builtin, libsqlite3 or mysql")
        if queue == "mysql" and mysql is None:
            raise ValueError("queue='mysql' needs the MariaDBServer to keep the queue in")
        self.queue = queue
        self.mysql = mysql
        self.extra_args = list(extra_args)
        self.threads = threads

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def prepare(self) -> None:
        if self.queue == "mysql" and self.mysql is not None:
            self.mysql.execute("CREATE DATABASE IF NOT EXISTS gearman")

    def command(self) -> list[str]:
        cmd = [
            _which("gearmand", "/usr/sbin/gearmand"),
            "--listen",
            self.host,
            "--port",
            str(self.port),
            "--log-file",
            str(self.log_path),
            "--pid-file",
            str(self.base_dir / "gearmand.pid"),
            "--threads",
            str(self.threads),
            "--verbose",
            "WARNING",
        ]
        if self.queue == "libsqlite3":
            cmd += ["-q", "libsqlite3", "--libsqlite3-db", str(self.base_dir / "queue.sqlite3")]
        elif self.queue == "mysql":
            assert self.mysql is not None
            cmd += [
                "-q",
                "mysql",
                "--mysql-host",
                self.mysql.host,
                "--mysql-port",
                str(self.mysql.port),
                "--mysql-user",
                self.mysql.user,
                "--mysql-db",
                "gearman",
            ]
            if self.mysql.password:
                cmd += ["--mysql-password", self.mysql.password]
        return cmd + self.extra_args

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.settimeout(1.0)
                s.sendall(b"version\n")
                return s.recv(64).startswith(b"OK")
        except OSError:
            return False
