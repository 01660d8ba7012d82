"""The binlog row decoder (sync/capture/binlog/_rowdecode.c) and the dump connection's event loop
(_binloop.c) under libFuzzer with ASan + UBSan, in an embedded CPython (fuzz/rowdecode/): every kept
input replayed, then a short fuzzing run, per target. fuzz_rowdecode: an input is a table layout
(column types and metadata) and a rows-event body; the target aborts on a memory error, undefined
behaviour, a hang, a result that is not canonical values, or an error other than DecodeError.
fuzz_binloop: an input is the bytes of a dump connection fed in reads of varying sizes; it aborts
on a memory error, undefined behaviour, a hang, an exception, or an item after the end.
`make fuzz-rowdecode` runs longer (FUZZ_SECONDS). GEARSYNC_FUZZ_SECONDS: time here (20).
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


TARGETS = {"fuzz_rowdecode": ("corpus", "regressions"), "fuzz_binloop": ("corpus-binloop", "regressions-binloop")}


@pytest.fixture(scope="module")
def built() -> Path:
    if shutil.which("clang") is None:
        why = "clang not installed (apt-get install clang libclang-rt-14-dev; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    r = subprocess.run(["make", "-s", "-C", str(FUZZ), "all", f"PYTHON={sys.executable}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return FUZZ / "build"


@pytest.fixture(params=sorted(TARGETS))
def target(request: pytest.FixtureRequest, built: Path) -> Path:
    return built / request.param


def test_kept_inputs_replay_clean(target: Path) -> None:
    corpus, regressions = TARGETS[target.name]
    kept = sorted(p for d in (regressions, corpus) for p in (FUZZ / d).glob("*") if p.is_file() and p.name[0] != ".")
    assert kept, f"no kept inputs under fuzz/rowdecode/{corpus}"
    r = subprocess.run([str(target), *map(str, kept)], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"Executed {kept[-1]}" in r.stderr, r.stderr[-2000:]


def test_fuzz_briefly(target: Path, tmp_path: Path) -> None:
    corpus, regressions = TARGETS[target.name]
    work = tmp_path / "corpus"
    work.mkdir()
    r = subprocess.run(
        [str(target), "-max_len=4096", "-timeout=10", "-rss_limit_mb=2048", f"-max_total_time={SECONDS}",
         "-print_final_stats=1", f"-artifact_prefix={tmp_path}/crash-", str(work),
         str(FUZZ / corpus), str(FUZZ / regressions)],
        capture_output=True, text=True, timeout=SECONDS + 120, env=ENV,
    )
    crashes = sorted(tmp_path.glob("crash-*"))
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", r.stderr))
    units = int(stats.get("number_of_executed_units", 0))
    what = "binlog row decoder" if target.name == "fuzz_rowdecode" else "binlog event loop"
    record(f"{what} libFuzzer", kind="fuzz", written=units, lost=len(crashes),
           differences=len(crashes), seconds=SECONDS, execs_per_s=int(stats.get("average_exec_per_sec", 0)))
    kept = [shutil.copy(c, FUZZ / "build" / c.name) for c in crashes]
    assert not kept, f"{target.name} failed on {kept[0]} (copy it into fuzz/rowdecode/{regressions}/):\n{r.stderr[-4000:]}"
    assert r.returncode == 0, r.stderr[-4000:]
    assert units > 0, "the fuzzer ran no input:\n" + r.stderr[-4000:]
