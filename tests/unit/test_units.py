"""The systemd units in deploy/systemd: accepted by `systemd-analyze verify` (systemd 252, Debian 12)
without a warning, restart settings that survive a boot where the servers come up later, and the
binlog unit's recovery comment saying what the README says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.unit_rig import REPO, UNITS, read_unit

UNIT_FILES = sorted(UNITS.glob("gearsync-*@.service"))
BIN = REPO / ".venv" / "bin"


def test_the_three_units_are_there() -> None:
    assert [p.name for p in UNIT_FILES] == ["gearsync-binlog@.service", "gearsync-relay@.service", "gearsync-worker@.service"]


@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: p.name)
def test_restart_settings(path: Path) -> None:
    unit = read_unit(path)
    service = unit["Service"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]          # exit 3 (unreachable) is restarted
    assert float(service["RestartSec"][0]) > 0
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]        # no start limit that gives up
    assert "RestartSteps" not in service and "RestartMaxDelaySec" not in service   # not in systemd 252
    command = service["ExecStart"][0]
    assert "--startup-wait" in command and "--log-format json" in command
    after = unit["Unit"]["After"][0].split()
    needs = {"worker": {"gearman-job-server.service", "redis-server.service"},
             "relay": {"mariadb.service", "gearman-job-server.service"},
             "binlog": {"mariadb.service", "redis-server.service"}}[path.name.split("-")[1].split("@")[0]]
    assert needs <= set(after), after


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: p.name)
def test_systemd_analyze_verify(path: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point /opt/gearsync/bin at this checkout's venv.
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace("/opt/gearsync/bin/", f"{BIN}/"))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / path.name.replace("@", "@x"))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_binlog_recovery_comment_is_the_readme_recipe() -> None:
    readme = " ".join(REPO.joinpath("README.md").read_text().split())
    comment = " ".join(line.lstrip("# ") for line in (UNITS / "gearsync-binlog@.service").read_text().splitlines()
                       if line.startswith("#"))
    comment = " ".join(comment.split())
    recipe = re.search(r"re-seed the key space with `(sync-snapshot [^`]+)`", readme)
    assert recipe, "README lost its purged-position recipe"
    assert recipe.group(1) in comment
    assert "every change after P wins, and saves P as the stream's position" in readme
    assert "every change after P wins, and saves P as the stream's position" in comment
    assert "(no --start)" in comment and "--start current alone" in comment
