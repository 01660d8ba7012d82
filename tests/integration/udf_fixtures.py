"""Shared pieces of the UDF tests: the `udf_installed` fixture and a tiny synchronous Gearman worker.

The worker speaks the binary protocol over a plain socket (GRAB_JOB_UNIQ, WORK_*), so the tests
see exactly the bytes the UDF sent: function, unique id and workload.  Nothing is mocked: the
jobs go through a real gearmand.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sync.capture.udf_install import INSTALL_SQL, read_statements
from sync.testing.servers import GearmanServer, MariaDBServer

REPO = Path(__file__).resolve().parents[2]
UDF_DIR = REPO / "udf"

# GEARSYNC_UDF_ASAN=1 (make -C udf test-asan): the same tests against mariadbd running the library
# built with -fsanitize=address,undefined (udf/build-asan), libasan/libubsan preloaded into mariadbd.
ASAN_MODE = os.environ.get("GEARSYNC_UDF_ASAN") == "1"
LIBRARY = UDF_DIR / ("build-asan" if ASAN_MODE else "build") / "gearsync_udf.so"
SANITIZER_LOGS: list[Path] = []

CAN_DO, PRE_SLEEP, NOOP, NO_JOB = 1, 4, 6, 10
WORK_STATUS, WORK_COMPLETE, WORK_FAIL = 12, 13, 14
WORK_EXCEPTION, WORK_DATA, WORK_WARNING = 25, 28, 29
GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ = 30, 31


def build_library() -> Path:
    result = subprocess.run(["make", "-s", "-C", str(UDF_DIR), "asan" if ASAN_MODE else "all"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"make -C udf failed:\n{result.stdout}\n{result.stderr}")
    return LIBRARY


def install_udfs(server: MariaDBServer) -> None:
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            for stmt in read_statements(INSTALL_SQL):
                cur.execute(stmt)
    finally:
        conn.close()


def _gcc_lib(name: str) -> str:
    return subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()


def new_mariadb(base_dir: Path, plugin_dir: Path, **kw: Any) -> MariaDBServer:
    """A MariaDBServer; in ASAN_MODE with the sanitizer runtimes preloaded and reports logged to files."""
    server = MariaDBServer(base_dir, plugin_dir=plugin_dir, **kw)
    if ASAN_MODE:
        server.extra_args.append("--thread-stack=1M")  # ASan needs bigger stacks
        server.env["LD_PRELOAD"] = f"{_gcc_lib('libasan.so')} {_gcc_lib('libubsan.so')}"
        server.env["ASAN_OPTIONS"] = f"detect_leaks=0:abort_on_error=1:log_path={base_dir}/asan"
        server.env["UBSAN_OPTIONS"] = f"print_stacktrace=1:halt_on_error=1:log_path={base_dir}/ubsan"
        SANITIZER_LOGS.append(base_dir)
    return server


def sanitizer_reports() -> str:
    """Every ASan/UBSan report written by a mariadbd started in ASAN_MODE (empty when clean)."""
    reports = []
    for base in SANITIZER_LOGS:
        for path in sorted(base.glob("[au][sb]san.*")):
            reports.append(f"{path}:\n{path.read_text(errors='replace')}")
    return "\n".join(reports)


@pytest.fixture(scope="session", name="mariadb")
def asan_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """In ASAN_MODE the UDF test modules use this instead of the shared `mariadb`: plugin dir
    udf/build-asan, sanitizers preloaded; a sanitizer report fails the session."""
    build_library()
    server = new_mariadb(tmp_path_factory.mktemp("mariadb-asan"), LIBRARY.parent)
    server.start()
    assert server.proc is not None
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libasan" in maps, "libasan is not loaded into mariadbd"
    yield server
    server.stop()
    reports = sanitizer_reports()
    assert not reports, reports


@pytest.fixture(scope="session")
def udf_installed(mariadb: MariaDBServer) -> MariaDBServer:
    """The session MariaDB (plugin_dir = udf/build) with the library built and every function created."""
    build_library()
    install_udfs(mariadb)
    return mariadb


@pytest.fixture
def own_mariadb(tmp_path: Path) -> Iterator[MariaDBServer]:
    """A mariadbd of our own whose plugin dir holds a copy of the library, UDFs installed: restarts and
    conf files don't disturb the session server."""
    build_library()
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    shutil.copy(LIBRARY, plugin / LIBRARY.name)
    server = new_mariadb(tmp_path / "mariadb", plugin)
    server.start()
    install_udfs(server)
    yield server
    server.stop()
    reports = sanitizer_reports()
    assert not reports, reports


def scalar(conn, sql: str, *args: object) -> object:
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        row = cur.fetchone()
    return row[0] if row else None


def point_at(conn, *servers: GearmanServer | str, options: str | None = None) -> bytes:
    """gman_servers_set for the whole mysqld; returns the canonical list."""
    spec = ",".join(s if isinstance(s, str) else s.address for s in servers)
    # Options apply on top of the current ones: start every call from the defaults, so nothing a
    # previous test set carries over; `options` override them (later keys win).
    defaults = "timeout_ms=100,do_timeout_ms=5000,retry_ms=1000,pipeline=1,coalesce_us=1000,max_payload=268435456,journal=1"
    options = defaults if options is None else f"{defaults},{options}"
    return scalar(conn, "SELECT gman_servers_set(%s, %s)", spec, options)


# --------------------------------------------------------------------------- raw protocol


def _req(ptype: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", ptype, len(body)) + body


class _Conn:
    def __init__(self, server: GearmanServer | tuple[str, int], timeout_s: float = 5.0) -> None:
        host, port = (server.host, server.port) if isinstance(server, GearmanServer) else server
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        # small request/response packets: without this Nagle + delayed ACK cost 40 ms a job
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, ptype: int, *args: bytes) -> None:
        self.sock.sendall(_req(ptype, *args))

    def recv(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 12:
                assert self.buf[:4] == b"\0RES", self.buf[:12]
                ptype, size = struct.unpack(">II", self.buf[4:12])
                if len(self.buf) >= 12 + size:
                    data = self.buf[12 : 12 + size]
                    self.buf = self.buf[12 + size :]
                    return ptype, data
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("gearmand closed the connection")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class GrabbedJob:
    handle: bytes
    function: bytes
    unique: bytes
    workload: bytes


def grab_all(server: GearmanServer, *functions: str, expect: int | None = None,
             timeout_s: float = 10.0) -> list[GrabbedJob]:
    """Take every queued job of `functions` (completing each), in the order gearmand hands them out.

    With `expect`, keep polling until that many arrived (jobs may still be in flight from a
    pipelined UDF call) or the timeout passes."""
    conn = _Conn(server)
    jobs: list[GrabbedJob] = []
    try:
        for fn in functions:
            conn.send(CAN_DO, fn.encode())
        deadline = time.monotonic() + timeout_s
        while True:
            conn.send(GRAB_JOB_UNIQ)
            ptype, data = conn.recv()
            if ptype == JOB_ASSIGN_UNIQ:
                handle, fn_b, unique, workload = data.split(b"\0", 3)
                jobs.append(GrabbedJob(handle, fn_b, unique, workload))
                conn.send(WORK_COMPLETE, handle, b"")
                continue
            if ptype == NOOP:
                continue
            assert ptype == NO_JOB, ptype
            if expect is None or len(jobs) >= expect or time.monotonic() > deadline:
                return jobs
            time.sleep(0.02)
    finally:
        conn.close()


def status(server: GearmanServer) -> dict[str, tuple[int, int, int]]:
    """Admin `status`: function -> (total, running, workers)."""
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(b"status\n")
        data = b""
        while not data.endswith(b".\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    out: dict[str, tuple[int, int, int]] = {}
    for line in data.decode().splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            out[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return out


Handler = Callable[[bytes], "list[tuple[int, bytes]] | bytes | None"]


class Worker:
    """A worker thread: for each job calls handler(workload) and answers.

    handler returns bytes (WORK_COMPLETE with them), None (WORK_FAIL), or a list of
    (packet_type, data) to send in order (WORK_DATA chunks, WORK_STATUS, WORK_EXCEPTION, …)."""

    def __init__(self, server: GearmanServer, functions: dict[str, Handler]) -> None:
        self.server = server
        self.functions = functions
        self.jobs: list[GrabbedJob] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Worker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn = _Conn(self.server, timeout_s=0.2)
        try:
            for fn in self.functions:
                conn.send(CAN_DO, fn.encode())
            while not self._stop.is_set():
                conn.send(GRAB_JOB_UNIQ)
                try:
                    ptype, data = conn.recv()
                except TimeoutError:
                    continue
                if ptype != JOB_ASSIGN_UNIQ:
                    time.sleep(0.005)
                    continue
                handle, fn_b, unique, workload = data.split(b"\0", 3)
                self.jobs.append(GrabbedJob(handle, fn_b, unique, workload))
                answer = self.functions[fn_b.decode()](workload)
                if answer is None:
                    conn.send(WORK_FAIL, handle)
                elif isinstance(answer, bytes):
                    conn.send(WORK_COMPLETE, handle, answer)
                else:
                    for ptype_out, payload in answer:
                        if ptype_out == WORK_FAIL:
                            conn.send(WORK_FAIL, handle)
                        elif ptype_out == WORK_STATUS:
                            conn.send(WORK_STATUS, handle, *payload.split(b"\0"))
                        else:
                            conn.send(ptype_out, handle, payload)
        finally:
            conn.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def iter_chunks(data: bytes, n: int) -> Iterator[bytes]:
    for i in range(0, len(data), n):
        yield data[i : i + n]
