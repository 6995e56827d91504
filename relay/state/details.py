"""The details API: each activity, whether it is active, and its rows in progress.

The seed's keys (``import_jobs``, ``analytics_tasks``, ``system_stable``) stay as they were;
``activities`` groups the same rows by activity, with labels and totals.

Queries run on the relay's read pool (``relay/state/readpool.py``; never on the listener's
connection), with a statement timeout. Single flight plus a short cache: however many requests
arrive within ``details.cache``, they cost at most one round of queries (one statement) per
state. Each round is also a progress sample for the estimates of the time left
(``relay/state/eta.py``: :class:`Estimates` puts them in, its :class:`Sampler` asks for a
round while the system is busy).

Consistent with the state. Every answer says which state it reflects: ``seq``, the number of
the live stream's event (:attr:`Snapshot.seq`). A round of queries belongs to the state it was
started in: only requests that arrive while that state is current share it (in flight or
cached), so a transition ends the cache, and a read started before it is never handed to a
request that arrived after it. The details read the activities in their own snapshot, which
is always later than the listener's read of that state; when their verdict differs, the
database has moved on and the listener has not said so yet. The round then hints the listener
(a NOTIFY on the stability channel, once per state) and its requests wait, at most
``SETTLE_WITHIN``, for the next state: if that agrees with the details, the answer carries its
``seq``; if not, they share a round of the new state (``MAX_ROUNDS`` in all). An answer that
still disagrees (or one read while the state is unknown) says ``"ahead": true``: the
database had moved past ``seq`` when it was read, and the stream has yet to say so.

Bound: one round of queries per state and cache window, and at most one hint per state,
however many requests.

Signals: ``signals`` maps each activity to its ``depth``, ``depth_capped``, ``oldest_age_s``,
``stalled``, ``stalled_since``, ``overdue``, ``overdue_bound_s`` and ``busy_since``, from the
signals reader's latest read (``relay/state/signals.py``), never a read of their own;
``signals_error`` says why they cannot be read, or is null.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, LiteralString

from relay.config import DatabaseConfig, DetailsConfig
from relay.errors import DatabaseUnavailable
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.state.eta import Estimates
from relay.state.readpool import ReadPool
from relay.state.sharedread import SharedRead
from relay.state.stability import Snapshot, Stability, State
from relay.tasks import cancel_and_wait

log = get_logger("relay.state.details")

# One statement, one snapshot: the lists and the verdict agree with each other. The function
# is generated from the activities (relay/source/activities/reads.py); with it, what the
# estimates of the time left rest on (relay/state/eta.py), which are put in once per round.
# Bound: at most `details.max_items` rows per activity (each activity also says its `total`).
QUERY = (
    "SELECT public.system_stability_details(%s::integer)::text, "
    "public.system_stability_typical()::text"
)
# Each activity's own JSON (statbus's is_importing() and the deriving ones): what a client
# re-reads after a feed's connect event: read after each request arrived, shared by the
# requests in line (relay/state/sharedread.py).
INDICATORS = "SELECT public.system_stability_indicators()::text"
# The hint a round sends when the details' verdict differs from the relay's state: the
# listener reads at once (any payload but the hold's announcement is a hint; every relay on
# the database hears it, and reads once).
HINT = "SELECT pg_catalog.pg_notify(%s::pg_catalog.text, 'details'::pg_catalog.text)"
# How long requests wait for the listener to reach the state the details read (it answers a
# hint within `min_read_interval`, 50 ms, plus its read), and how many rounds they take.
SETTLE_WITHIN = 1.0
MAX_ROUNDS = 3


@dataclass(eq=False, slots=True)
class _Round:
    """One round of queries, started while the state numbered ``seq`` was current."""

    seq: int
    details: dict[str, Any]
    verdict: dict[str, Any]  # each activity's ``active``, in the details' own snapshot
    agrees: bool  # the verdict is the state's
    at: float  # when it landed (monotonic): the cache window starts then
    settled: bool = False  # waited for a newer state in vain: later requests do not wait
    bodies: dict[tuple[int, bool], bytes] = field(default_factory=dict)

    def body(self, seq: int, *, ahead: bool) -> bytes:
        """Encoded once per (seq, ahead), however many requests it answers."""
        key = (seq, ahead)
        body = self.bodies.get(key)
        if body is None:
            answer = {**self.details, "seq": seq, "ahead": ahead}
            body = self.bodies[key] = json.dumps(answer, separators=(",", ":")).encode()
        return body


class Details:
    """What ``GET /api/system-status/details`` and ``/indicators`` answer (``relay/http/api.py``
    serves them). ``start()`` then ``aclose()``; both idempotent, not reopenable. Reads on
    ``pool``, which its owner starts before and closes after it; each round puts in the
    ``estimates``."""

    def __init__(
        self,
        database: DatabaseConfig,
        settings: DetailsConfig,
        metrics: Metrics,
        stability: Stability,
        pool: ReadPool,
        estimates: Estimates,
    ) -> None:
        self._database = database
        self._settings = settings
        self._metrics = metrics
        self._stability = stability
        self._pool = pool
        self._estimates = estimates
        self._cached: _Round | None = None  # served only while its state is current
        # At most one round in flight per state: one of an earlier state may still be
        # answering the requests that arrived in it.
        self._rounds: dict[int, asyncio.Task[_Round]] = {}
        self._hinted: int | None = None  # the state the last hint was sent in
        self._moved = asyncio.Event()  # set (and replaced) at every change of state
        self._indicators = SharedRead(
            lambda: self._read(INDICATORS), name="indicators", max_waiting=10_000
        )
        self._started = False
        self._closed = False
        # Each activity's signals (relay/state/signals.py: SignalsReader.describe) and why
        # they cannot be read, if so: set by the wiring, put in every round.
        self.signals: Callable[[], tuple[Mapping[str, Any], str | None]] | None = None

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("closed details service cannot be started again")
        self._started = True

    async def aclose(self, timeout: float | None = None) -> None:
        """The rounds in flight are cancelled; the indicators' line hears "unavailable"."""
        if self._closed:
            return
        self._closed = True
        async with asyncio.timeout(timeout):
            for round_ in list(self._rounds.values()):
                await cancel_and_wait(round_)  # shielded from its callers, not from the close
            await self._indicators.aclose()

    def on_change(self, _snapshot: Snapshot) -> None:
        """An observer of the state: requests waiting for a newer state look again."""
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def fetch(self) -> bytes:
        """The JSON body, consistent with the current state or a newer one (module docstring):
        from the cache, from the round in flight, or from a new round."""
        deadline = time.monotonic() + SETTLE_WITHIN
        for _attempt in range(MAX_ROUNDS):
            state = self._stability.current
            read = await self._round(state)
            if read.agrees or read.settled or state.state is State.UNKNOWN:
                return read.body(read.seq, ahead=not read.agrees)
            later = await self._next_state(read.seq, deadline)
            if later is None:
                read.settled = True  # the listener did not follow in time: answer as read
                return read.body(read.seq, ahead=True)
            if read.verdict == dict(later.activities):
                return read.body(later.seq, ahead=False)
        return read.body(read.seq, ahead=True)  # read after `read.seq` began, newer than it

    async def _round(self, state: Snapshot) -> _Round:
        """Single flight keyed by the state: a request joins its state's round in flight (or
        cached), even one begun before the request arrived, since the answer promises only to
        be consistent with that state, which was current when the request arrived. Unlike
        :class:`SharedRead` (``relay/state/sharedread.py``), which never joins a running read:
        its promise is read-your-writes, which a read begun before the request cannot keep."""
        cached = self._cached
        if (
            cached is not None
            and cached.seq == state.seq
            and time.monotonic() - cached.at < self._settings.cache
        ):
            return cached
        task = self._rounds.get(state.seq)
        if task is None:
            task = asyncio.create_task(self._read_round(state), name="relay-details-query")
            self._rounds[state.seq] = task
            task.add_done_callback(functools.partial(self._landed, state.seq))
        # Shielded: a client that goes away must not cancel the round the others wait for.
        return await asyncio.shield(task)

    def _landed(self, seq: int, task: asyncio.Task[_Round]) -> None:
        del self._rounds[seq]
        if task.cancelled() or task.exception() is not None:
            return
        if self._stability.current.seq == seq:  # a round of an earlier state is not kept
            self._cached = task.result()

    async def _read_round(self, state: Snapshot) -> _Round:
        details = await self._query()
        verdict = {name: _active(details, name) for name, _active_now in state.activities}
        agrees = verdict == dict(state.activities)
        if not agrees and state.state is not State.UNKNOWN and self._hinted != state.seq:
            # The database moved on after the listener's read: have it read now.
            self._hinted = state.seq
            log.debug("details_ahead_of_state", seq=state.seq)
            with contextlib.suppress(DatabaseUnavailable):  # then its reconcile will
                await self._row(HINT, (self._database.channel,))
        return _Round(state.seq, details, verdict, agrees, time.monotonic())

    async def _next_state(self, seq: int, deadline: float) -> Snapshot | None:
        """The first state after ``seq``, or None if none comes by ``deadline``."""
        while (current := self._stability.current).seq == seq:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._moved.wait()
        return current

    async def _query(self) -> dict[str, Any]:
        """One round: the details and what estimates rest on; the estimates put in (so each
        round is one progress sample of every job, taken when the round began)."""
        self._metrics.details_queries.inc()
        began = time.time()
        row = await self._row(QUERY, (self._settings.max_items,))
        details, typical = json.loads(row[0]), json.loads(row[1] or "{}")
        annotated = self._estimates.annotate(details, typical, now=began)
        if self.signals is not None:
            _put_signals(annotated, *self.signals())
        return annotated

    async def _read(self, query: LiteralString) -> bytes:
        row = await self._row(query)
        return str(row[0]).encode()

    async def _row(self, query: LiteralString, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        if not self._started or self._closed:
            raise DatabaseUnavailable("details service is not running")
        return await self._pool.row(query, params)

    async def read_indicators(self) -> bytes:
        """Each activity's own JSON (``GET /api/system-status/indicators``), read after the
        call began; the calls in line share one read."""
        return await self._indicators.read()


def _put_signals(details: dict[str, Any], signals: Mapping[str, Any], error: str | None) -> None:
    """``signals``: each activity's depth, oldest age, stalled rows and overdue bound (beside
    ``activities``, whose groups keep their keys); ``signals_error``: why they could not be
    read, or null."""
    details["signals"] = dict(signals)
    details["signals_error"] = error


def _active(details: dict[str, Any], name: str) -> Any:
    """An activity's ``active`` as the details read it (None when they do not say)."""
    groups = details.get("activities")
    group = groups.get(name) if isinstance(groups, dict) else None
    return group.get("active") if isinstance(group, dict) else None
