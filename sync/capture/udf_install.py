"""Install or drop the gearsync UDF library in a MariaDB/MySQL server.

    python -m sync.capture.udf_install install --library udf/build/gearsync_udf.so
    python -m sync.capture.udf_install uninstall [--remove-library]

The server comes from --mysql-url, GEARSYNC_MYSQL_URL (mysql://user:pass@host:port/db,
optional ?unix_socket=/path) or GEARSYNC_MYSQL_HOST, _PORT, _USER, _PASSWORD, _DATABASE, or the
[mysql] section of --config / GEARSYNC_CONFIG (default 127.0.0.1:3306, root, no password).

`install` asks the server for @@plugin_dir, copies the library there atomically
(temporary name in the same directory, then rename: a copy mysqld already has
dlopen()ed keeps its old inode) and runs install-udf.sql statement by
statement. The SQL files are package data (sync/capture/sql/, also reachable as sql/ in a
checkout), found with importlib.resources: a wheel install has them too.  With GEARSYNC_JOB_KEY
set it also writes the key the library signs background jobs with: @@plugin_dir/gearsync_udf.key,
mode 0600, owned by the owner of @@datadir (mysqld's user) — a file, never SQL, which would put
the key in the server's logs and binlog.  Without it an existing key file is left as is.
When the server is on another host, or its plugin dir is not
writable from here, it prints the file to copy and the SQL to run and exits 3.

Exit codes: 0 ok, 2 bad option or configuration (or no library file), 3 the server
could not be reached, the SQL failed, or manual steps are needed.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from sync.cli import ExitCode, add_config_option, add_logging_options, add_mysql_options, make_parser
from sync.errors import ConfigError, SourceError
from sync.mysql import MySQLSettings
from sync.settings import config_for, resolve_logging, resolve_mysql
from sync.signing import ENV_KEY, KEY_FILE_NAME, JobKey, check_key_text

PROG = "python -m sync.capture.udf_install"
EXIT_OK = int(ExitCode.OK)
EXIT_CONFIG = int(ExitCode.USAGE)
EXIT_UNREACHABLE = int(ExitCode.UNAVAILABLE)
EXIT_SQL_FAILED = EXIT_UNREACHABLE   # the server refused a statement: 3, as sync-triggers
EXIT_MANUAL = EXIT_UNREACHABLE       # steps to do by hand on the database host

LIBRARY_NAME = "gearsync_udf.so"
SQL_DIR: Traversable = resources.files("sync.capture") / "sql"
INSTALL_SQL = SQL_DIR / "install-udf.sql"
UNINSTALL_SQL = SQL_DIR / "uninstall-udf.sql"


class InstallError(Exception):
    """A failure with a one-line message and the exit code to use."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def target_from_env(env: Mapping[str, str] | None = None, args: Any = None) -> MySQLSettings:
    """The server, from --mysql-url, the GEARSYNC_MYSQL_* environment or the config file's [mysql]."""
    try:
        return resolve_mysql(args, env, config_for(args, env))
    except ConfigError as exc:
        raise InstallError(str(exc), EXIT_CONFIG) from None


def connect(target: MySQLSettings) -> Any:
    try:
        return target.connect(autocommit=True)
    except SourceError as exc:
        raise InstallError(str(exc), EXIT_UNREACHABLE) from None


def read_statements(path: Traversable) -> list[str]:
    """The statements of an install script: `--` comment lines dropped, split on `;`."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]


def run_sql(conn: Any, statements: list[str]) -> None:
    import pymysql

    with conn.cursor() as cur:
        for stmt in statements:
            try:
                cur.execute(stmt)
            except pymysql.MySQLError as exc:
                raise InstallError(f"{stmt!r} failed: {exc}", EXIT_SQL_FAILED) from None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_atomic(library: Path, plugin_dir: Path) -> Path:
    """Copy library into plugin_dir under LIBRARY_NAME: temp file, fsync, rename."""
    dest = plugin_dir / LIBRARY_NAME
    if dest.exists() and _digest(dest) == _digest(library):
        return dest
    tmp = plugin_dir / f".{LIBRARY_NAME}.{os.getpid()}.tmp"
    try:
        with open(library, "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def write_key_file(plugin_dir: Path, key: bytes, owner: tuple[int, int] | None) -> Path:
    """plugin_dir/gearsync_udf.key = key + newline, mode 0600, chown'ed to `owner` (uid, gid) when
    given: temp file created 0600, fsync, rename (the UDF never sees a partial key)."""
    dest = plugin_dir / KEY_FILE_NAME
    tmp = plugin_dir / f".{KEY_FILE_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, key + b"\n")
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, dest)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()
    return dest


def _key_owner(datadir: str) -> tuple[int, int] | None:
    """(uid, gid) of mysqld's user (the owner of its datadir) when we must chown (we are root)."""
    try:
        st = os.stat(datadir)
    except OSError:
        return None
    if os.geteuid() == 0:
        return st.st_uid, st.st_gid
    if st.st_uid != os.geteuid():
        raise InstallError(f"{KEY_FILE_NAME}: mysqld's user (uid {st.st_uid}, owner of {datadir}) must own the key "
                           f"file and this user (uid {os.geteuid()}) cannot chown it; run the install as root",
                           EXIT_MANUAL)
    return None


def _manual_steps(reason: str, library: Path, plugin_dir: str, target: MySQLSettings) -> InstallError:
    sql = ";\n".join(read_statements(INSTALL_SQL)) + ";"
    message = (
        f"{reason}\n"
        f"Do it by hand:\n"
        f"  1. copy {library.resolve()} to {plugin_dir}/{LIBRARY_NAME} on the database host "
        f"(mode 0644, readable by mysqld)\n"
        f"  2. run {INSTALL_SQL} there, e.g. mariadb -h {target.host} -P {target.port} -u {target.user} -p "
        f"< {INSTALL_SQL}\n"
        f"  3. with signed jobs: put ${ENV_KEY} into {plugin_dir}/{KEY_FILE_NAME} there, mode 0600, owned by "
        f"mysqld's user (e.g. printf '%s\\n' \"${ENV_KEY}\" | install -m 0600 -o mysql -g mysql /dev/stdin "
        f"{plugin_dir}/{KEY_FILE_NAME})\n"
        f"SQL:\n{sql}"
    )
    return InstallError(message, EXIT_MANUAL)


def install(target: MySQLSettings, library: Path, env: Mapping[str, str] | None = None) -> str:
    if not library.is_file():
        raise InstallError(f"--library: no such file {str(library)!r} (run `make build-udf`)", EXIT_CONFIG)
    env = os.environ if env is None else env
    try:
        key = check_key_text(env[ENV_KEY], ENV_KEY) if env.get(ENV_KEY) else None
    except ConfigError as exc:
        raise InstallError(str(exc), EXIT_CONFIG) from None
    conn = connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@plugin_dir, @@version, @@datadir")
            plugin_dir, version, datadir = cur.fetchone()
        plugin_dir = str(plugin_dir).rstrip("/")
        if not target.is_local:
            raise _manual_steps(
                f"{target.url_display} is not on this host: its plugin dir {plugin_dir} cannot be written from here.",
                library, plugin_dir, target)
        pdir = Path(plugin_dir)
        if not pdir.is_dir() or not os.access(pdir, os.W_OK | os.X_OK):
            raise _manual_steps(
                f"plugin dir {plugin_dir} of {target.url_display} is not writable by this user "
                f"(or not on this filesystem).", library, plugin_dir, target)
        key_note = ""
        if key is not None:
            write_key_file(pdir, key, _key_owner(str(datadir)))
            key_note = f"; jobs signed with key id {JobKey(key).kid.decode()} ({pdir / KEY_FILE_NAME})"
        elif (pdir / KEY_FILE_NAME).exists():
            key_note = f"; {ENV_KEY} not set: {pdir / KEY_FILE_NAME} left as it is"
        dest = copy_atomic(library, pdir)
        run_sql(conn, read_statements(INSTALL_SQL))
        with conn.cursor() as cur:
            cur.execute("SELECT gman_json_array(1, 'ok')")
            (check,) = cur.fetchone()
        if check not in (b'[1,"ok"]', '[1,"ok"]'):
            raise InstallError(f"installed, but gman_json_array(1, 'ok') returned {check!r}", EXIT_SQL_FAILED)
        return f"installed gearsync UDFs from {dest} on {target.url_display} (MariaDB/MySQL {version}){key_note}"
    finally:
        conn.close()


def uninstall(target: MySQLSettings, remove_library: bool) -> str:
    conn = connect(target)
    try:
        run_sql(conn, read_statements(UNINSTALL_SQL))
        note = ""
        if remove_library:
            with conn.cursor() as cur:
                cur.execute("SELECT @@plugin_dir")
                (plugin_dir,) = cur.fetchone()
            path = Path(str(plugin_dir)) / LIBRARY_NAME
            key_path = path.with_name(KEY_FILE_NAME)
            if target.is_local and path.exists():
                path.unlink()
                note = f"; removed {path}"
                if key_path.exists():
                    key_path.unlink()
                    note += f" and {key_path}"
            elif path.exists() or not target.is_local:
                note = f"; remove {path} (and {KEY_FILE_NAME}) on the database host by hand"
        return f"dropped gearsync UDFs on {target.url_display}{note}"
    finally:
        conn.close()


EPILOG = """\
environment (each also a [mysql] key of --config; docs/configuration.md):
  GEARSYNC_MYSQL_URL or GEARSYNC_MYSQL_HOST, _PORT, _USER, _DATABASE, _SOCKET; GEARSYNC_MYSQL_PASSWORD
  GEARSYNC_JOB_KEY  install: also write it to @@plugin_dir/gearsync_udf.key (0600, mysqld's user), the
                    key the library signs background jobs with (environment only; docs/security.md)

examples:
  python -m sync.capture.udf_install install --library udf/build/gearsync_udf.so
  python -m sync.capture.udf_install uninstall --remove-library --config /etc/gearsync/gearsync.toml

exit codes: 0 done, 2 bad option, config file or environment (or no library file), 3 the server
could not be reached, a statement failed, or manual steps are needed (printed).
"""


def build_parser() -> Any:
    parser = make_parser(PROG, (__doc__ or "").split("\n")[0], EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="copy the library into @@plugin_dir and CREATE FUNCTION")
    p_install.add_argument("--library", type=Path, default=Path("udf/build") / LIBRARY_NAME,
                           help=f"the built library (default udf/build/{LIBRARY_NAME})")
    p_uninstall = sub.add_parser("uninstall", help="DROP FUNCTION for every gearsync UDF")
    p_uninstall.add_argument("--remove-library", action="store_true",
                             help="also delete it (and its key file) from @@plugin_dir")
    for p in (p_install, p_uninstall):
        add_config_option(p)
        add_mysql_options(p)
        add_logging_options(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            resolve_logging(args, None, config_for(args)).apply()
        except ConfigError as exc:
            raise InstallError(str(exc), EXIT_CONFIG) from None
        target = target_from_env(None, args)
        if args.command == "install":
            print(install(target, args.library))
        else:
            print(uninstall(target, args.remove_library))
    except InstallError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
