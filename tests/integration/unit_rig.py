"""The systemd units of deploy/systemd read as systemd reads them (the parts gearsync uses), and a tiny
supervisor that runs a unit's ExecStart= the way systemd 252 would for Restart=on-failure.

No systemd as PID 1 on the test machines: this is the stand-in. It implements, from the unit file:
  ExecStart=                  %i and $VAR / ${VAR} from EnvironmentFile= (here: a file the test writes)
  Restart=on-failure          restart after a non-zero exit or a kill by a signal other than a clean
                              one (SIGHUP, SIGINT, SIGTERM, SIGPIPE)
  RestartPreventExitStatus=   these exit codes are never restarted
  RestartSec=                 the pause before a restart ("5", "5s", "500ms", "1min")
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.events import ChangeEvent, Op, Source, encode_change
from sync.gearman import GearmanClient
from sync.testing.servers import GearmanServer

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} before any [section]"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(text: str) -> float:
    """A systemd time span: "5", "5s", "500ms", "1min", "1min 30s"."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "min": 60.0, "m": 60.0, "h": 3600.0}
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*([a-z]*)", text):
        total += float(number) * units[unit]
    return total


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
    return env


def exec_start(unit: dict[str, dict[str, list[str]]], instance: str, env: dict[str, str]) -> list[str]:
    """ExecStart= as argv: %i replaced; a word `$VAR` split on whitespace, `${VAR}` kept as one word
    (systemd.service(5), "Command lines"); an unset variable is empty."""
    (line,) = unit["Service"]["ExecStart"]
    argv: list[str] = []
    for word in shlex.split(line.replace("%i", instance)):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            argv += env.get(whole.group(1), "").split()
        else:
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return argv


@dataclass
class Supervisor:
    """Runs a unit's ExecStart= in a thread until it ends for good or stop() is called."""

    unit_path: Path
    instance: str
    env: dict[str, str]
    bin_dir: Path                      # stands for /opt/gearsync/bin
    log: Path
    exits: list[int] = field(default_factory=list)   # each run's exit code (-N: killed by signal N)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _proc: subprocess.Popen[bytes] | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        unit = read_unit(self.unit_path)
        service = unit["Service"]
        assert service.get("Restart") == ["on-failure"], service.get("Restart")
        self.restart_sec = seconds(service.get("RestartSec", ["0.1"])[-1])
        self.prevent = {int(c) for v in service.get("RestartPreventExitStatus", []) for c in v.split()}
        argv = exec_start(unit, self.instance, self.env)
        assert argv[0].startswith("/opt/gearsync/bin/"), argv
        self.argv = [str(self.bin_dir / Path(argv[0]).name), *argv[1:]]

    def should_restart(self, code: int) -> bool:
        if code == 0 or code in self.prevent:
            return False
        return not (code < 0 and signal.Signals(-code) in CLEAN_SIGNALS)

    def _run(self) -> None:
        with self.log.open("ab") as out:
            while True:
                with self._lock:  # stop() either sees this process or stops the loop before it
                    if self._stop.is_set():
                        return
                    proc = self._proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                                         env={**self._base_env(), **self.env})
                code = proc.wait()
                self.exits.append(code)
                if self._stop.is_set() or not self.should_restart(code):
                    return
                self._stop.wait(self.restart_sec)

    @staticmethod
    def _base_env() -> dict[str, str]:
        # systemd gives a service a clean environment; keep only what finding binaries needs.
        return {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name=f"supervisor-{self.instance}", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        """systemctl stop: SIGTERM (KillSignal=), then SIGKILL after the timeout."""
        with self._lock:
            self._stop.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._thread is not None:
            self._thread.join(timeout_s)


def submit_insert(g: GearmanServer, table: str, row: dict[str, Any], version: int = 1) -> None:
    """One insert change of `row` (primary key `id`) for gearsync.<table>, as the triggers send it:
    the job a worker brought up by a test must apply."""
    payload = encode_change(ChangeEvent(table, Op("insert"), (("id", row["id"]),), row, version, Source.TRIGGER))

    async def go() -> None:
        async with GearmanClient([(g.host, g.port)]) as client:
            await client.submit_background_many(f"gearsync.{table}", [payload])

    asyncio.run(go())
