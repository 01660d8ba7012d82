"""The C driver (udf/tests/udf_driver.c) calls every UDF entry point with fabricated UDF_ARGS —
NULLs, wrong types, huge lengths, invalid UTF-8, gearmand up, down and misbehaving — plain,
under valgrind memcheck, which must report no error and no leak, and under ThreadSanitizer (the
callers' threads, the keeper thread and the shared state), which must report no race."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UDF = Path(__file__).resolve().parents[2] / "udf"


def test_driver_checks_pass() -> None:
    r = subprocess.run(["make", "-s", "-C", str(UDF), "test"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert re.search(r"udf_driver: [1-9]\d* checks, 0 failures", r.stdout + r.stderr)


def _need(tool: str) -> None:
    """A tool .ci/run installs: missing under CI is a failure (it must not pass as a skip)."""
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} missing under CI: .ci/run installs it")
        pytest.skip(f"{tool} not installed (.ci/run installs it)")


def test_driver_is_clean_under_valgrind() -> None:
    _need("valgrind")
    r = subprocess.run(["make", "-s", "-C", str(UDF), "valgrind"], capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "ERROR SUMMARY: 0 errors" in out, out[-4000:]
    assert re.search(r"udf_driver: [1-9]\d* checks, 0 failures", out), out[-4000:]  # the driver ran its checks
    assert "definitely lost" not in out or re.search(r"definitely lost: 0 bytes", out), out[-4000:]


def test_driver_is_race_free_under_threadsanitizer() -> None:
    _need("clang")
    r = subprocess.run(["make", "-s", "-C", str(UDF), "test-tsan"], capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "ThreadSanitizer" not in out, out[-4000:]
    assert re.search(r"udf_driver: [1-9]\d* checks, 0 failures", out), out[-4000:]
