"""What a refused connection is told (429 or 503 JSON with ``Retry-After``), and the log of
refusals: at most one line per ``LOG_EVERY``, with the counts
(``relay_http_connections_refused_total{reason}`` has them all)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable

from relay.http.descriptors import Descriptors
from relay.logs import get_logger

log = get_logger("relay.http.refused")

LOG_EVERY = 10.0


def _answer(status: str, retry_after: int, error: str) -> bytes:
    body = json.dumps({"error": error}).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {retry_after}\r\n"
        "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


TOO_MANY_FROM_ADDRESS = _answer(
    "429 Too Many Requests", 10, "too many connections from one address"
)
FD_LIMIT = _answer("503 Service Unavailable", 5, "too many open connections")


class RefusalLog:
    """The refusals, logged at most once per ``LOG_EVERY`` with how many there were, and the
    gate's ``connections`` and descriptors at that moment."""

    def __init__(self, connections: Callable[[], int], fds: Descriptors) -> None:
        self._connections = connections
        self._fds = fds
        self._counts: Counter[str] = Counter()
        self._error: str | None = None
        self._last = -LOG_EVERY
        self._timer: asyncio.TimerHandle | None = None

    def add(self, reason: str, error: str | None = None) -> None:
        self._counts[reason] += 1
        self._error = error or self._error
        now = time.monotonic()
        if now - self._last >= LOG_EVERY:
            self.flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._last + LOG_EVERY - now, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._counts:
            return
        self._last = time.monotonic()
        connections = self._connections()
        log.warning(
            "http_connections_refused",
            counts=dict(self._counts),
            accept_error=self._error,
            connections=connections,
            open_fds=self._fds.used(connections),
            fd_limit=self._fds.limit,
            fd_reserve=self._fds.reserve,
            note=f"logged at most every {LOG_EVERY:g} s; see relay_http_connections_refused_total",
        )
        self._counts.clear()
        self._error = None
