"""Helpers for the operations tests: real external tools (Caddy, Prometheus) on loopback ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"

PROCESSING = (
    "INSERT INTO public.import_job (slug, state) VALUES ('ops-job', 'processing_data') "
    "ON CONFLICT (slug) DO UPDATE SET state = 'processing_data'"
)
STABLE = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'ops-job'"


def require_tool(command: str, package: str) -> str:
    """The tool's path, or skip the test saying how to get it."""
    path = shutil.which(command)
    if path is None:
        pytest.skip(
            f"{command} is not installed: `make ops-deps` installs Debian's {package} package "
            "(needs apt-get and root)"
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def background(args: list[str], log: Path, **options: object) -> Iterator[subprocess.Popen[bytes]]:
    """A process for the length of the block, its output in ``log``; always terminated."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **options)  # type: ignore[call-overload]
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_for_http(
    url: str, process: subprocess.Popen[bytes], log: Path, *, status: int = 200, timeout: float = 15
) -> None:
    """Until ``url`` answers ``status``; fail with the process's output if it exits first."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = _read(log)
                raise AssertionError(f"{process.args} exited {process.returncode}:\n{output}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == status:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout}s:\n{_read(log)}")


def _read(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


# Caddy, run from deploy/Caddyfile with only what a test must change.

CADDYFILE = DEPLOY / "Caddyfile"
# Loopback only, no admin endpoint, no certificates.
TEST_OPTIONS = """
	admin off
	auto_https off
	default_bind 127.0.0.1"""


def caddyfile_for_test(*, read_timeout: str, health_interval: str, idle: str) -> str:
    """deploy/Caddyfile with test-only global options and shorter timeouts; nothing else."""
    text = CADDYFILE.read_text()
    assert text.count("\n{\n") == 1, "deploy/Caddyfile: expected one global options block"
    text = text.replace("\n{\n", "\n{" + TEST_OPTIONS + "\n", 1)
    for line, replacement in (
        ("grace_period 10s", "grace_period 500ms"),
        ("idle 2m", f"idle {idle}"),
        ("read_body 10s", f"read_body {idle}"),
        ("read_timeout 60s", f"read_timeout {read_timeout}"),
        ("health_interval 5s", f"health_interval {health_interval}"),
    ):
        assert text.count(line) == 1, f"deploy/Caddyfile no longer has {line!r}"
        text = text.replace(line, replacement)
    return text


@dataclass
class Caddy:
    app_url: str  # the web app's host: /api/system-status* goes to the relays
    status_url: str  # the status host: everything goes to the relays
    process: subprocess.Popen[bytes]
    log: Path


@asynccontextmanager
async def running_caddy(
    tmp_path: Path,
    relay_ports: list[int],
    *,
    app_port: int | None = None,
    read_timeout: str = "60s",
    health_interval: str = "5s",
    idle: str = "2m",
) -> AsyncIterator[Caddy]:
    caddy = require_tool("caddy", "caddy")
    home = tmp_path / f"caddy-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    config = home / "Caddyfile"
    config.write_text(
        caddyfile_for_test(read_timeout=read_timeout, health_interval=health_interval, idle=idle)
    )
    app_address, status_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "RELAY_UPSTREAMS": " ".join(f"127.0.0.1:{port}" for port in relay_ports),
        "APP_ADDRESS": f"http://{app_address}",
        "STATUS_ADDRESS": f"http://{status_address}",
        "APP_UPSTREAM": f"127.0.0.1:{app_port or free_port()}",
    }
    log = home / "caddy.log"
    args = [caddy, "run", "--config", str(config), "--adapter", "caddyfile"]
    with background(args, log, env=env, cwd=home) as process:
        front = Caddy(f"http://{app_address}", f"http://{status_address}", process, log)
        await wait_for_http(front.status_url + "/healthz", process, log)
        yield front


# PgBouncer (Debian's), with its own ini and user list, in front of a test PostgreSQL.


@dataclass
class PgBouncer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a database of the server behind it), through this PgBouncer."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(dsn, host="127.0.0.1", port=self.port)

    def output(self) -> str:
        return _read(self.log)


@asynccontextmanager
async def running_pgbouncer(
    tmp_path: Path,
    server_port: int,
    *,
    pool_mode: str,
    users: tuple[str, ...] = ("postgres",),
    settings: dict[str, str] | None = None,
) -> AsyncIterator[PgBouncer]:
    """Stock PgBouncer (no ``ignore_startup_parameters``) on a free loopback port, every
    database of the server on 127.0.0.1:``server_port`` behind it, trust authentication."""
    pgbouncer = require_tool("pgbouncer", "pgbouncer")
    home = tmp_path / f"pgbouncer-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    port = free_port()
    userlist = home / "userlist.txt"
    userlist.write_text("".join(f'"{user}" ""\n' for user in users))
    lines = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "trust",
        "auth_file": str(userlist),
        "pool_mode": pool_mode,
        **(settings or {}),
    }
    ini = home / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\n* = host=127.0.0.1 port={server_port}\n\n[pgbouncer]\n"
        + "".join(f"{key} = {value}\n" for key, value in lines.items())
    )
    # PgBouncer will not run as root: it reads its files, then becomes PostgreSQL's user.
    args = [pgbouncer, *(["-u", "embedded_postgres"] if os.geteuid() == 0 else []), str(ini)]
    log = home / "pgbouncer.log"
    with background(args, log) as process:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise AssertionError(f"pgbouncer exited {process.returncode}:\n{_read(log)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pgbouncer did not listen:\n{_read(log)}") from None
                await asyncio.sleep(0.05)
        yield PgBouncer(port, process, log)
