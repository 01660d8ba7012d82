"""deploy/systemd/gearsync-worker@.service at boot, when Redis and gearmand come up after it: its
ExecStart= run under a stand-in for systemd (tests/integration/unit_rig.py: Restart=on-failure,
RestartPreventExitStatus=, RestartSec= read from the unit file). The worker gives up after its
startup wait (exit 3), is restarted, ends up running and applies a job; a bad option (exit 2) is not
restarted. systemd itself does not run here (no systemd as PID 1)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sync.testing.servers import GearmanServer, RedisServer

from .unit_rig import UNITS, Supervisor, submit_insert

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
UNIT = UNITS / "gearsync-worker@.service"


def _until(what: str, check, sup: Supervisor, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert not sup.done, f"the unit ended for good ({sup.exits}) before {what}:\n{sup.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s ({sup.exits}):\n{sup.log.read_text()[-3000:]}"
        time.sleep(0.1)



@pytest.mark.slow
def test_worker_unit_restarts_until_its_servers_are_up(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")   # ports chosen now, servers started later
    gearmand = GearmanServer(tmp_path / "gearmand")
    env = {"GEARSYNC_GEARMAN_SERVERS": gearmand.address, "GEARSYNC_REDIS_URL": redis.url,
           # a short startup wait, so that the unit's restart is what brings the worker up
           "GEARSYNC_WORKER_ARGS": "--startup-wait 1 --stats-interval 0"}
    sup = Supervisor(UNIT, "data", env, BIN, tmp_path / "journal.log")
    assert sup.restart_sec > 0 and sup.prevent == {2}
    sup.start()
    try:
        _until("a first exit 3", lambda: 3 in sup.exits, sup)
        redis.start()
        gearmand.start()
        row = {"id": 1, "volume": 10}
        submit_insert(gearmand, "data", row)
        client = redis.client()
        _until("data:1 in Redis", lambda: client.get("data:1") is not None, sup)
        assert json.loads(client.get("data:1")) == row
        client.close()
        assert sup.running
    finally:
        sup.stop()
        redis.stop()
        gearmand.stop()
    assert sup.exits[-1] == 0 and set(sup.exits[:-1]) == {3}, sup.exits   # restarted after each 3; SIGTERM: clean exit 0
    events = [json.loads(line) for line in sup.log.read_text().splitlines() if line.startswith("{")]
    assert any(e["event"] == "server_unreachable_at_start" for e in events)
    assert any(e["event"] == "worker_started" for e in events)


def test_worker_unit_does_not_restart_a_bad_option(tmp_path: Path) -> None:
    env = {"GEARSYNC_WORKER_ARGS": "--batch nope"}
    sup = Supervisor(UNIT, "data", env, BIN, tmp_path / "journal.log").start()
    try:
        _until_done = time.monotonic() + 60
        while not sup.done and time.monotonic() < _until_done:
            time.sleep(0.1)
    finally:
        sup.stop()
    assert sup.exits == [2], sup.exits
    assert "--batch" in sup.log.read_text()
