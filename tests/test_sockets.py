"""Connections counted at the socket level: per-address limits on every connection, and a
reserve of descriptors that keeps health, readiness, metrics and open streams working at the
open-file limit (issue 14, "Sockets").

The descriptor test runs the relay as its own process under a lowered ``RLIMIT_NOFILE``, with
the flood opened from this one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from relay.http.sockets import GuardedSite, guard_available
from tests.ops_support import PROCESSING, REPO, STABLE, background, free_port, wait_for_http
from tests.support import (
    SseClient,
    base_url,
    eventually,
    execute,
    relay_config,
    running_relay,
    sse_connect,
)

NOFILE = 256


def test_the_aiohttp_internal_the_guard_relies_on_is_still_there() -> None:
    """``GuardedSite`` puts its listening sockets where aiohttp's runner and ``stop()`` look
    (``BaseSite._server``). Should that move, the relay falls back to a plain TCPSite without
    the limits: this fails first."""
    assert guard_available()
    assert "_server" in web.BaseSite.__slots__


async def test_the_relay_accepts_its_own_connections(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        site = relay._site
        assert isinstance(site, GuardedSite)
        assert site.listening is not None and site.listening.is_serving()
        port = relay.port
        assert port == site.port == site.listening.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as http:
            async with http.get(base_url(relay) + "/healthz") as response:
                assert response.status == 200
    assert not site.listening.is_serving()
    with socket.socket() as sock, suppress(OSError):
        sock.connect(("127.0.0.1", port))
        raise AssertionError("still accepting after the relay stopped")


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in the metrics"
    return float(match.group(1))


async def _open_idle(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    loop = asyncio.get_running_loop()
    received = b""
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(sock, 4096):
            received += chunk
    return received


async def test_one_address_cannot_hold_more_connections_than_its_limit(db_dsn: str) -> None:
    limit = 5
    config = relay_config(db_dsn, http={"max_clients_per_address": limit, "idle_timeout": "60s"})
    async with running_relay(config) as relay:
        port = relay.port
        registry = relay.metrics.registry
        idle = [await _open_idle(port) for _ in range(limit)]  # silent sockets, never a request
        await eventually(lambda: registry.get_sample_value("relay_http_connections") == limit)
        extra = [await _open_idle(port) for _ in range(3)]
        for sock in extra:
            answer = await _answer(sock)
            assert answer.startswith(b"HTTP/1.1 429 "), answer[:60]
            assert b"Retry-After: 10" in answer
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
                "error": "too many connections from one address"
            }
            sock.close()
        # Streams count too: the address has no slot left for one.
        async with aiohttp.ClientSession() as http:
            async with http.get(base_url(relay) + "/api/system-status/live") as refused:
                assert refused.status == 429
                assert refused.headers["Retry-After"]
        # Another address is not affected.
        other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), force_close=True)
        async with aiohttp.ClientSession(connector=other) as http:
            async with http.get(base_url(relay) + "/healthz") as response:
                assert response.status == 200
            async with sse_connect(base_url(relay) + "/api/system-status/live", session=http):
                pass
            async with http.get(base_url(relay) + "/metrics") as response:
                metrics = await response.text()
        assert _metric(metrics, "relay_http_connections_refused_total", reason="per_address") == 4
        assert _metric(metrics, "relay_http_connections_refused_total", reason="fd_limit") == 0
        for sock in idle:
            sock.close()
        await eventually(lambda: registry.get_sample_value("relay_http_connections") == 0)
        async with aiohttp.ClientSession() as http:
            async with http.get(base_url(relay) + "/healthz") as response:
                assert response.status == 200


# At the open-file limit: the relay in a process of its own.


def _limit_files() -> None:  # runs in the relay's process, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@asynccontextmanager
async def _relay_process(
    tmp_path: Path, dsn: str, **http: object
) -> AsyncIterator[tuple[str, Path, int]]:
    port = free_port()
    config = tmp_path / "relay.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {
                    "dsn": dsn,
                    "heartbeat_interval": "1s",
                    "reconnect_initial": "0.1s",
                    "reconnect_max": "0.5s",
                },
                "stability": {"reconcile_interval": "5s"},
                "http": {"listen": f"127.0.0.1:{port}", **http},
                "logging": {"format": "json"},
            }
        )
    )
    log = tmp_path / "relay.log"
    command = [sys.executable, "-m", "relay", "run", "--config", str(config)]
    with background(command, log, cwd=REPO, preexec_fn=_limit_files) as process:
        url = f"http://127.0.0.1:{port}"
        await wait_for_http(url + "/readyz", process, log)
        yield url, log, process.pid


async def _flip(dsn: str, client: SseClient, to_processing: bool) -> float:
    started = time.monotonic()
    await execute(dsn, PROCESSING if to_processing else STABLE)
    await client.wait_for_state("processing" if to_processing else "stable", timeout=20)
    return time.monotonic() - started


async def _flips(dsn: str, client: SseClient, count: int = 6) -> list[float]:
    times = []
    for n in range(count):
        times.append(await _flip(dsn, client, to_processing=n % 2 == 0))
        await asyncio.sleep(0.3)
    return times


class Flood:
    """``count`` sockets held open against ``port``: half send half a request line and then a
    byte now and then, half send nothing. One the relay closes is opened again."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.sockets: list[socket.socket | None] = [None] * count
        self.opened = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Flood:
        self._task = asyncio.create_task(self._hold())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        for sock in self.sockets:
            if sock is not None:
                sock.close()

    async def _hold(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for n, sock in enumerate(self.sockets):
                if sock is not None and _closed_by_peer(sock):
                    sock.close()
                    sock = self.sockets[n] = None
                if sock is None:
                    sock = self.sockets[n] = socket.socket()  # closed on exit even if cancelled
                    sock.setblocking(False)
                    try:
                        await loop.sock_connect(sock, ("127.0.0.1", self.port))
                    except OSError:
                        sock.close()
                        self.sockets[n] = None
                        continue
                    self.opened += 1
                    if n % 2:
                        with suppress(OSError):
                            sock.send(b"GET /api/system-sta")
                elif n % 2:
                    with suppress(OSError):
                        sock.send(b"t")
            await asyncio.sleep(0.5)

    def held(self) -> int:
        return sum(1 for sock in self.sockets if sock is not None and not _closed_by_peer(sock))


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        data = sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        # Closed, or an answer: the relay refused it and closes it.
        return not data or b"HTTP/1.1" in data
    except BlockingIOError:
        return False
    except OSError:
        return True


async def _get(url: str, path: str) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.get(url + path) as response:
            await response.read()
            return response.status


async def _answers_200(url: str, path: str, attempts: int = 5) -> bool:
    """A health check as a prober does it: a fresh connection, a retry or two."""
    for _ in range(attempts):
        with suppress(aiohttp.ClientError, TimeoutError):
            if await _get(url, path) == 200:
                return True
        await asyncio.sleep(0.1)
    return False


LIMIT_LINE = re.compile(r"refused|accept|Too many open files|event_loop_error|out of system")


async def test_at_the_open_file_limit_health_metrics_and_streams_keep_working(
    db_dsn: str, tmp_path: Path
) -> None:
    async with _relay_process(tmp_path, db_dsn, idle_timeout="120s") as (url, log, _pid):
        async with sse_connect(url + "/api/system-status/live") as stream:
            await stream.next_event()
            baseline = await _flips(db_dsn, stream)
            async with Flood(int(url.rsplit(":", 1)[1]), 2 * NOFILE) as flood:
                # The relay holds what fits below the reserve and refuses the rest.
                await eventually(lambda: flood.opened > 2 * NOFILE, timeout=20)
                metrics_text = ""

                async def refusing() -> bool:
                    nonlocal metrics_text
                    with suppress(aiohttp.ClientError, TimeoutError):
                        async with aiohttp.ClientSession() as http:
                            async with http.get(url + "/metrics") as response:
                                metrics_text = await response.text()
                        refused = "relay_http_connections_refused_total"
                        return _metric(metrics_text, refused, reason="fd_limit") > 0
                    return False

                await eventually(refusing, timeout=20)
                held = flood.held()
                assert NOFILE // 2 < held < NOFILE, held
                for path in ("/healthz", "/readyz", "/metrics") * 3:
                    assert await _answers_200(url, path), path
                loaded = await _flips(db_dsn, stream)
                # Only the reserve's paths are served on a reserve connection.
                refused_stream = 0
                for _ in range(3):
                    with suppress(aiohttp.ClientError, TimeoutError):
                        if await _get(url, "/api/system-status") == 503:
                            refused_stream += 1
                assert refused_stream >= 1
                assert _metric(metrics_text, "relay_open_fds_limit") == NOFILE
                assert _metric(metrics_text, "relay_open_fds") <= NOFILE
            # The flood is gone: new clients are served again.
            await eventually(lambda: _answers_200(url, "/api/system-status", attempts=1))
            async with sse_connect(url + "/api/system-status/live") as again:
                await again.next_event()
            assert (await _flip(db_dsn, stream, to_processing=True)) < 10 * max(baseline)
        lines = log.read_text().splitlines()
    about_the_limit = [line for line in lines if LIMIT_LINE.search(line)]
    assert 1 <= len(about_the_limit) <= 5, about_the_limit
    refusals = [json.loads(line) for line in about_the_limit if "http_connections_refused" in line]
    assert refusals and sum(r["counts"].get("fd_limit", 0) for r in refusals) > 0
    ratio = statistics.median(loaded) / statistics.median(baseline)
    print(
        f"flips: baseline median {statistics.median(baseline) * 1000:.1f} ms, "
        f"under the flood {statistics.median(loaded) * 1000:.1f} ms (ratio {ratio:.2f}); "
        f"{len(lines)} log lines, {len(about_the_limit)} about the limit"
    )
    assert ratio < 5, (baseline, loaded)


def _lowest_free_descriptor(pid: int) -> int:
    taken = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(taken) + 1) if n not in taken)


async def test_when_accept_fails_anyway_the_relay_pauses_says_so_once_and_recovers(
    db_dsn: str, tmp_path: Path
) -> None:
    """The limit lowered under the relay's feet (``prlimit``): its own count cannot see it
    coming, so accept() itself fails. It pauses accepting instead of reporting each try."""
    async with _relay_process(tmp_path, db_dsn) as (url, log, pid):
        port = int(url.rsplit(":", 1)[1])
        # Not one descriptor left: the next one the relay opens would be numbered past it.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_lowest_free_descriptor(pid), NOFILE))
        waiting = [await _open_idle(port) for _ in range(20)]  # in the listen backlog

        def paused() -> bool:
            return any("accept_paused" in line for line in log.read_text().splitlines())

        try:
            await eventually(paused, timeout=10)
            await asyncio.sleep(2)  # four pauses and retries: still one line
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        for sock in waiting:
            sock.close()
        await eventually(lambda: _answers_200(url, "/api/system-status", attempts=1), timeout=10)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/metrics") as response:
                metrics = await response.text()
        assert _metric(metrics, "relay_http_accept_paused_total") >= 2
        lines = log.read_text().splitlines()
    about_the_limit = [line for line in lines if LIMIT_LINE.search(line)]
    assert 1 <= len(about_the_limit) <= 3, about_the_limit
    line = json.loads(next(line for line in about_the_limit if "accept_paused" in line))
    assert "Too many open files" in line["accept_error"]
