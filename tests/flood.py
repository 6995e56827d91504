"""A flood of connections from one loopback address that reconnects as fast as it can, run as a
process of its own by ``tests/http/test_sockets.py`` so that it competes with the relay for the CPU
and not with the test's probes for its event loop::

    python -m tests.flood PORT SOURCE SOCKETS SECONDS

``SOCKETS`` sockets (the bound on how many it holds at once), each connecting from ``SOURCE``
to 127.0.0.1:``PORT``, sending what its kind sends and, as soon as the server closes it,
connecting again: no pause anywhere. Kinds, by socket number: nothing; half a request line; a
complete request for a path a reserve connection may not ask for; the request line of
``/metrics`` with its head never finished (claims to be a probe, never is one). Sockets the
server keeps (below its limit; a request it answered and keeps alive) stay open.

It stops after ``SECONDS`` or on SIGTERM, closes everything and prints one JSON line:
``connects`` (connections established), ``closed`` (those the server closed), ``failed``
(connects that failed), and the answers by status line (``"HTTP/1.1 503 ..."``: count).
"""

from __future__ import annotations

import errno
import json
import selectors
import signal
import socket
import sys
import time
from contextlib import suppress
from typing import Any

KINDS = (
    b"",
    b"GET /api/system-sta",
    b"GET /api/system-status HTTP/1.1\r\nHost: relay\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: relay\r\n",
)
MAX_SOCKETS = 2000  # well below the relay's listen backlog (4096): the kernel drops no SYN
MAX_SECONDS = 120.0


class Flood:
    def __init__(self, port: int, source: str, count: int) -> None:
        self.target = ("127.0.0.1", port)
        self.source = source
        self.count = count
        self.selector = selectors.DefaultSelector()
        self.stats: dict[str, int] = {"connects": 0, "closed": 0, "failed": 0}

    def open(self, n: int) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.bind((self.source, 0))
            error = sock.connect_ex(self.target)
        except OSError:
            sock.close()
            self.stats["failed"] += 1
            return  # reopened by the next sweep
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            self.stats["failed"] += 1
            return
        self.selector.register(sock, selectors.EVENT_WRITE, [n, False])

    def connected(self, sock: socket.socket, n: int) -> None:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.stats["failed"] += 1
            self.close(sock)
            self.open(n)
            return
        self.stats["connects"] += 1
        payload = KINDS[n % len(KINDS)]
        if payload:
            with suppress(OSError):  # closed already: the read below sees it
                sock.send(payload)
        self.selector.modify(sock, selectors.EVENT_READ, [n, False])

    def readable(self, sock: socket.socket, state: list[Any]) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data and not state[1]:  # the first bytes of an answer: its status line
            state[1] = True
            status = data.split(b"\r\n", 1)[0].decode(errors="replace")
            self.stats[status] = self.stats.get(status, 0) + 1
        if not data:  # closed (or reset) by the server: again, at once
            self.stats["closed"] += 1
            self.close(sock)
            self.open(state[0])

    def close(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        sock.close()

    def run(self, seconds: float) -> None:
        stop = False

        def stopping(_signum: int, _frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, stopping)
        deadline = time.monotonic() + seconds
        for n in range(self.count):
            self.open(n)
        while not stop and time.monotonic() < deadline:
            for key, events in self.selector.select(timeout=0.1):
                sock, state = key.fileobj, key.data
                assert isinstance(sock, socket.socket)
                if events & selectors.EVENT_WRITE:
                    self.connected(sock, state[0])
                else:
                    self.readable(sock, state)
            if len(self.selector.get_map()) < self.count:  # some failed to open: again
                held = {key.data[0] for key in self.selector.get_map().values()}
                for n in range(self.count):
                    if n not in held:
                        self.open(n)
        for key in list(self.selector.get_map().values()):
            assert isinstance(key.fileobj, socket.socket)
            self.close(key.fileobj)
        print(json.dumps(self.stats), flush=True)


def main(argv: list[str]) -> None:
    port, source, count, seconds = int(argv[0]), argv[1], int(argv[2]), float(argv[3])
    if not source.startswith("127.") or not 0 < count <= MAX_SOCKETS:
        raise SystemExit("loopback sources only, at most 2000 sockets")
    Flood(port, source, count).run(min(seconds, MAX_SECONDS))


if __name__ == "__main__":
    main(sys.argv[1:])
