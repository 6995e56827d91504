"""Connections at the socket level: a per-address limit on every connection, and a reserve of
file descriptors that keeps the database, /healthz, /readyz and /metrics working at the limit.

The relay accepts its own connections (:class:`GuardedSite`) instead of leaving that to
asyncio's server, whose accept loop, at the open-file limit, reports every failed ``accept()``
(thousands of lines a second, issue 14) and has no say on who gets a socket. Each accepted
socket is, in this order:

1. from an address that already holds ``http.max_clients_per_address`` connections (of any
   kind: streams, keep-alive, idle, half-sent): answered 429 JSON with ``Retry-After`` and
   closed. Trusted proxies are exempt here; their clients are counted by ``X-Forwarded-For``
   in ``relay/http/access.py``.
2. while the open descriptors are within ``http.fd_reserve`` of the open-file limit: judged by
   what it asks for, not by when it came. The relay reads the socket itself until it can tell
   (:func:`asks_for_reserve`): a complete request head for ``/healthz``, ``/readyz`` or
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

The rest of the reserve is for what the relay opens itself: the listener's reconnect, the
election, the details pool, webhook deliveries, static files. If ``accept()`` itself fails
(EMFILE, ENFILE, ENOBUFS, ENOMEM: another process took the system's files, say), accepting
pauses for ``ACCEPT_PAUSE`` and connections wait in the listen backlog.

Refusals are counted (``relay_http_connections_refused_total{reason}``) and logged at most once
per ``LOG_EVERY`` with the counts. Open descriptors are this module's own count of connections
plus the others (database, files, the loop's own), sampled from ``/proc/self/fd`` in a thread
every 2 s, twice a second near the limit.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import resource
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable
from contextlib import suppress
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from relay.config import HttpConfig
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.tasks import spawn

log = get_logger("relay.http.sockets")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# What a reserve connection may ask for, and how.
RESERVED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
PROBE_METHODS = ("GET", "HEAD")
PROBE_HEAD_MAX = 8192  # a longer request head at the limit is not a probe's
RESERVE_DEADLINE = 2.0  # a socket at the limit without a complete request is closed after this
LINGER = 1.0  # a refused connection is kept this long at most for its answer to arrive
ACCEPT_PAUSE = 0.5  # after accept() failed for want of descriptors
ACCEPT_BATCH = 256  # accepts per readiness event, as asyncio (which uses the backlog)...
# ...but only this many at the limit: each event-loop turn accepts one batch, and a flood that
# reconnects as fast as the relay refuses it would otherwise have most of every turn, slowing
# the streams and probes already served (flips took 30 times as long with 256).
ACCEPT_BATCH_AT_LIMIT = 16
LOG_EVERY = 10.0
SAMPLE_EVERY = 2.0  # /proc/self/fd read this often (in a thread)...
SAMPLE_EVERY_NEAR = 0.5  # ...and this often within twice the reserve of the limit
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
PROC_FD = "/proc/self/fd"
OTHERS_WITHOUT_PROC = 32  # descriptors assumed open besides connections where /proc is absent


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

_PROBE_LINES = tuple(
    f"{method} {path}".encode() for method in PROBE_METHODS for path in sorted(RESERVED_PATHS)
)


def asks_for_reserve(head: bytes) -> bool | None:
    """Whether ``head``, the first bytes of a connection, is a complete request head for a
    reserved path (``True``), cannot become one (``False``), or may yet (``None``)."""
    for line in _PROBE_LINES:
        if len(head) <= len(line):
            if line.startswith(head):
                return None
        elif head.startswith(line) and head[len(line) : len(line) + 1] in (b" ", b"?"):
            if b"\r\n\r\n" in head:
                return True
            return None if len(head) <= PROBE_HEAD_MAX else False
    return False


class TrustedProxies:
    """``http.trusted_proxies``: the networks whose connections are proxies'. Their own
    connections are not counted per address; their clients are, by ``X-Forwarded-For``
    (``relay/http/access.py``)."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._networks = tuple(networks)
        self._hosts: dict[str, bool] = {}  # per peer host as accept() gave it; bounded

    def __contains__(self, address: Address) -> bool:
        return any(address in network for network in self._networks)

    def trusts_host(self, host: str) -> bool:
        """Whether ``host`` (a peer's address as text) is in a trusted network; remembered."""
        trusted = self._hosts.get(host)
        if trusted is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                trusted = False
            else:
                trusted = address in self
            if len(self._hosts) > 10_000:
                self._hosts.clear()
            self._hosts[host] = trusted
        return trusted


class Descriptors:
    """How many file descriptors are open, and how many may be.

    Open: the relay's connections (counted exactly, as they are accepted and closed) plus
    the others, sampled from ``/proc/self/fd`` in a thread: listing it takes tens of
    milliseconds at 20,000 descriptors, too long for the event loop.
    """

    def __init__(self, reserve: int) -> None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit: int | None = None if soft == resource.RLIM_INFINITY or soft < 0 else soft
        self.reserve = reserve
        self._proc = os.path.isdir(PROC_FD) and self.limit is not None
        self._others = OTHERS_WITHOUT_PROC
        self._near = False

    @property
    def budget(self) -> int | None:
        """Descriptors open at most before connections go to the reserve."""
        return None if self.limit is None else self.limit - self.reserve

    def used(self, connections: int) -> int:
        """Open descriptors, ``connections`` of them the relay's HTTP connections."""
        used = self._others + connections
        budget = self.budget
        self._near = budget is not None and used > budget - self.reserve
        return used

    def sample(self, connections: int) -> None:
        """Read the others now (at start, while there are few)."""
        if self._proc:
            self._update(_count_open(), connections, connections)

    async def watch(self, connections: Callable[[], int]) -> None:
        """Sample the others every ``SAMPLE_EVERY`` (``SAMPLE_EVERY_NEAR`` near the limit)."""
        if not self._proc:
            return
        while True:
            await asyncio.sleep(SAMPLE_EVERY_NEAR if self._near else SAMPLE_EVERY)
            before = connections()
            try:
                count = await asyncio.to_thread(_count_open)
            except RuntimeError:  # no thread to be had: keep the last estimate
                continue
            self._update(count, before, connections())

    def _update(self, count: int | None, before: int, after: int) -> None:
        if count is None:
            # Not even one descriptor to read the directory with: the limit is reached.
            assert self.limit is not None
            self._others = self.limit
        else:
            self._others = max(0, count - (before + after) // 2)
        self.used(after)


def _count_open() -> int | None:
    try:
        return len(os.listdir(PROC_FD)) - 1  # less the one listdir opened
    except OSError:
        return None


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
        self._report = _Report(self)
        self._watch: asyncio.Task[None] | None = None
        for reason in ("per_address", "fd_limit"):
            metrics.http_refused.labels(reason)
        metrics.http_connections.set_function(lambda: float(self.connections))
        metrics.open_fds.set_function(self._open_fds)
        if self.fds.limit is not None:
            metrics.open_fds_limit.set(self.fds.limit)

    def start(self) -> None:
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


class _Report:
    """The refusals, logged at most once per ``LOG_EVERY`` with how many there were."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
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
        gate = self._gate
        log.warning(
            "http_connections_refused",
            counts=dict(self._counts),
            accept_error=self._error,
            connections=gate.connections,
            open_fds=gate.fds.used(gate.connections),
            fd_limit=gate.fds.limit,
            fd_reserve=gate.fds.reserve,
            note=f"logged at most every {LOG_EVERY:g} s; see relay_http_connections_refused_total",
        )
        self._counts.clear()
        self._error = None


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


def guard_available() -> bool:
    """Whether aiohttp still keeps a site's server where its runner and ``stop()`` look for it
    (``BaseSite._server``, a slot): all that :class:`GuardedSite` relies on of its internals.
    ``tests/http/test_sockets.py`` fails when it changes."""
    return "_server" in getattr(web.BaseSite, "__slots__", ())


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site, but the relay accepts the connections (see the module docstring).

    Where aiohttp no longer keeps the server in ``BaseSite._server`` (:func:`guard_available`),
    it falls back to a plain ``TCPSite`` (asyncio accepts; its reports are folded by
    ``relay/http/loopguard.py``) and logs ``socket_guard_unavailable``.
    """

    def __init__(
        self, runner: web.BaseRunner, settings: HttpConfig, metrics: Metrics, *, backlog: int
    ) -> None:
        super().__init__(runner, settings.listen.host, settings.listen.port, backlog=backlog)
        self._guarded_runner = runner
        self._guarded_backlog = backlog
        self._settings = settings
        self._metrics = metrics
        self.listening: Listening | None = None

    @property
    def port(self) -> int:
        if self.listening is not None and self.listening.sockets:
            return int(self.listening.sockets[0].getsockname()[1])
        return super().port

    async def start(self) -> None:
        if not guard_available():
            log.warning(
                "socket_guard_unavailable",
                note="this aiohttp keeps its server elsewhere: no per-address connection "
                "limit and no descriptor reserve",
            )
            await super().start()
            return
        loop = asyncio.get_running_loop()
        server = self._guarded_runner.server
        assert server is not None
        listening = Listening(loop, Gate(self._settings, self._metrics, server, loop))
        listen = self._settings.listen
        await listening.bind(listen.host, listen.port, self._guarded_backlog)
        await web.BaseSite.start(self)  # registers the site with its runner
        self._server = listening  # where runner.addresses and BaseSite.stop() look
        self.listening = listening
        gate = listening._gate
        gate.start()
        listening.start()
        log.info(
            "http_descriptors",
            fd_limit=gate.fds.limit,
            fd_reserve=gate.fds.reserve,
            reserve_connections=gate.reserve_slots,
            max_clients_per_address=self._settings.max_clients_per_address,
        )


def hand_over(transport: asyncio.BaseTransport, protocol: asyncio.Protocol) -> None:
    """Make ``protocol`` the socket's protocol from now on (an event stream taking over from
    aiohttp), keeping the :class:`Connection` in between so the connection stays counted."""
    current = transport.get_protocol()
    if isinstance(current, Connection):
        current.inner = protocol
    else:
        transport.set_protocol(protocol)


def reserved_routes(paths: Collection[str] = RESERVED_PATHS) -> Middleware:
    """On a reserve connection: only ``paths``, one request, then the connection closes."""
    allowed = frozenset(paths)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        connection = transport.get_protocol() if transport is not None else None
        if not isinstance(connection, Connection) or not connection.reserve:
            return await handler(request)
        connection.requested = True
        if request.path not in allowed:
            connection.gate.refused("fd_limit")
            refusal = web.json_response(
                {"error": "too many open connections"}, status=503, headers={"Retry-After": "5"}
            )
            refusal.force_close()
            return refusal
        try:
            response = await handler(request)
        except web.HTTPException as error:
            error.force_close()
            raise
        response.force_close()
        return response

    return middleware
