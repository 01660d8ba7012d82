"""The C driver (udf/tests/udf_driver.c) calls every UDF entry point with fabricated UDF_ARGS —
NULLs, wrong types, huge lengths, invalid UTF-8, gearmand up, down and misbehaving — plain and
under valgrind memcheck, which must report no error and no leak."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UDF = Path(__file__).resolve().parents[2] / "udf"


def test_driver_checks_pass() -> None:
    r = subprocess.run(["make", "-s", "-C", str(UDF), "test"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert re.search(r"udf_driver: \d+ checks, 0 failures", r.stdout + r.stderr)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed (.ci/run installs it)")
def test_driver_is_clean_under_valgrind() -> None:
    r = subprocess.run(["make", "-s", "-C", str(UDF), "valgrind"], capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "ERROR SUMMARY: 0 errors" in out, out[-4000:]
    assert "definitely lost" not in out or re.search(r"definitely lost: 0 bytes", out), out[-4000:]
