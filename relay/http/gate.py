"""The socket gate: what becomes of each socket the relay accepts (``relay/http/listening.py``
accepts them, ``relay/http/sockets.py`` puts it all under aiohttp). In this order:

1. from an address that already holds ``http.max_clients_per_address`` connections (of any
   kind: streams, keep-alive, idle, half-sent): answered 429 JSON with ``Retry-After`` and
   closed. Trusted proxies are exempt here; their clients are counted by ``X-Forwarded-For``
   in ``relay/http/access.py``.
2. while the open descriptors are within ``http.fd_reserve`` of the open-file limit: judged by
   what it asks for, not by when it came. The relay reads the socket itself until it can tell
   (``asks_for_reserve``): a complete request head for ``/healthz``, ``/readyz`` or
   ``/metrics`` (GET or HEAD) makes it a *probe*, handed to aiohttp with what was read, for
   one request, in one of ``fd_reserve // 8`` probe slots that nothing else can take or
   displace; anything else is answered 503 JSON with ``Retry-After`` and closed at once. A
   socket that has not said enough yet *waits*, in one of as many waiting slots, at most
   ``RESERVE_DEADLINE``; when they are all taken, a newcomer takes the slot of the oldest
   waiting socket of the address that holds the most of them (after reading what that one
   has sent since: a probe is not dropped for being read late). So a flood from one address,
   however fast it reconnects, never costs another address's probe its turn; and a probe
   whose request has arrived when the relay accepts it, from any address, is served.
3. otherwise served as usual.

Refused sockets are answered as ``relay/http/refused.py`` says, and counted and logged there.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from relay.config import HttpConfig
from relay.http.descriptors import Descriptors
from relay.http.proxies import TrustedProxies
from relay.http.refused import FD_LIMIT, TOO_MANY_FROM_ADDRESS, RefusalLog
from relay.http.reserve import PROBE_HEAD_MAX, RESERVE_DEADLINE, asks_for_reserve
from relay.metrics import Metrics
from relay.tasks import spawn

LINGER = 1.0  # a refused connection is kept this long at most for its answer to arrive


class Connection(asyncio.Protocol):
    """One accepted socket: its protocol until it closes, passing everything to ``inner``
    (aiohttp's request handler, then an event stream's client after ``hand_over``)."""

    __slots__ = (
        "_preface",
        "_timer",
        "address",
        "gate",
        "inner",
        "released",
        "requested",
        "reserve",
        "transport",
    )

    def __init__(
        self,
        gate: Gate,
        inner: asyncio.Protocol,
        address: str | None,
        reserve: bool,
        preface: bytes = b"",
    ) -> None:
        self.gate = gate
        self.inner = inner
        self.address = address  # None: not counted per address (a trusted proxy, or no limit)
        self.reserve = reserve  # a probe at the limit: one request, a reserved path
        self.requested = False
        self.released = False
        self.transport: asyncio.BaseTransport | None = None
        self._preface = preface  # what the gate read before handing the socket over
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.reserve:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(RESERVE_DEADLINE, self._expire, transport)
        self.inner.connection_made(transport)
        if self._preface:
            preface, self._preface = self._preface, b""
            self.inner.data_received(preface)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        self._timer = None
        if not self.requested and isinstance(transport, asyncio.Transport):
            transport.abort()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.gate.release(self)  # before the inner protocol: its slot is free when it knows
        self.inner.connection_lost(exc)


class _Refusal(asyncio.Protocol):
    """Answers a refused connection and closes it once the client has read the answer (its
    EOF), or after ``LINGER``: closing at once would reset a request still arriving, and the
    client would never see why."""

    def __init__(self, gate: Gate, answer: bytes) -> None:
        self._gate = gate
        self._answer = answer
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        """The request is read and dropped."""

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._gate.release_refusal(self)


class _Waiting:
    """A socket accepted at the limit that has not sent a complete request head yet. The gate
    reads it itself (a reader on the descriptor, no transport), so dropping it is one
    ``close()`` at any moment, even in the accept batch that brought it."""

    __slots__ = ("address", "head", "host", "sock", "timer")

    def __init__(self, sock: socket.socket, host: str | None, address: str | None) -> None:
        self.sock = sock
        self.host = host  # whose slots these are when one must go
        self.address = address  # as Connection.address
        self.head = b""
        self.timer: asyncio.TimerHandle | None = None


class Gate:
    """Decides about each accepted socket (see the module docstring) and counts connections."""

    def __init__(
        self,
        settings: HttpConfig,
        metrics: Metrics,
        factory: Callable[[], asyncio.Protocol],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._limit = settings.max_clients_per_address
        self._trusted = TrustedProxies(settings.trusted_proxies)
        self._metrics = metrics
        self._factory = factory
        self._loop = loop
        self.fds = Descriptors(settings.fd_reserve)
        # Probes at the limit, and as many sockets waiting to show what they ask for.
        self.reserve_slots = max(2, settings.fd_reserve // 8)
        self.connections = 0  # every accepted socket still open, refused ones included
        self._per_address: Counter[str] = Counter()
        self._probes: set[Connection] = set()
        self._waiting: dict[_Waiting, None] = {}  # oldest first
        self._refusals: set[_Refusal] = set()
        self._pending: set[asyncio.Task[Any]] = set()
        self._report = RefusalLog(lambda: self.connections, self.fds)
        self._watch: asyncio.Task[None] | None = None
        for reason in ("per_address", "fd_limit"):
            metrics.http_refused.labels(reason)
        metrics.http_connections.set_function(lambda: float(self.connections))
        metrics.open_fds.set_function(self._open_fds)
        if self.fds.limit is not None:
            metrics.open_fds_limit.set(self.fds.limit)

    def start(self) -> None:
        """Sample the descriptors and watch them from now on; a second call does nothing."""
        if self._watch is not None:
            return
        self.fds.sample(self.connections)
        self._watch = spawn(self.fds.watch(lambda: self.connections), "relay-descriptors")

    def _open_fds(self) -> float:
        return float(self.fds.used(self.connections))

    def admit(self, sock: socket.socket, peer: Any) -> bool:
        """A socket ``accept()`` returned: serve it, judge it by its request, or refuse it.
        Whether the descriptors were at the limit."""
        self.connections += 1
        try:
            sock.setblocking(False)
        except OSError:
            self._close_now(sock, None)
            return False
        host = peer[0] if isinstance(peer, tuple) and peer else None
        host = host if isinstance(host, str) else None
        address = host if host is not None and self._limited(host) else None
        budget = self.fds.budget
        full = budget is not None and self.fds.used(self.connections) > budget
        if address is not None and self._per_address[address] >= (self._limit or 0):
            self.refused("per_address")
            if full:
                self._close_now(sock, TOO_MANY_FROM_ADDRESS)
            else:
                refusal = _Refusal(self, TOO_MANY_FROM_ADDRESS)
                self._refusals.add(refusal)
                self._connect(sock, refusal)
            return full
        if address is not None:
            self._per_address[address] += 1
        if full:
            self._judge(_Waiting(sock, host, address))
        else:
            self._connect(sock, Connection(self, self._factory(), address, reserve=False))
        return full

    def _limited(self, host: str) -> bool:
        """Whether connections from ``host`` count against the per-address limit."""
        if self._limit is None:
            return False
        return not self._trusted.trusts_host(host)

    # At the limit: what a socket asks for decides.

    def _judge(self, waiting: _Waiting) -> None:
        """Read what ``waiting`` has sent (at accept, then whenever it is readable) and
        decide: a probe, refused, or waiting a while longer."""
        try:
            chunk = waiting.sock.recv(PROBE_HEAD_MAX + 1 - len(waiting.head))
        except (BlockingIOError, InterruptedError):
            chunk = None
        except OSError:
            self._drop(waiting, None)
            return
        if chunk == b"":  # the client left
            self._drop(waiting, None)
            return
        waiting.head += chunk or b""
        verdict = asks_for_reserve(waiting.head)
        if verdict is None:
            if waiting not in self._waiting:
                self._wait(waiting)
            return
        if not verdict or len(self._probes) >= self.reserve_slots:
            self.refused("fd_limit")
            self._drop(waiting, FD_LIMIT)
            return
        self._stop_waiting(waiting)
        connection = Connection(
            self, self._factory(), waiting.address, reserve=True, preface=waiting.head
        )
        self._probes.add(connection)
        self._connect(waiting.sock, connection)

    def _wait(self, waiting: _Waiting) -> None:
        """A waiting slot for ``waiting``: a free one, or the one of the oldest waiting socket
        of the address that holds the most (read once more first: it may be a probe now)."""
        while len(self._waiting) >= self.reserve_slots:
            held = Counter(other.host for other in self._waiting)
            most = max(held.values())
            victim = next(other for other in self._waiting if held[other.host] == most)
            self._judge(victim)
            if victim in self._waiting:
                self.refused("fd_limit")
                self._drop(victim, FD_LIMIT)
        self._waiting[waiting] = None
        self._loop.add_reader(waiting.sock.fileno(), self._judge, waiting)
        waiting.timer = self._loop.call_later(RESERVE_DEADLINE, self._expire, waiting)

    def _expire(self, waiting: _Waiting) -> None:
        waiting.timer = None
        self._judge(waiting)  # what came last
        if waiting in self._waiting:
            self.refused("fd_limit")
            self._drop(waiting, FD_LIMIT)

    def _stop_waiting(self, waiting: _Waiting) -> None:
        if waiting in self._waiting:
            del self._waiting[waiting]
            self._loop.remove_reader(waiting.sock.fileno())
        if waiting.timer is not None:
            waiting.timer.cancel()
            waiting.timer = None

    def _drop(self, waiting: _Waiting, answer: bytes | None) -> None:
        self._stop_waiting(waiting)
        self._forget(waiting.address)
        self._close_now(waiting.sock, answer)

    def _connect(self, sock: socket.socket, protocol: asyncio.Protocol) -> None:
        task = self._loop.create_task(self._loop.connect_accepted_socket(lambda: protocol, sock))
        self._pending.add(task)
        task.add_done_callback(lambda done: self._connected(done, sock, protocol))

    def _connected(
        self, task: asyncio.Task[Any], sock: socket.socket, protocol: asyncio.Protocol
    ) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            # No transport (the client left at once, say): nothing will report the end.
            sock.close()
            if isinstance(protocol, Connection):
                self.release(protocol)
            elif isinstance(protocol, _Refusal) and protocol in self._refusals:
                self.release_refusal(protocol)

    def _close_now(self, sock: socket.socket, answer: bytes | None) -> None:
        """Refuse without keeping the descriptor: what has arrived is read (so closing sends a
        FIN rather than a reset), the answer sent in one non-blocking write, the socket closed."""
        if answer is not None:
            with suppress(OSError):
                sock.recv(65536)
            with suppress(OSError):
                sock.send(answer)
        sock.close()
        self.connections -= 1

    def release(self, connection: Connection) -> None:
        if connection.released:
            return
        connection.released = True
        self.connections -= 1
        self._probes.discard(connection)
        self._forget(connection.address)

    def _forget(self, address: str | None) -> None:
        if address is not None:
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]

    def release_refusal(self, refusal: _Refusal) -> None:
        if refusal in self._refusals:
            self._refusals.remove(refusal)
            self.connections -= 1

    def refused(self, reason: str) -> None:
        self._metrics.http_refused.labels(reason).inc()
        self._report.add(reason)

    def paused(self, error: OSError) -> None:
        self._metrics.accept_paused.inc()
        self._report.add("accept_paused", error=f"{type(error).__name__}: {error}")

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._report.flush()
        for waiting in list(self._waiting):
            self._drop(waiting, None)
        for refusal in list(self._refusals):
            if refusal.transport is not None:
                refusal.transport.abort()
