"""docker-compose.yml and docker/: checked against the real commands, since our machines cannot run them.

Each service's command is parsed by that command's own argparse parser (a renamed or removed
option fails here), each environment variable must be one the command documents in its --help,
gearmand's options must be in `gearmand --help`, the Dockerfiles' COPY sources must exist, the
binlog source must write other keys than the triggers' workers, the schema must be the demo's,
and every `make <target>` the docs mention must exist. `docker compose config` runs where the
compose plugin is installed (it needs no engine).
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML is in the dev extras; a missing one must fail, not skip the whole file

REPO = Path(__file__).resolve().parent.parent.parent
COMPOSE = REPO / "docker-compose.yml"
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
IMAGE_ENV = re.compile(r"^MARIADB_[A-Z_]+$")   # the official mariadb image's own variables


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, Any]:
    return compose()["services"]


def _parser(program: str) -> Any:
    """The argparse parser of a console script (workers.<x>:main -> build_parser)."""
    module = importlib.import_module(SCRIPTS[program].split(":")[0])
    return module.build_parser()


def _parse(program: str, args: list[str]) -> tuple[Any, str]:
    """(parsed namespace, help text) for a service command; fails the test on a bad option."""
    if program in SCRIPTS:
        parser = _parser(program)
    elif program == "python" and args[:2] == ["-m", "sync.demo"]:
        from sync.demo import cli as demo

        args = args[2:]
        parser = demo.build_parser()
    else:
        raise AssertionError(f"unknown program {program!r}")
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{program} {shlex.join(args)}: rejected by the real parser (exit {exc.code})") from None
    return ns, parser.format_help()


def _documented(var: str, help_text: str) -> bool:
    """VAR itself, or a family the help names as PREFIX_* (e.g. MYSQL_* for GEARSYNC_MYSQL_PASSWORD)."""
    if re.search(rf"\b{re.escape(var)}\b", help_text):
        return True
    return any(var.startswith(m[:-1]) for m in re.findall(r"\b[A-Z_]+_\*", help_text))


def _gearsync_services() -> dict[str, Any]:
    return {name: svc for name, svc in services().items()
            if svc.get("command") and (svc["command"][0] in SCRIPTS or svc["command"][0] == "python")}


def test_the_stack_has_every_piece() -> None:
    svcs = services()
    programs = {name: (svc.get("command") or [None])[0] for name, svc in svcs.items()}
    assert {"mariadb", "gearmand", "redis"} <= set(svcs)
    assert "sync-worker" in programs.values()
    assert "sync-binlog" in programs.values()
    assert "sync-triggers" in programs.values()
    assert any(svc.get("command", [])[:3] == ["python", "-m", "sync.demo"] for svc in svcs.values())
    # gearmand keeps its queue in the MariaDB service
    g = svcs["gearmand"]["command"]
    assert g[g.index("-q") + 1] == "mysql" and g[g.index("--mysql-host") + 1] == "mariadb"


@pytest.mark.parametrize("name", sorted(_gearsync_services()))
def test_service_command_parses_with_the_real_cli(name: str) -> None:
    cmd = [str(part) for part in services()[name]["command"]]
    _parse(cmd[0], cmd[1:])


@pytest.mark.parametrize("name", sorted(_gearsync_services()))
def test_service_environment_is_documented_by_its_command(name: str) -> None:
    svc = services()[name]
    cmd = [str(part) for part in svc["command"]]
    _, help_text = _parse(cmd[0], cmd[1:])
    env = svc.get("environment") or {}
    assert isinstance(env, dict), f"{name}: write environment as a mapping"
    for var in env:
        assert _documented(var, help_text), f"{name}: {var} is not a variable `{' '.join(cmd[:3])} --help` documents"
    # no secrets on command lines of gearsync commands (they show in ps)
    assert not any("password" in part.lower() for part in cmd), cmd


def test_mariadb_environment() -> None:
    env = services()["mariadb"]["environment"]
    udf_readme = (REPO / "udf" / "README.md").read_text()
    for var in env:
        assert IMAGE_ENV.match(var) or var in udf_readme, f"mariadb: {var} is neither an image variable nor in udf/README.md"
    assert "GEARSYNC_GEARMAN_SERVERS" in env


def test_binlog_and_triggers_never_share_keys() -> None:
    """Binlog versions (GTID-derived) and trigger versions (UUID_SHORT) are not comparable."""
    worker_templates, binlog_templates, verified = set(), set(), set()
    for svc in _gearsync_services().values():
        cmd = [str(p) for p in svc["command"]]
        ns, _ = _parse(cmd[0], cmd[1:])
        template = getattr(ns, "key_template", None) or "{table}:{pk}"
        if cmd[0] == "sync-worker":
            worker_templates.add(template)
        elif cmd[0] == "sync-binlog":
            assert ns.sink == "redis"
            binlog_templates.add(template)
        elif cmd[0] == "sync-verify":
            verified.add(template)
    assert worker_templates and binlog_templates
    assert not worker_templates & binlog_templates
    assert verified == worker_templates | binlog_templates  # each key space is verified


def test_depends_on_names_services_and_one_shots_do_not_restart() -> None:
    svcs = services()
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or []
        for dep in deps:
            assert dep in svcs, f"{name} depends on unknown service {dep!r}"
        if isinstance(deps, dict):
            for dep, cond in deps.items():
                if cond.get("condition") == "service_completed_successfully":
                    assert "restart" not in svcs[dep], f"{dep} is awaited to complete but restarts"


def test_gearmand_options_exist() -> None:
    gearmand = shutil.which("gearmand") or ("/usr/sbin/gearmand" if Path("/usr/sbin/gearmand").exists() else None)
    assert gearmand is not None, "gearmand is not installed (Debian: gearman-job-server); the test suite needs it"
    help_text = subprocess.run([gearmand, "--help"], capture_output=True, text=True, timeout=30).stdout
    dockerfile_cmd = json.loads(re.search(r"^CMD (\[.*\])$", (REPO / "docker/gearmand/Dockerfile").read_text(), re.M)[1])
    for cmd in (services()["gearmand"]["command"], dockerfile_cmd):
        options = [str(p) for p in cmd[1:] if str(p).startswith("-")]
        assert options, f"no gearmand options found in {cmd!r}"
        for opt in options:
            long_or_short = re.escape(opt) + r"\b"
            assert re.search(long_or_short, help_text), f"gearmand has no option {opt}"


def _dockerfiles() -> list[tuple[Path, Path]]:
    out = []
    for svc in services().values():
        build = svc.get("build")
        if build:
            context = (REPO / build["context"]).resolve()
            out.append((context, context / build["dockerfile"]))
    return sorted(set(out))


def test_dockerfiles_copy_what_exists() -> None:
    files = _dockerfiles()
    assert {f.relative_to(REPO).as_posix() for _, f in files} == {
        "docker/mariadb/Dockerfile", "docker/gearmand/Dockerfile", "docker/gearsync/Dockerfile"}
    for context, dockerfile in files:
        text = dockerfile.read_text()
        assert text.lstrip().startswith("#") or text.lstrip().startswith(("FROM", "ARG"))
        for line in text.splitlines():
            if line.startswith("COPY") and "--from=" not in line:
                *sources, _dest = line.split()[1:]
                for src in sources:
                    assert (context / src).exists(), f"{dockerfile}: COPY source {src} does not exist"


def test_mariadb_image_builds_the_udf_fresh_and_enables_the_binlog() -> None:
    text = (REPO / "docker/mariadb/Dockerfile").read_text()
    assert "FROM mariadb:" in text and "/docker-entrypoint-initdb.d/" in text
    assert "libmariadbd-dev" in text  # the server UDF headers (mysql.h under /usr/include/mariadb/server)
    ignore = (REPO / "docker/mariadb/Dockerfile.dockerignore").read_text().split()
    assert "udf/build*" in ignore  # a host build would look up to date
    cnf = (REPO / "docker/mariadb/gearsync.cnf").read_text()
    for line in ("binlog_format        = ROW", "binlog_row_image     = FULL", "binlog_row_metadata  = FULL"):
        assert line in cnf
    assert "log_bin" in cnf and "server_id" in cnf


def test_demo_schema_is_the_demos_table() -> None:
    from sync.demo.load import CREATE_TABLE

    sql = (REPO / "docker/mariadb/20-demo-schema.sql").read_text()
    norm = lambda s: " ".join(s.replace(";", " ").split())  # noqa: E731
    assert norm(CREATE_TABLE) in norm(sql)
    assert "CREATE DATABASE IF NOT EXISTS gearman" in sql


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][a-zA-Z0-9_-]*):", (REPO / "Makefile").read_text(), re.M))


def test_make_targets_mentioned_exist() -> None:
    targets = _make_targets()
    assert {"demo", "demo-classic", "demo-stop", "clean", "venv", "test", "install-udf", "docs"} <= targets
    sources = [REPO / "README.md", COMPOSE, *sorted((REPO / "sync" / "demo").glob("*.py")), *sorted((REPO / "deploy").rglob("*.service"))]
    for path in sources:
        # `make x` in backticks, or a command line starting with make (not "gcc make" in a package list)
        for target in re.findall(r"(?:`|^[ \t]*|\$ )make ([a-z][a-z0-9-]*)", path.read_text(), re.M):
            assert target in targets, f"{path.relative_to(REPO)} mentions `make {target}`, which the Makefile lacks"


def _compose_plugin() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    result = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    return docker if result.returncode == 0 else None


def test_docker_compose_config() -> None:
    docker = _compose_plugin()
    if docker is None:
        pytest.skip("no `docker compose` plugin on this machine (docker CLI absent or without compose)")
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_systemd_units_run_real_options() -> None:
    """deploy/systemd: each ExecStart parses with its command's parser (%i = a table or database)."""
    units = sorted((REPO / "deploy" / "systemd").glob("*.service"))
    assert {u.name for u in units} >= {"gearsync-worker@.service", "gearsync-relay@.service"}
    expanded_by_units: set[str] = set()
    for unit in units:
        exec_start = re.search(r"^ExecStart=(.*)$", unit.read_text(), re.M)
        assert exec_start, unit
        expanded_by_units |= set(re.findall(r"\$\{?([A-Z_]+)", exec_start[1]))
        argv = [a.replace("%i", "data") for a in shlex.split(exec_start[1]) if not a.startswith("$")]
        program = Path(argv[0]).name
        assert program in SCRIPTS, f"{unit.name}: {program} is not a gearsync command"
        _parse(program, argv[1:])
    env_vars = re.findall(r"^#?\s*([A-Z][A-Z_]+)=", (REPO / "deploy/systemd/gearsync.env").read_text(), re.M)
    helps = "\n".join(_parser(p).format_help() for p in SCRIPTS if p != "sync-bench")
    for var in env_vars:
        if var not in expanded_by_units:   # GEARSYNC_*_ARGS: expanded by the units themselves
            assert _documented(var, helps), f"gearsync.env: {var} is used by no command"
