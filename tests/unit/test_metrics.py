"""The metric names (conventions, dashboard, docs) and the /metrics + /healthz HTTP server."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import sync.apply.worker  # noqa: F401 - registers what the commands use
import sync.capture.binlog.service  # noqa: F401
import sync.capture.relay  # noqa: F401
from sync import health, metrics
from sync.errors import ConfigError
from sync.settings import resolve_metrics
from sync.testing.servers import free_port

for _command in metrics.SERIES:   # what the three commands serve, in this process's registry
    metrics.register(_command)

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "gearsync-dashboard.json"


def families() -> dict[str, str]:
    from prometheus_client import REGISTRY

    return {f.name: f.type for f in REGISTRY.collect() if f.name.startswith("gearsync_")}


def test_names_follow_prometheus_conventions() -> None:
    fams = families()
    assert len(fams) >= 19, fams
    for name, kind in fams.items():
        assert re.fullmatch(r"gearsync_[a-z]+(_[a-z]+)*", name), name
        if kind != "counter":
            assert not name.endswith("_total"), name   # prometheus_client adds _total to counters itself
        if "seconds" in name or "timestamp" in name:
            assert name.endswith("_seconds"), name      # base unit last
    # sync-binlog's changes read are not sync-worker's jobs any more
    assert fams["gearsync_binlog_changes_read"] == "counter" and fams["gearsync_jobs"] == "counter"


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_queries_name_registered_metrics() -> None:
    registered = metrics.metric_names()
    used: set[str] = set()
    for expr in dashboard_exprs():
        names = set(re.findall(r"\bgearsync_[a-z_]+", expr))
        assert names, f"a panel query names no gearsync metric: {expr}"
        unknown = names - registered
        assert not unknown, f"{expr}: {sorted(unknown)} not registered; registered: {sorted(registered)}"
        used |= {re.sub(r"_(bucket|sum|count)$", "", n) if n.startswith("gearsync_batch_seconds") else n
                 for n in names}
    # every panel the issue asks for is there, on the right series
    for must in ("gearsync_applied_total", "gearsync_lag_seconds", "gearsync_binlog_behind_seconds",
                 "gearsync_gearman_queued_jobs", "gearsync_dead_letters", "gearsync_batch_seconds",
                 "gearsync_healthy", "gearsync_last_applied_timestamp_seconds", "gearsync_spool_rows"):
        assert must in used, must


def test_dashboard_check_rejects_a_wrong_name() -> None:
    """The check above can fail: a name that is not registered is caught."""
    assert "gearsync_jobs_total" in metrics.metric_names()
    assert "gearsync_batch_seconds_bucket" in metrics.metric_names()
    assert "gearsync_jobs" not in metrics.metric_names()             # a counter is scraped as *_total
    assert "gearsync_dead_letters_total" not in metrics.metric_names()


def test_docs_describe_every_metric() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    for name, kind in families().items():
        shown = name + "_total" if kind == "counter" else name
        assert f"`{shown}" in text, f"docs/metrics.md does not describe {shown}"
    assert "docs/metrics.md" in (REPO / "README.md").read_text()


def test_table_counts_add_once_per_table() -> None:
    def value(metric: Any, **labels: str) -> float:
        from prometheus_client import REGISTRY

        return REGISTRY.get_sample_value(metric, labels) or 0.0

    before = {t: (value("gearsync_applied_total", table=t), value("gearsync_stale_skipped_total", table=t),
                  value("gearsync_dead_total", table=t), value("gearsync_jobs_total", table=t)) for t in ("ut_a", "ut_b")}
    counts = metrics.TableCounts().outcomes(["ut_a", "ut_b", "ut_a", "ut_a"], [True, False, False, True])
    counts.add("ut_b", 0, dead=2).record_applied(jobs=True)
    after = {t: (value("gearsync_applied_total", table=t), value("gearsync_stale_skipped_total", table=t),
                 value("gearsync_dead_total", table=t), value("gearsync_jobs_total", table=t)) for t in ("ut_a", "ut_b")}
    delta = {t: tuple(a - b for a, b in zip(after[t], before[t])) for t in after}
    assert delta == {"ut_a": (2, 1, 0, 3), "ut_b": (0, 1, 2, 3)}
    assert value("gearsync_last_applied_timestamp_seconds", table="ut_a") > 0
    assert value("gearsync_last_applied_timestamp_seconds", table="ut_b") == 0   # nothing applied


def test_table_of_function() -> None:
    assert metrics.table_of_function("gearsync.orders") == "orders"
    assert metrics.table_of_function("datatoredis") == "datatoredis"
    assert metrics.table_of_function("gearsync.") == "gearsync."


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_http_server_serves_metrics_and_healthz_both_ways() -> None:
    port = free_port()
    server = health.start_metrics_server(port, "127.0.0.1")
    state: dict[str, Any] = {"reason": None}
    try:
        assert server.server_address[0] == "127.0.0.1"
        health.set_check(None)
        code, body = get(port, "/healthz")
        assert code == 503 and json.loads(body) == {"status": "unhealthy", "reason": "starting"}
        health.set_check(lambda: (state["reason"], {"command": "test"}))
        code, body = get(port, "/healthz")
        assert code == 200 and json.loads(body) == {"status": "ok", "command": "test"}
        code, body = get(port, "/metrics")
        assert code == 200 and b"\ngearsync_healthy 1.0\n" in body and b"gearsync_batch_seconds_bucket" in body
        state["reason"] = "redis: Connection refused"
        code, body = get(port, "/healthz")
        assert code == 503 and json.loads(body) == {"status": "unhealthy", "reason": "redis: Connection refused",
                                                    "command": "test"}
        assert b"\ngearsync_healthy 0.0\n" in get(port, "/metrics")[1]

        def broken() -> tuple[str | None, dict[str, Any]]:
            raise RuntimeError("boom")

        health.set_check(broken)
        code, body = get(port, "/healthz")
        assert code == 503 and "boom" in json.loads(body)["reason"]
        assert get(port, "/nothing")[0] == 404
    finally:
        health.set_check(None)
        server.shutdown()
        server.server_close()


def test_busy_port_and_bad_address_are_one_line_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^--metrics-port: cannot listen on 127.0.0.1:{port} "):
            health.start_metrics_server(port, "127.0.0.1")
    with pytest.raises(ConfigError, match=r"^--metrics-addr: 'no-such-host\.invalid' does not resolve"):
        health.start_metrics_server(free_port(), "no-such-host.invalid")
    with pytest.raises(ConfigError, match=r"^--metrics-port: 0; expected 1 to 65535"):
        health.start_metrics_server(0)


def test_metrics_addr_defaults_to_loopback() -> None:
    import argparse

    from sync.cli import add_metrics_options

    p = argparse.ArgumentParser()
    add_metrics_options(p)
    assert resolve_metrics(p.parse_args(["--metrics-port", "9310"])).addr == "127.0.0.1"
    assert resolve_metrics(p.parse_args(["--metrics-port", "9310", "--metrics-addr", "0.0.0.0"])).addr == "0.0.0.0"
    assert "default 127.0.0.1" in p.format_help()
