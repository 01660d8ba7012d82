"""The UDF library under libFuzzer (ASan + UBSan): build, replay every kept input, fuzz each target briefly.

Targets (udf/fuzz/): fuzz_json drives gman_json_object/gman_json_array _init/row/_deinit with
fabricated UDF_ARGS (every Item_result type, NULLs, aliases of any bytes, several rows) and checks
that each result is valid JSON; fuzz_servers drives the server-list and option parsers and
gman_servers_set, checking that the canonical list parses back to the same servers; fuzz_proto
feeds a byte stream of responses to the Gearman packet parsers (udf/gman_proto.c: header, ERROR
text, JOB_CREATED handle, WORK_* body) and round-trips encoded request heads; fuzz_sign feeds key
file bytes to the key parser (udf/gman_sign.c) and signs with what it accepts (header format,
SHA-256 in pieces = at once).

`make fuzz-udf` runs the same for longer (FUZZ_SECONDS). A crash input lands in udf/fuzz/build/;
keep it under udf/fuzz/regressions/<target>/ and this test replays it from then on.
GEARSYNC_FUZZ_SECONDS sets the time per target here (default 20).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .report import record

FUZZ = Path(__file__).resolve().parents[2] / "udf" / "fuzz"
TARGETS = ("json", "servers", "proto", "sign")
SECONDS = int(os.environ.get("GEARSYNC_FUZZ_SECONDS", "20"))


def _clang() -> str | None:
    return shutil.which("clang")


@pytest.fixture(scope="module")
def built() -> Path:
    if _clang() is None:
        reason = "clang not installed (apt-get install clang libclang-rt-14-dev; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs it: a missing fuzzer there must not pass as a skip
        pytest.skip(reason)
    r = subprocess.run(["make", "-s", "-C", str(FUZZ), "all"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return FUZZ / "build"


def _inputs() -> list[str]:
    return sorted(f"{p.parent.name}/{p.name}" for t in TARGETS for p in (FUZZ / "regressions" / t).glob("*")
                  if p.is_file() and not p.name.startswith("."))


@pytest.mark.parametrize("name", _inputs())
def test_replay_kept_input(built: Path, name: str) -> None:
    target, _ = name.split("/", 1)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1"}
    r = subprocess.run([str(built / f"fuzz_{target}"), str(FUZZ / "regressions" / name)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_briefly(built: Path, target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    # git keeps no empty directory: pass only the seed directories this checkout has
    seeds = [str(d) for d in (FUZZ / "corpus" / target, FUZZ / "regressions" / target) if d.is_dir()]
    r = subprocess.run(
        [str(built / f"fuzz_{target}"), "-max_len=8192", "-timeout=10", "-rss_limit_mb=2048",
         f"-max_total_time={SECONDS}", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/crash-",
         str(corpus), *seeds],
        capture_output=True, text=True, timeout=SECONDS + 120, env=env,
    )
    crashes = sorted(tmp_path.glob("crash-*"))
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", r.stderr))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", r.stderr)
    record(f"UDF libFuzzer: fuzz_{target}", kind="fuzz", written=int(stats.get("number_of_executed_units", 0)),
           lost=len(crashes), differences=len(crashes), seconds=SECONDS,
           execs_per_s=int(stats.get("average_exec_per_sec", 0)), coverage_edges=int(cov[-1][0]) if cov else 0,
           features=int(cov[-1][1]) if cov else 0, peak_rss_mb=int(stats.get("peak_rss_mb", 0)))
    if crashes:
        keep = FUZZ / "build" / crashes[0].name
        shutil.copy(crashes[0], keep)
        pytest.fail(f"fuzz_{target} crashed; input kept at {keep} (copy it into udf/fuzz/regressions/{target}/):\n"
                    + r.stderr[-4000:])
    assert r.returncode == 0, r.stderr[-4000:]
    assert int(stats.get("number_of_executed_units", 0)) > 0, r.stderr[-4000:]  # it fuzzed, not just started
    assert int(stats.get("number_of_executed_units", 0)) > 0, "the fuzzer ran no input:\n" + r.stderr[-4000:]
