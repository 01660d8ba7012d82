"""`make demo`: the whole gearsync pipeline on this machine, under a live display, then verified.

    python -m sync.demo [--rows 10000] [--workers 2] [--rate 300] [--seconds 20] [--state-dir .state/demo]
    python -m sync.demo --classic        # the classic recipe: one UPDATE trigger, SET <id> <payload>
    python -m sync.demo --ci             # no live display, a small load; exit 0 only when all is well
    python -m sync.demo --stop           # stop a demo left running (make demo-stop)

What a run does, in order (each step prints the command a user would type):

1. Bootstrap, with the standard library only (so the system python3 can run it): the missing Debian
   packages are installed with apt-get (as root, or through sudo; otherwise it says what to install),
   `make venv` runs when .venv is missing, and the demo re-executes itself with .venv/bin/python.
2. The state dir (default .state/demo) is reset: a demo left running there is stopped, the old data
   removed. Every run starts from empty servers.
3. Throwaway MariaDB (ROW binlog, full metadata), Redis and gearmand (its queue in that MariaDB, `-q
   mysql`) on free loopback ports (or --mysql-port/--redis-port/--gearman-port), all under the state
   dir; the UDF library is built and installed with the state dir as plugin dir, its
   gearsync_udf.conf pointing at the demo's gearmand.
4. Database `demo`, table `data` with --rows rows, `sync-triggers install`, --workers `sync-worker`
   processes, `sync-relay`, `sync-snapshot` (the rows that existed before the triggers), and
   `sync-binlog --sink redis` writing the same table under another key template (binlog:{table}:{pk}):
   binlog versions come from the commit position and trigger versions from UUID_SHORT(), so the two
   sources must never write the same keys.
   The trigger path also keeps one zset index (volume) and the change stream (docs/shaping.md:
   <state dir>/shaping.toml, read by its sync-worker, sync-snapshot and sync-verify), shown after the
   verify with the redis-cli commands that read them.
5. A write load (--rate changes/s for --seconds: 25 % INSERT, 60 % UPDATE, 15 % DELETE, each its own
   transaction) while a live display shows changes written and synced per path, lag, gearmand queue
   depth and spool size. Lag is measured with a heartbeat row (id 0) that the load updates every tick
   with the number of changes committed so far: when Redis shows heartbeat n, the changes up to n
   have reached it.
6. Drain, then `sync-verify` for both key templates, a summary table, and everything stopped:
   clients first (SIGTERM to each process group, then SIGKILL after a grace period), then gearmand,
   Redis, MariaDB. Ctrl-C (or SIGTERM, or `make demo-stop`) at any point runs the same shutdown.

Pid files of everything started are kept in <state dir>/pids while it runs, so `--stop` finds a demo
whose terminal went away. The run's results go to <state dir>/summary.json.

Exit codes: 0 Redis equal to MySQL for both paths and every process stopped, 1 differences or a
process left running, 2 bad option or missing prerequisites, 3 a server or step failed, 130
interrupted.

This module holds the parser and the run's orchestration (run_demo, main); the steps' pieces are in
bootstrap (packages, venv, re-exec), processes (pid files, Stack), load (table, write load) and
display (monitor, live view, summary), all built on common.
"""

from __future__ import annotations

# Only the standard library at module level (here and in the modules below): the bootstrap runs under
# the system python3, before the venv (with pymysql, redis, rich, ...) exists.
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sync.demo.bootstrap import bootstrap, in_venv, missing_packages, venv_is_ready
from sync.demo.common import (
    BINLOG_TEMPLATE,
    CLASSIC_FUNCTION,
    DATABASE,
    DEFAULT_STATE_DIR,
    EXIT_DIFF,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    HEARTBEAT_ID,
    REPO,
    T0_ENV,
    TABLE,
    TRIGGER_TEMPLATE,
    VENV,
    DemoError,
    rel,
    say,
    start_clock,
    step,
)
from sync.demo.display import PATH_TITLES, Monitor, plain_line, print_summary, render_live, table_row_state
from sync.demo.load import Load, create_table, run_load_only
from sync.demo.processes import PidFile, Stack, alive, choose_ports, reset_state_dir, stop_left_running, tail


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sync.demo",
        description="""\
Run the whole gearsync pipeline on throwaway servers, watch it, verify it, stop it (make demo).

Installs what is missing (apt-get as root or with sudo; make venv), starts MariaDB, Redis and
gearmand (queue in MariaDB) on free loopback ports under --state-dir, installs the UDF library,
creates demo.data with --rows rows and the capture triggers, starts sync-worker, sync-relay,
sync-snapshot and sync-binlog (into binlog:{table}:{pk}, apart from the triggers' {table}:{pk}),
runs a write load under a live display, then sync-verify for both key templates, a summary, and
stops everything. Ctrl-C stops everything at any point.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
The state dir is reset on every run: a demo left running there is stopped first, then its data
removed. make demo DEMO_ARGS='...' passes options; make demo-stop is --stop.

exit codes: 0 Redis equal to MySQL and every process stopped, 1 differences or a process left
running, 2 bad option or missing prerequisites, 3 a server or step failed, 130 interrupted.""",
    )
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help="servers' data, logs and pid files (default .state/demo; reset on every run)")
    p.add_argument("--rows", type=int, metavar="N", help="rows in the table before the load (default 10000; --ci 1000)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="sync-worker processes (default 2; --classic 1: its unversioned SETs from two workers can "
                        "land out of order)")
    p.add_argument("--rate", type=float, metavar="N", help="changes per second of the write load (default 300; --ci 100)")
    p.add_argument("--seconds", type=float, metavar="S", help="how long the load runs (default 20; --ci 5)")
    p.add_argument("--mysql-port", type=int, default=0, metavar="PORT", help="MariaDB port (default: a free one)")
    p.add_argument("--redis-port", type=int, default=0, metavar="PORT", help="Redis port (default: a free one)")
    p.add_argument("--gearman-port", type=int, default=0, metavar="PORT", help="gearmand port (default: a free one)")
    p.add_argument("--classic", action="store_true",
                   help="the classic recipe instead: one AFTER UPDATE trigger datatoredis, sync-worker --classic, "
                        "SET <id> <payload> in Redis (make demo-classic)")
    p.add_argument("--no-binlog", action="store_true", help="leave out the sync-binlog path")
    p.add_argument("--ci", action="store_true",
                   help="no live display, a small load; exit 0 only if verify is clean and every process stopped")
    p.add_argument("--keep-running", action="store_true",
                   help="after the summary leave servers and workers running (stop them with make demo-stop)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the load's random choices")
    p.add_argument("--no-install", action="store_true",
                   help="do not install packages or create the venv; fail if something is missing")
    p.add_argument("--stop", action="store_true", help="stop a demo left running in --state-dir, then exit")
    p.add_argument("--load-only", action="store_true",
                   help="only run the write load against an existing demo table (--mysql-url / GEARSYNC_MYSQL_URL, "
                        "GEARSYNC_MYSQL_PASSWORD; an empty table gets --rows rows first): the docker compose load job")
    p.add_argument("--mysql-url", metavar="URL", help="--load-only: mysql://user@host:port/db (env GEARSYNC_MYSQL_URL)")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    small = args.ci
    args.workers = args.workers if args.workers is not None else (1 if args.classic else 2)
    args.rows = args.rows if args.rows is not None else (1000 if small else 10000)
    args.rate = args.rate if args.rate is not None else (100.0 if small else 300.0)
    args.seconds = args.seconds if args.seconds is not None else (5.0 if small else 20.0)
    for name, value, lo, hi in (("--rows", args.rows, 0, 10_000_000), ("--workers", args.workers, 1, 32),
                                ("--rate", args.rate, 1, 20_000), ("--seconds", args.seconds, 0, 86_400)):
        if not lo <= value <= hi:
            p.error(f"{name}: {value:g}; expected {lo} to {hi}")
    for name in ("mysql_port", "redis_port", "gearman_port"):
        port = getattr(args, name)
        if port and not 1024 <= port <= 65535:
            p.error(f"--{name.replace('_', '-')}: {port}; expected 1024 to 65535 (or 0 for a free port)")
    if args.mysql_url and not args.load_only:
        p.error("--mysql-url: only with --load-only (the demo starts its own MariaDB)")
    args.state_dir = args.state_dir.resolve()
    return args


def build_udf(stack: Stack) -> None:
    step("building and installing the UDF library (make build-udf, make install-udf)")
    say("    $ make build-udf")
    result = subprocess.run(["make", "-s", "-C", str(REPO / "udf")], capture_output=True, text=True)
    if result.returncode != 0:
        raise DemoError(f"make build-udf failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    env_url = f"mysql://root@127.0.0.1:{stack.mariadb.port}/"
    say(f"    $ GEARSYNC_MYSQL_URL={env_url} make install-udf")
    argv = [sys.executable, "-m", "sync.capture.udf_install", "install", "--library", str(REPO / "udf" / "build" / "gearsync_udf.so")]
    log = stack.log_dir / "udf-install.log"
    with open(log, "ab") as fh:
        result2 = subprocess.run(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                 env={**stack.env(), "GEARSYNC_MYSQL_URL": env_url})
    if result2.returncode != 0:
        raise DemoError(f"installing the UDF library failed (exit {result2.returncode}); log {log}:\n{tail(log)}")


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, stack: Stack) -> float:
    start = time.monotonic()
    while not check():
        stack.check_children()
        if time.monotonic() - start > timeout_s:
            raise DemoError(f"timed out after {timeout_s:g} s waiting for {what}; logs in {stack.log_dir}")
        time.sleep(0.1)
    return time.monotonic() - start


# The trigger path's shaping (docs/shaping.md): one index and the change stream. The binlog path
# writes its own row keys and no indexes (both would add members to the same index keys).
SHAPING_CONFIG = """# make demo: the trigger path's [tables.data] shaping (docs/shaping.md)
[tables.data]
[[tables.data.indexes]]
type = "zset"
column = "volume"
key = "demo:{table}:by:{column}"
[tables.data.stream]
maxlen = 10000
key = "demo:{table}:changes"
"""
ZSET_KEY, STREAM_KEY = f"demo:{TABLE}:by:volume", f"demo:{TABLE}:changes"


def shaping_config(stack: Stack) -> str:
    path = stack.state_dir / "shaping.toml"
    if not path.exists():
        path.write_text(SHAPING_CONFIG)
        path.chmod(0o600)
    return str(path)


def show_shaping(stack: Stack) -> dict[str, Any]:
    """The index and the stream the trigger path kept, as a user reads them with redis-cli."""
    r = stack.redis.client()
    try:
        top = [(k.decode(), s) for k, s in r.zrange(ZSET_KEY, 0, 2, desc=True, withscores=True)]
        last = r.xrevrange(STREAM_KEY, count=1)
        out = {"zset": ZSET_KEY, "zcard": r.zcard(ZSET_KEY), "top": top, "stream": STREAM_KEY, "xlen": r.xlen(STREAM_KEY),
               "last": {k.decode(): v.decode() for k, v in last[0][1].items()} if last else None}
    finally:
        r.close()
    step(f"the index and the change stream of the trigger path ({rel(stack.state_dir / 'shaping.toml')})")
    say(f"    $ redis-cli ZRANGE {ZSET_KEY} 0 2 REV WITHSCORES   # {out['zcard']} rows by volume, the highest:")
    for k, score in top:
        say(f"      {k}  {score:g}")
    say(f"    $ redis-cli XLEN {STREAM_KEY}   # {out['xlen']} changes (MAXLEN ~ 10000); the last one:")
    if out["last"]:
        say("      " + "  ".join(f"{k}={v[:60]}" for k, v in out["last"].items()))
    return out


def start_pipeline(stack: Stack, args: argparse.Namespace) -> dict[str, str]:
    """Triggers, workers, relay, snapshot and binlog (or the classic pieces). Returns path name -> heartbeat key."""
    from sync.keys import row_key

    c = stack.command
    g, r, m = stack.gearman_servers, stack.redis_url, stack.mysql_url
    common_log = ["--log-format", "json", "--stats-interval", "5"]
    if args.classic:
        step("the classic recipe: sql/classic-trigger.sql (AFTER UPDATE trigger datatoredis)")
        client = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
        argv = [client, "--protocol=TCP", "-h127.0.0.1", f"-P{stack.mariadb.port}", "-uroot", DATABASE]
        say(f"    $ {os.path.basename(client)} {DATABASE} < sql/classic-trigger.sql")
        with open(REPO / "sql" / "classic-trigger.sql", "rb") as sql:
            result = subprocess.run(argv, stdin=sql, capture_output=True, env=stack.env())
        if result.returncode != 0:
            raise DemoError(f"applying sql/classic-trigger.sql failed: {result.stderr.decode(errors='replace')}")
        step(f"starting {args.workers} sync-worker --classic")
        for i in range(args.workers):
            stack.spawn(f"worker-{i + 1}", c("sync-worker", "--classic", "--servers", g, "--redis-url", r, *common_log))
        return {"classic": row_key("{pk}", TABLE, [("id", HEARTBEAT_ID)])}

    step("capture triggers: sync-triggers install (udf mode, spool when gearmand does not answer)")
    stack.run("sync-triggers", c("sync-triggers", "install", "--table", TABLE, "--mysql-url", m))
    step(f"starting {args.workers} sync-worker and sync-relay")
    for i in range(args.workers):
        stack.spawn(f"worker-{i + 1}", c("sync-worker", "--table", TABLE, "--servers", g, "--redis-url", r,
                                         "--config", shaping_config(stack), *common_log))
    stack.spawn("relay", c("sync-relay", "--database", DATABASE, "--mysql-url", m, "--servers", g, *common_log))
    step("copying the rows that predate the triggers: sync-snapshot")
    stack.run("snapshot", c("sync-snapshot", "--table", TABLE, "--mysql-url", m, "--redis-url", r,
                            "--config", shaping_config(stack), "--progress", "log", "--log-format", "json"))
    paths = {"trigger": row_key(TRIGGER_TEMPLATE, TABLE, [("id", HEARTBEAT_ID)])}
    if not args.no_binlog:
        step(f"binlog source into its own keys ({BINLOG_TEMPLATE}): sync-binlog --sink redis --start earliest")
        stack.spawn("binlog", c("sync-binlog", "--table", TABLE, "--sink", "redis", "--key-template", BINLOG_TEMPLATE,
                                "--start", "earliest", "--mysql-url", m, "--redis-url", r, *common_log))
        paths["binlog"] = row_key(BINLOG_TEMPLATE, TABLE, [("id", HEARTBEAT_ID)])
    return paths


def wait_ready(stack: Stack, args: argparse.Namespace, paths: dict[str, str]) -> None:
    """Before the load: every path shows the heartbeat row, every worker is registered in gearmand."""
    import asyncio

    from sync.gearman import admin

    function = CLASSIC_FUNCTION if args.classic else f"gearsync.{TABLE}"
    step(f"waiting until {args.workers} worker(s) are registered for {function}"
         + (" and the binlog source has caught up" if "binlog" in paths else ""))
    r = stack.redis.client()

    def ready() -> bool:
        if args.classic:
            # the classic trigger sends UPDATEs only: touch the heartbeat row until it shows
            stack.mariadb.execute(f"UPDATE {TABLE} SET volume = 0, updated_at = NOW(6) WHERE id = {HEARTBEAT_ID}",
                                  database=DATABASE)
        if not all(r.exists(key) for key in paths.values()):
            return False
        rows = asyncio.run(admin.status(stack.gearmand.host, stack.gearmand.port, timeout_s=3))
        return any(row.name == function and row.workers >= args.workers for row in rows)

    try:
        wait_for("the pipeline to be ready", ready, 120, stack)
    finally:
        r.close()


def run_load(stack: Stack, args: argparse.Namespace, paths: dict[str, str]) -> tuple[Load, Monitor, float]:
    """The write load under the live display; returns when it is done and Redis has caught up."""
    load = Load(lambda: stack.mariadb.connect(DATABASE), rate=args.rate, seconds=args.seconds,
                live_ids=list(range(1, args.rows + 1)), classic=args.classic, seed=args.seed)
    monitor = Monitor(stack, load, paths, function=CLASSIC_FUNCTION if args.classic else f"gearsync.{TABLE}")
    monitor.start()
    step(f"write load: {args.rate:g} changes/s for {args.seconds:g} s"
         + (" (UPDATEs only: the classic trigger)" if args.classic else " (25% INSERT, 60% UPDATE, 15% DELETE)"))
    load.start()
    tty = sys.stdout.isatty() and not args.ci

    def caught_up() -> bool:
        final = len(load.beats)
        return (not load.is_alive() and final > 0
                and all(p.beat is not None and p.beat >= final for p in monitor.view.paths.values())
                and table_row_state(monitor.view).get("queued", 1) == 0)

    drain_start = None
    deadline_after_load = 120.0

    def loop(tick: Callable[[], None]) -> None:
        nonlocal drain_start
        while True:
            if load.error is not None:
                raise DemoError(f"the write load failed: {load.error!r}")
            stack.check_children()
            if not load.is_alive():
                drain_start = drain_start or time.monotonic()
                if caught_up() and monitor.view.updated > (load.finished_at or 0):
                    tick()
                    return
                if time.monotonic() - drain_start > deadline_after_load:
                    raise DemoError(f"Redis did not catch up within {deadline_after_load:g} s after the load; "
                                    f"logs in {stack.log_dir}")
            tick()
            time.sleep(0.25)

    try:
        if tty:
            from rich.live import Live

            with Live(render_live(monitor.view, load, args, PATH_TITLES), refresh_per_second=4, transient=False) as live:
                loop(lambda: live.update(render_live(monitor.view, load, args, PATH_TITLES)))
        else:
            last = [0.0]

            def tick() -> None:
                if time.monotonic() - last[0] >= 1.0:
                    last[0] = time.monotonic()
                    say("    " + plain_line(monitor.view, load))

            loop(tick)
    finally:
        load.stop_event.set()
        load.join(timeout=10)
    drain_s = time.monotonic() - (drain_start or time.monotonic())
    return load, monitor, drain_s


def verify(stack: Stack, args: argparse.Namespace, paths: dict[str, str], load: Load) -> dict[str, dict[str, Any]]:
    c = stack.command
    results: dict[str, dict[str, Any]] = {}
    if args.classic:
        step("checking the classic keys: GET <id> for every updated row equals the row's {id, volume}")
        results["classic"] = check_classic(stack, load)
        return results
    step("verifying Redis against MySQL: sync-verify, once per key template")
    for name, template in (("trigger", TRIGGER_TEMPLATE), ("binlog", BINLOG_TEMPLATE)):
        if name not in paths:
            continue
        argv = c("sync-verify", "--table", TABLE, "--key-template", template, "--mysql-url", stack.mysql_url,
                 "--redis-url", stack.redis_url, "--json", "--progress", "log",
                 *(["--config", shaping_config(stack)] if name == "trigger" else []))
        done = stack.run(f"verify-{name}", argv, ok=(0, 1), capture=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        report["exit_code"] = done.returncode
        results[name] = report
    return results


def check_classic(stack: Stack, load: Load) -> dict[str, Any]:
    """The classic recipe has no verify (bare ids, no versions): compare the updated rows directly."""
    conn = stack.mariadb.connect(DATABASE)
    r = stack.redis.client()
    start = time.monotonic()
    try:
        ids = sorted(load.touched | {HEARTBEAT_ID})
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, volume FROM {TABLE}")
            rows = dict(cur.fetchall())
        different = 0
        examples: list[str] = []
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            for pk, raw in zip(chunk, r.mget([str(pk) for pk in chunk])):
                want = {"id": pk, "volume": rows[pk]}
                got = json.loads(raw) if raw is not None else None
                if got != want:
                    different += 1
                    if len(examples) < 5:
                        examples.append(f"{pk}: redis {raw!r}, mysql {want}")
        sample = [(pk, r.get(str(pk))) for pk in ids[1:4]]
    finally:
        conn.close()
        r.close()
    return {"equal": different == 0, "rows": len(ids), "missing": 0, "different": different, "extra": 0,
            "examples": {"different": examples}, "seconds": round(time.monotonic() - start, 3),
            "sample": [f"SET {pk} {v.decode() if v else None}" for pk, v in sample], "exit_code": 0 if not different else 1}


def run_demo(args: argparse.Namespace) -> int:
    t0_wall = float(os.environ.get(T0_ENV) or time.time())
    t0 = time.monotonic() - (time.time() - t0_wall)
    state_dir: Path = args.state_dir
    reset_state_dir(state_dir)
    PidFile.write(state_dir / "pids", "demo", os.getpid())
    stack = Stack(state_dir, choose_ports(args), Path(sys.executable).parent)
    summary: dict[str, Any] = {"state_dir": str(state_dir), "mode": "classic" if args.classic else "gearsync",
                               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    stopping = {"flag": False}

    def on_signal(signum: int, _frame: Any) -> None:
        if stopping["flag"]:
            say(f"(signal {signum}: already stopping, please wait)")
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = EXIT_FAILED
    load: Load | None = None
    monitor: Monitor | None = None
    try:
        stack.start_servers()
        summary["ports"] = {"mysql": stack.mariadb.port, "redis": stack.redis.port, "gearmand": stack.gearmand.port}
        build_udf(stack)
        create_table(stack, args.rows)
        paths = start_pipeline(stack, args)
        wait_ready(stack, args, paths)
        setup_s = time.monotonic() - t0
        load, monitor, drain_s = run_load(stack, args, paths)
        load_s = (load.finished_at or 0) - (load.started_at or 0)
        t_verify = time.monotonic()
        results = verify(stack, args, paths, load)
        verify_s = time.monotonic() - t_verify
        if not args.classic:
            summary["shaping"] = show_shaping(stack)
        first = [p.first_seen_wall for p in monitor.view.paths.values() if p.first_seen_wall]
        summary.update(
            load={"written": load.written, **load.counts, "rows": load.rows, "rate": args.rate, "seconds": args.seconds},
            lag={n: {"synced": p.synced, "max_lag_s": round(p.max_lag_s, 4), "beats_seen": len(p.latencies_s),
                     "latency_p50_s": p.latency(0.5), "latency_p99_s": p.latency(0.99),
                     "latency_max_s": max(p.latencies_s, default=None)}
                 for n, p in monitor.view.paths.items()},
            verify=results,
            times={"setup_s": setup_s, "first_synced_s": (min(first) - t0_wall) if first else float("nan"),
                   "first_synced_wall": min(first) if first else None, "start_wall": t0_wall,
                   "load_s": load_s, "drain_s": drain_s, "verify_s": verify_s},
        )
        code = EXIT_OK if all(r["equal"] for r in results.values()) else EXIT_DIFF
    except KeyboardInterrupt:
        say("\ninterrupted: stopping everything the demo started")
        code = EXIT_INTERRUPTED
    except DemoError as exc:
        say(f"demo: error: {exc}")
        code = exc.code
    except Exception as exc:  # a server that did not start (its log tail is in the message), ...
        say(f"demo: error: {type(exc).__name__}: {exc}")
        code = EXIT_FAILED
    finally:
        stopping["flag"] = True
        if monitor is not None:
            monitor.stop_event.set()
            monitor.join(timeout=10)
        if load is not None:
            load.stop_event.set()
            load.join(timeout=10)
        t_stop = time.monotonic()
        if args.keep_running and code == EXIT_OK:
            stack.detach()
            kept = True
        else:
            step("stopping: workers, relay, binlog, then gearmand, Redis, MariaDB")
            stack.stop()
            kept = False
        PidFile(name="demo", pid=os.getpid(), start=None, path=state_dir / "pids" / "demo.pid").remove()
        times = summary.setdefault("times", {})
        times["stop_s"] = time.monotonic() - t_stop
        times["total_s"] = time.monotonic() - t0
    left = [(n, pid) for n, pid in stack.stopped_pids if alive(pid)]
    summary["processes"] = {"stopped": [{"name": n, "pid": pid} for n, pid in stack.stopped_pids],
                            "left_running": [{"name": n, "pid": pid} for n, pid in left], "kept": kept}
    if left:
        say(f"demo: still running after the stop: {', '.join(f'{n} ({p})' for n, p in left)}")
        code = code or EXIT_DIFF
    (state_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if "verify" in summary:
        print_summary(summary, args.ci)
    if kept:
        say(f"\nstill running (stop with make demo-stop):\n"
            f"  mysql  mariadb -h127.0.0.1 -P{stack.mariadb.port} -uroot {DATABASE}\n"
            f"  redis  redis-cli -p {stack.redis.port}\n"
            f"  status {rel(stack.bin_dir / 'sync-status')} --servers {stack.gearman_servers} "
            f"--redis-url {stack.redis_url} --mysql-url {stack.mysql_url} --table {TABLE}")
    say(f"demo: {'OK' if code == EXIT_OK else 'FAILED'} (exit {code}); logs and summary.json in {rel(state_dir)}")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    start_clock()
    try:
        if args.load_only:
            return run_load_only(args)
        if args.stop:
            stopped = stop_left_running(args.state_dir) if args.state_dir.is_dir() else []
            say(f"stopped: {', '.join(stopped)}" if stopped else f"no demo running in {rel(args.state_dir)}")
            return EXIT_OK
        if args.no_install:
            venv_ready = venv_is_ready()
            missing = missing_packages(need_venv=False)
            if missing or not venv_ready:
                raise DemoError(f"--no-install: missing {' '.join(missing) or 'the venv (make venv)'}", EXIT_USAGE)
            if not in_venv():
                python = str(VENV / "bin" / "python")
                os.execv(python, [python, "-m", "sync.demo", *argv])
        else:
            bootstrap(args, argv)
        return run_demo(args)
    except DemoError as exc:
        say(f"demo: error: {exc}")
        return exc.code
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
