"""systemd's notify protocol: ``READY=1``, ``STATUS=``, ``STOPPING=1`` and ``WATCHDOG=1``.

A datagram to ``$NOTIFY_SOCKET`` (a path, or an abstract socket when it starts with ``@``);
no libsystemd. The caller reads the environment and passes it in; without a socket every
method is a no-op, so the relay runs the same outside systemd.

- ``READY=1`` once HTTP serves and the state is known, or after ``ready_timeout`` with a
  ``STATUS=`` saying the database is not reachable yet (so a database outage at boot does not
  fail the unit's start; the relay serves ``unknown`` and keeps reconnecting).
- ``STATUS=`` on every stability transition.
- ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC``, from a task on the event loop: a wedged
  loop stops the pings and systemd restarts the service.
- ``STOPPING=1`` when shutdown begins.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

from relay.logs import get_logger
from relay.state.stability import Snapshot, Stability, State
from relay.tasks import spawn

log = get_logger("relay.fanout.systemd")

STATUS_TEXT = {
    State.STABLE: "stable: no activity is running",
    State.PROCESSING: "processing",
    State.UNKNOWN: "state unknown: the database is not reachable (reconnecting)",
}


def status_text(snapshot: Snapshot) -> str:
    """``STATUS=``: the state, and while processing what runs ("processing: Importing data")."""
    text = STATUS_TEXT[snapshot.state]
    if snapshot.state is State.PROCESSING and snapshot.running:
        text += ": " + ", ".join(snapshot.running)
    return text


def watchdog_interval(usec: str | None, pid: str | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, or ``None`` if off.

    ``$WATCHDOG_PID``, when set, must be this process (as ``sd_watchdog_enabled()`` checks).
    """
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("watchdog_usec_invalid", value=usec)
        return None
    return value / 2_000_000 if value > 0 else None


class Notifier:
    """Talks to systemd for one relay. ``start()`` once HTTP serves; ``aclose()`` at the end."""

    def __init__(
        self,
        notify_socket: str | None = None,
        *,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        self._address = _address(notify_socket) if notify_socket else None
        self.watchdog_interval = watchdog_interval(watchdog_usec, watchdog_pid)
        self._ready_timeout = ready_timeout
        self._sock: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stability: Stability | None = None
        self._phase = "new"  # new → waiting → ready → stopping → closed

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, ready_timeout: float = 10.0) -> Notifier:
        return cls(
            environ.get("NOTIFY_SOCKET"),
            watchdog_usec=environ.get("WATCHDOG_USEC"),
            watchdog_pid=environ.get("WATCHDOG_PID"),
            ready_timeout=ready_timeout,
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def follow(self, stability: Stability) -> None:
        """The state to report at start; its transitions come to :meth:`on_transition` (the
        wiring subscribes it)."""
        self._stability = stability

    async def start(self) -> None:
        """Call once HTTP serves: ``READY=1`` now if the state is known, else when it is."""
        if self._phase != "new" or self._address is None:
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._phase = "waiting"
        if self.watchdog_interval is not None:
            self._tasks.append(spawn(self._watchdog(self.watchdog_interval), "systemd-watchdog"))
        current = self._stability.current if self._stability is not None else None
        if current is not None and current.stable is not None:
            self._ready(current)
        else:
            self._tasks.append(spawn(self._ready_deadline(), "systemd-ready"))

    def stopping(self) -> None:
        """Shutdown begins: systemd shows the unit as deactivating."""
        if self._phase in ("waiting", "ready"):
            self._phase = "stopping"
            self.send("STOPPING=1", "STATUS=stopping")

    async def aclose(self, timeout: float | None = None) -> None:
        self.stopping()
        self._phase = "closed"
        for task in self._tasks:
            task.cancel()
        try:
            if self._tasks:  # wait() does not raise: a cancellation of aclose() propagates
                _done, late = await asyncio.wait(self._tasks, timeout=timeout)
                if late:
                    raise TimeoutError  # the shutdown logs the step as overrun, as it did
        finally:
            self._tasks.clear()
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def send(self, *lines: str) -> bool:
        """One datagram, newline-separated assignments. Never blocks; a failure is logged."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as error:  # systemd gone or its queue full: nothing to wait for
            log.warning("systemd_notify_failed", error=str(error), message=lines[0])
            return False
        return True

    def on_transition(self, snapshot: Snapshot) -> None:
        """Report a transition as ``STATUS=`` (and the first known state as ``READY=1``)."""
        if self._phase == "waiting" and snapshot.stable is not None:
            self._ready(snapshot)
        elif self._phase == "ready":
            self.send(f"STATUS={status_text(snapshot)}")

    def _ready(self, snapshot: Snapshot) -> None:
        self._phase = "ready"
        self.send("READY=1", f"STATUS={status_text(snapshot)}")
        log.info("systemd_ready", state=snapshot.state.value)

    async def _ready_deadline(self) -> None:
        await asyncio.sleep(self._ready_timeout)
        if self._phase == "waiting":
            self._phase = "ready"
            self.send(
                "READY=1",
                "STATUS=serving; the database is not reachable yet (state unknown, reconnecting)",
            )
            log.warning("systemd_ready_without_database", waited_s=self._ready_timeout)

    async def _watchdog(self, interval: float) -> None:
        # Runs on the event loop on purpose: if the loop is wedged, the pings stop.
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)


def _address(notify_socket: str) -> str | bytes:
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    return notify_socket
