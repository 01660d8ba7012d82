"""The binlog row decoder (sync/capture/binlog/_rowdecode.c) under libFuzzer with ASan + UBSan, in an
embedded CPython (fuzz/rowdecode/): every kept input replayed, then a short fuzzing run. An input is
a table layout (column types and metadata) and a rows-event body; the target aborts on a memory
error, undefined behaviour, a hang, a result that is not canonical values, or an error other than
DecodeError. `make fuzz-rowdecode` runs longer (FUZZ_SECONDS). GEARSYNC_FUZZ_SECONDS: time here (20).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .report import record

FUZZ = Path(__file__).resolve().parents[2] / "fuzz" / "rowdecode"
SECONDS = int(os.environ.get("GEARSYNC_FUZZ_SECONDS", "20"))
ENV = {**os.environ, "PYTHONMALLOC": "malloc", "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
       "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


@pytest.fixture(scope="module")
def target() -> Path:
    if shutil.which("clang") is None:
        why = "clang not installed (apt-get install clang libclang-rt-14-dev; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    r = subprocess.run(["make", "-s", "-C", str(FUZZ), "all", f"PYTHON={sys.executable}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return FUZZ / "build" / "fuzz_rowdecode"


def test_kept_inputs_replay_clean(target: Path) -> None:
    kept = sorted(p for d in ("regressions", "corpus") for p in (FUZZ / d).glob("*") if p.is_file())
    assert kept, "no kept inputs under fuzz/rowdecode/"
    r = subprocess.run([str(target), *map(str, kept)], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"Executed {kept[-1]}" in r.stderr, r.stderr[-2000:]


def test_fuzz_briefly(target: Path, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    r = subprocess.run(
        [str(target), "-max_len=4096", "-timeout=10", "-rss_limit_mb=2048", f"-max_total_time={SECONDS}",
         "-print_final_stats=1", f"-artifact_prefix={tmp_path}/crash-", str(work),
         str(FUZZ / "corpus"), str(FUZZ / "regressions")],
        capture_output=True, text=True, timeout=SECONDS + 120, env=ENV,
    )
    crashes = sorted(tmp_path.glob("crash-*"))
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", r.stderr))
    units = int(stats.get("number_of_executed_units", 0))
    record("binlog row decoder libFuzzer", kind="fuzz", written=units, lost=len(crashes),
           differences=len(crashes), seconds=SECONDS, execs_per_s=int(stats.get("average_exec_per_sec", 0)))
    kept = [shutil.copy(c, FUZZ / "build" / c.name) for c in crashes]
    assert not kept, f"fuzz_rowdecode failed on {kept[0]} (copy it into fuzz/rowdecode/regressions/):\n{r.stderr[-4000:]}"
    assert r.returncode == 0, r.stderr[-4000:]
    assert units > 0, "the fuzzer ran no input:\n" + r.stderr[-4000:]
