"""The HTTP endpoint of `--metrics-port`: /metrics (Prometheus text format) and /healthz.

    start_metrics_server(9310, "127.0.0.1")   # ThreadingHTTPServer on a daemon thread
    set_check(service.health)                 # () -> (reason or None, details)

/healthz answers 200 {"status": "ok", ...details} while the command's check finds nothing wrong, and
503 {"status": "unhealthy", "reason": "...", ...details} otherwise (also before the command has
registered its check: "starting"). What each command checks — connected, and making progress
within PROGRESS_S — is its own `health()` (sync.apply.worker, sync.capture.binlog.service,
sync.capture.relay) and docs/metrics.md. The check only reads what the command's loops record; it
never does I/O itself, so a hung server cannot hang the probe.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from sync.errors import ConfigError
from sync.metrics import HEALTHY

__all__ = ["PROGRESS_S", "POLL_S", "POLL_TIMEOUT_S", "HealthCheck", "set_check", "healthz", "start_metrics_server"]

PROGRESS_S = 60.0      # "making progress": something moved (or there was nothing to do) within this many seconds
POLL_S = 2.0           # how often the commands poll their gauges (queue depth, dead letters, spool rows)
POLL_TIMEOUT_S = 2.0   # ... and how long one poll may take before it counts as a failure

HealthCheck = Callable[[], tuple[str | None, dict[str, Any]]]

_check: HealthCheck | None = None


def set_check(check: HealthCheck | None) -> None:
    """The function /healthz calls: (None, details) when healthy, (reason, details) otherwise."""
    global _check
    _check = check


def healthz() -> tuple[int, dict[str, Any]]:
    """The /healthz status code and JSON body."""
    check = _check
    if check is None:
        reason: str | None = "starting"
        details: dict[str, Any] = {}
    else:
        try:
            reason, details = check()
        except Exception as exc:  # a bug in a check must read as unhealthy, not kill the server thread
            reason, details = f"health check failed: {type(exc).__name__}: {exc}", {}
    HEALTHY.set(0 if reason else 1)
    if reason:
        return 503, {"status": "unhealthy", "reason": reason, **details}
    return 200, {"status": "ok", **details}


class _Handler(BaseHTTPRequestHandler):
    server_version = "gearsync"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            healthz()   # gearsync_healthy as of this scrape
            code, body, ctype = 200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST
        elif path == "/healthz":
            code, doc = healthz()
            body, ctype = json.dumps(doc, default=str).encode() + b"\n", "application/json"
        else:
            code, body, ctype = 404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass   # one line per scrape is noise


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on addr:port from a daemon thread. ConfigError (one line) for a
    bad port or an address that cannot be listened on (busy, not this host's)."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--metrics-port: {port}; expected 1 to 65535")
    if not addr:
        raise ConfigError("--metrics-addr: empty; expected an IP address or host name such as 127.0.0.1 or 0.0.0.0")
    try:
        family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--metrics-addr: {addr!r} does not resolve ({exc}); expected an IP address or "
                          "host name such as 127.0.0.1 or 0.0.0.0") from None
    server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6}) if family == socket.AF_INET6 \
        else _Server
    try:
        server = server_cls((addr, port), _Handler)
    except OSError as exc:
        raise ConfigError(f"--metrics-port: cannot listen on {addr}:{port} ({exc.strerror or exc})") from None
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
