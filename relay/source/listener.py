"""The listener: one dedicated PostgreSQL connection, LISTENing, kept alive, re-read often.

Data path: NOTIFY → this module → :class:`ListenerEvents` (``relay/fanout/dispatch.py``: the
stability state and the channel relay), subscribed after construction so that the listener can
be built first. Notifications are hints: after one arrives on the stability channel (our
triggers) or on a channel an activity names (``hints.channels``: the system's own), the
listener reads ``system_stability_activities()`` on the same connection
(``relay/source/truth.py``), so the answer includes every commit whose notification has been
received. Every session first checks the activities against the database
(``relay/source/activities/check.py``) and reports nothing until they fit. Hints that arrive
during that read are buffered by psycopg and coalesce into the next read; reads are at least
``min_read_interval`` apart (the first hint after a quiet spell is answered at once), so a
burst of a thousand commits costs a handful of queries: one in flight, at most one queued.

Under load the listener holds (``relay/source/hold.py``): writers stop hinting and it polls every
``min_read_interval`` instead, which is how often it would read anyway.

Liveness: TCP keepalives and ``tcp_user_timeout`` on the socket, plus a same-session
heartbeat (the read, with a deadline) every ``heartbeat_interval``. Any failure closes the
connection, reports ``unknown`` and reconnects with jittered backoff
(``relay/source/reconnect.py``, shared with the leader election); the log line carries the
server's own last word when it sent one (``terminating connection due to idle-session
timeout``). Sessions that keep ending before ``reconnect_reset_after`` (so the backoff never
resets) are reported once per streak (``reconnect_backoff_stuck``).

Refusals (a standby, a pooler that cannot carry LISTEN) and the pooler probe are
``relay/source/refusals.py``: never a wrong or late state; ``refusal`` says why, ``/readyz``
stays 503.

Bound: notifications that arrive during a read wait in psycopg's backlog, which has no limit
of its own; it holds at most what arrives within one read (``heartbeat_timeout`` at worst),
and PostgreSQL's queue (``pg_notification_queue_usage()``, exported) is the real bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import AsyncConnection, sql

from relay.backoff import Backoff
from relay.config import DatabaseConfig, StabilityConfig
from relay.config.activities import Activity
from relay.errors import DatabaseReadOnly, DatabaseUnavailable, PoolerRefused, SchemaMissing
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.source import pg, refusals
from relay.source.activities.check import verify_installed
from relay.source.hold import HOLD_ANNOUNCED, Hold, Step
from relay.source.holdflag import HoldFlag
from relay.source.reconnect import Reconnect
from relay.source.refusals import POOLER_FIX, STANDBY_FIX, Refusals
from relay.source.truth import TruthReader
from relay.tasks import spawn

log = get_logger("relay.source.listener")
T = TypeVar("T")

# Errors that end a session for a reason the database gave; any other is a bug, logged with
# its traceback (the listener still reconnects: the last state must not freeze).
SESSION_ERRORS = (psycopg.Error, DatabaseUnavailable, SchemaMissing, OSError)

STUCK_CAUSES = (
    "something ends every session before reconnect_reset_after: the server's "
    "idle_session_timeout, a pooler's server_idle_timeout or client_idle_timeout, a proxy's "
    "or load balancer's idle timeout, or a DBA's job terminating backends"
)


class ListenerEvents(Protocol):
    """What the listener tells the rest of the relay."""

    def on_truth(self, activities: Mapping[str, bool]) -> None: ...

    def on_disconnected(self) -> None: ...

    def on_notification(self, channel: str, payload: str) -> None: ...


class Listener:
    """Owns the LISTEN connection and its reconnect loop. ``subscribe()`` what hears it, then
    ``start()``; ``aclose()``. Both idempotent, not reopenable."""

    def __init__(
        self,
        settings: DatabaseConfig,
        stability: StabilityConfig,
        metrics: Metrics,
        *,
        activities: Sequence[Activity],
        profile: str | None = None,
        extra_channels: Sequence[str] = (),
        connector: pg.Connector = pg.DEFAULT_CONNECTOR,
    ) -> None:
        self._settings = settings
        self._connector = connector
        self._events: list[ListenerEvents] = []
        self._metrics = metrics
        self._activities = tuple(activities)
        self._profile = profile
        self._stability_channel = settings.channel
        hint_channels = [c for a in activities for c in a.hint_channels]
        self._hint_channels = frozenset([settings.channel, *hint_channels])
        self._relayed = frozenset(extra_channels)
        self._channels = tuple(dict.fromkeys([settings.channel, *hint_channels, *extra_channels]))
        self._tick = min(settings.heartbeat_interval, stability.reconcile_interval)
        self._min_read_interval = min(stability.min_read_interval, self._tick)
        # A hold quiets our triggers; with none installed there is nothing to quiet.
        self._uses_triggers = any(activity.hint_triggers for activity in activities)
        self._take_holds = stability.hold_when_busy and self._uses_triggers
        self._release_after = stability.hold_release_after
        self._flag = HoldFlag(
            settings, metrics, retry_after=stability.hold_release_after, connector=connector
        )
        self._truth = TruthReader(self._activities, metrics, self._deadline)
        self._refusals = Refusals()
        self._backoff = Backoff(
            settings.reconnect_initial, settings.reconnect_max, settings.reconnect_reset_after
        )
        self._loop = Reconnect(
            self._backoff,
            connect=self._connect,
            session=self._session,
            ended=self._ended,
            closed=lambda: self._closed,
            disconnected=self._disconnected,
            retrying=self._retrying,
        )
        self._attempted = False
        self._reason = ""
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.connected = asyncio.Event()
        # Whether the last session went through a pooler (pid mismatch); None before one.
        self.pooled: bool | None = None
        self._stuck_reported = 0

    @property
    def refusal(self) -> str | None:
        """Why the relay refuses the server it reached, with the fix; None while it reports."""
        return self._refusals.refusal

    @property
    def refusal_kind(self) -> str | None:
        """``"pooler"`` or ``"standby"`` while refused."""
        return self._refusals.refusal_kind

    def subscribe(self, events: ListenerEvents) -> None:
        """Tell ``events`` what the database says (subscribe before ``start()``)."""
        self._events.append(events)

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a closed listener cannot be started again")
        if not self._events:
            raise RuntimeError("a listener with nothing subscribed would read for no one")
        if self._task is None:
            self._task = spawn(self._loop.run(), "relay-listener")

    async def aclose(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        conn = self._loop.conn
        if conn is not None:
            pg.sever(conn)
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                log.warning("listener_stop_timeout", timeout_s=timeout)
        if self._loop.conn is not None:
            await self._loop.conn.close()
            self._loop.conn = None
        budget = timeout - (time.monotonic() - started)
        await self._flag.on_stop(budget, park=self._uses_triggers)

    # The reconnect loop's hooks (relay/source/reconnect.py).
    async def _connect(self) -> AsyncConnection[Any]:
        if self._attempted:
            self._metrics.reconnects.inc()
        self._attempted = True
        target = pg.describe_dsn(self._settings.dsn)
        try:
            return await self._connector.connect(self._settings, self._settings.application_name)
        except DatabaseReadOnly as error:
            raise DatabaseReadOnly(f"cannot connect to {target}: {error}") from None
        except DatabaseUnavailable as error:
            raise DatabaseUnavailable(f"cannot connect to {target}: {error}") from None

    def _ended(self, error: BaseException | None, farewell: pg.Farewell | None) -> bool:
        """Why the session (or the connection attempt) ended; whether to retry briefly."""
        if error is None:
            self._reason = "closed"
            return False
        if farewell is None and isinstance(error, DatabaseUnavailable):
            self._reason = str(error)
            self._refusals.refused(error)
            return isinstance(error, DatabaseReadOnly)
        if farewell is not None and isinstance(error, SESSION_ERRORS):
            self._reason = farewell.describe(error)
            self._refusals.refused(error)
            return isinstance(error, DatabaseReadOnly) or pg.is_read_only(error)
        # A bug or an undecodable payload must not end the loop with the last state
        # frozen: report it, go unknown, reconnect, and re-read the truth.
        log.exception("listener_session_failed")
        self._reason = f"unexpected {type(error).__name__}"
        return False

    def _disconnected(self) -> None:
        self.connected.clear()
        self._metrics.polling.set(0)

    def _retrying(self, delay: float) -> None:
        for events in self._events:
            events.on_disconnected()
        log.warning(
            "database_disconnected",
            reason=self._reason,
            attempt=self._backoff.attempt,
            retry_in_s=round(delay, 2),
        )
        if self._backoff.stuck_total > self._stuck_reported:  # once per streak
            self._stuck_reported = self._backoff.stuck_total
            self._metrics.backoff_stuck_streaks.inc()
            log.warning(
                "reconnect_backoff_stuck",
                short_sessions=self._backoff.short_sessions,
                last_session_s=round(self._backoff.last_session_s or 0.0, 2),
                reconnect_reset_after_s=self._backoff.reset_after,
                last_reason=self._reason,
                likely_causes=STUCK_CAUSES,
            )

    @property
    def backoff_stuck(self) -> bool:
        """Sessions keep ending before ``reconnect_reset_after``: the backoff never resets."""
        return self._backoff.stuck

    @property
    def backoff_stuck_total(self) -> int:
        """How many times a streak of short sessions was detected (a counter)."""
        return self._backoff.stuck_total

    @property
    def short_sessions(self) -> int:
        """Sessions in a row that ended before ``reconnect_reset_after``."""
        return self._backoff.short_sessions

    async def _session(self, conn: AsyncConnection[Any]) -> None:
        pid = await refusals.server(conn, self._deadline)
        # A pooler answers the startup with a backend pid of its own making.
        self.pooled = pid != conn.info.backend_pid
        # Nothing is reported until the activities fit the database (never a wrong state).
        await self._deadline(conn, verify_installed(conn, self._activities, self._profile))
        tick = await self._session_tick(conn)
        # LISTEN first, then read the state: a commit between the two is caught by
        # the read, a commit after it by a notification. Never the reverse.
        await self._listen(conn, self._channels)
        if self.pooled:
            await refusals.check_delivery(
                conn,
                self._settings,
                listen=self._listen,
                dispatch=self._dispatch,
                deadline=self._deadline,
                connector=self._connector,
            )
        self._flag.new_session()
        hold = Hold(self._release_after, time.monotonic(), polling=self._uses_triggers)
        await self._refresh(conn, hold)
        self._refusals.clear()
        self.connected.set()
        self._backoff.healthy()
        # Only now: the state is known and comes from a session that can carry it.
        log.info(
            "database_connected",
            target=pg.describe_dsn(self._settings.dsn),
            backend_pid=pid,
            pooled=self.pooled,
        )
        last_read = time.monotonic()
        hinted = answered_hint = False
        while not self._closed:
            self._metrics.polling.set(hold.active)
            now = time.monotonic()
            # A hint is answered at once, unless the last read was moments ago: then the
            # read waits out `min_read_interval` while further hints coalesce into it.
            # During a hold there are no hints to wait for: poll at that pace.
            fast = hinted or hold.active
            read_due = last_read + (self._min_read_interval if fast else tick)
            if now >= read_due:
                await self._refresh(conn, hold)
                last_read, answered_hint, hinted = time.monotonic(), hinted, False
                continue
            async with contextlib.aclosing(
                conn.notifies(timeout=read_due - now, stop_after=1)
            ) as batch:
                async for note in batch:
                    if not self._dispatch(note.channel, note.payload):
                        continue
                    if note.channel == self._stability_channel and note.payload == HOLD_ANNOUNCED:
                        hold.announced(time.monotonic())
                        self._flag.maybe_set = True
                    else:
                        hinted = True
            # Hints faster than reads: a hint within min_read_interval of a read that answered
            # one. Ask writers to stop sending them, and poll instead. (A drain may be under
            # way: a new hold is drained afresh, with a superset of what it waits for.)
            now = time.monotonic()
            busy = hinted and answered_hint and now - last_read < self._min_read_interval
            may_take = self._take_holds and not hold.polling and self._flag.can_take(now)
            if busy and may_take and await self._flag.take(conn, now):
                hold.taken(time.monotonic())

    async def _session_tick(self, conn: AsyncConnection[Any]) -> float:
        """The heartbeat, shortened to keep the session under a DBA's idle_session_timeout."""
        limit = await self._deadline(conn, pg.idle_limit(conn))
        tick = pg.within_idle_limit(self._tick, limit)
        if tick < self._tick:
            log.info("heartbeat_shortened", idle_session_timeout_s=limit, heartbeat_s=tick)
        return tick

    def _dispatch(self, channel: str, payload: str) -> bool:
        """Route one notification; return whether it hints at a stability change."""
        self._metrics.notifications.labels(channel).inc()
        if channel in self._relayed:
            for events in self._events:
                try:
                    events.on_notification(channel, payload)
                except Exception:  # one bad notification is dropped, never the connection
                    self._metrics.notifications_dropped.labels(channel, "error").inc()
                    log.exception("notification_failed", channel=channel)
        return channel in self._hint_channels

    async def _listen(self, conn: AsyncConnection[Any], channels: Sequence[str]) -> None:
        for channel in channels:
            await self._deadline(
                conn, conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            )

    async def _refresh(self, conn: AsyncConnection[Any], hold: Hold) -> None:
        """Read the truth (also the heartbeat); re-LISTEN if a channel went missing."""
        if hold.drain_starting:
            xid = await self._truth.commit_an_xid(conn)
            if xid is not None:  # always; without it the drain waits for every older one
                hold.drain_below(xid)
        probe = await self._truth.read(conn)
        missing = [c for c in self._channels if c not in probe.channels]
        if missing and self.pooled:
            # Another backend answered: the pooler moves this client between backends.
            raise PoolerRefused(
                f"the channels {missing} vanished after LISTEN: a pooler in transaction (or "
                "statement) pooling mode sits between the relay and PostgreSQL, and LISTEN "
                "needs a session of its own"
            )
        if missing:
            log.warning("channels_missing_relistening", channels=missing)
            await self._listen(conn, missing)
            # A hold announced meanwhile was missed: poll, and drain, as a new session does.
            hold.announced(time.monotonic())
            probe = await self._truth.read(conn)
        self._metrics.notify_queue_usage.set(probe.queue_usage)
        for events in self._events:
            events.on_truth(probe.activities)
        self._flag.maybe_set = probe.held
        step = hold.after_read(
            stable=not any(probe.activities.values()),
            held=probe.held,
            running=probe.running,
            now=time.monotonic(),
        )
        self._metrics.drain_waiting.set(hold.waiting)
        # A relay that cannot read the flag does not know whose hold it would end.
        if step is Step.RELEASE and probe.flag_readable:
            await self._flag.release(conn)

    async def _deadline(self, conn: AsyncConnection[Any], operation: Coroutine[Any, Any, T]) -> T:
        return await pg.with_deadline(
            conn, operation, self._settings.heartbeat_timeout, name="relay-listener-query"
        )


# POOLER_FIX and STANDBY_FIX are read from here by the HTTP stage (/readyz's answer).
__all__ = ["POOLER_FIX", "STANDBY_FIX", "Listener", "ListenerEvents"]
