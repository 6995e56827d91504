"""The relay's own accept loop over its listening sockets: each accepted socket goes to the gate
(``relay/http/gate.py``). If ``accept()`` itself fails (EMFILE, ENFILE, ENOBUFS, ENOMEM: another
process took the system's files, say), accepting pauses for ``ACCEPT_PAUSE`` and connections
wait in the listen backlog."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

from relay.http.gate import Gate

ACCEPT_PAUSE = 0.5  # after accept() failed for want of descriptors
ACCEPT_BATCH = 256  # accepts per readiness event, as asyncio (which uses the backlog)...
# ...but only this many at the limit: each event-loop turn accepts one batch, and a flood that
# reconnects as fast as the relay refuses it would otherwise have most of every turn, slowing
# the streams and probes already served (flips took 30 times as long with 256).
ACCEPT_BATCH_AT_LIMIT = 16
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Listening(asyncio.AbstractServer):
    """The listening sockets and the accept loop over them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gate: Gate) -> None:
        self._loop = loop
        self._gate = gate
        self._sockets: list[socket.socket] = []
        self._paused: set[socket.socket] = set()
        self._serving = False

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    async def bind(self, host: str, port: int, backlog: int) -> None:
        """Every address ``host`` resolves to, as asyncio's ``create_server`` binds them."""
        infos = await self._loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen: set[tuple[Any, ...]] = set()
        try:
            for family, kind, proto, _name, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except OSError:
            self.close()
            raise

    def start(self) -> None:
        self._serving = True
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        at_limit = 0
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno in RESOURCE_ERRORS:
                    self._pause(sock, error)
                    return
                raise  # the loop logs it (folded, relay/http/loopguard.py) and calls again
            if self._gate.admit(conn, peer):
                at_limit += 1
                if at_limit >= ACCEPT_BATCH_AT_LIMIT:
                    return  # the rest next turn, after what else is ready

    def _pause(self, sock: socket.socket, error: OSError) -> None:
        """No descriptor for accept(): stop reading this socket for a moment (Linux keeps
        reporting it readable), then try again."""
        self._loop.remove_reader(sock.fileno())
        self._paused.add(sock)
        self._gate.paused(error)
        self._loop.call_later(ACCEPT_PAUSE, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        self._paused.discard(sock)
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    # asyncio.AbstractServer
    def close(self) -> None:
        if self._serving:
            for sock in self._sockets:
                if sock not in self._paused:
                    self._loop.remove_reader(sock.fileno())
        self._serving = False
        for sock in self._sockets:
            sock.close()
        self._gate.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if not self._serving:
            self.start()

    async def serve_forever(self) -> None:
        raise NotImplementedError("the relay runs the loop itself")

    async def wait_closed(self) -> None:
        return None
