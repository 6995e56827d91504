"""The details API: each activity, whether it is active, and its rows in progress.

The seed's keys (``import_jobs``, ``analytics_tasks``, ``system_stable``) stay as they were;
``activities`` groups the same rows by activity, with labels and totals.

Queries run on a small pool of their own (never on the listener's connection), with a
statement timeout. Single flight plus a short cache: however many requests arrive within
``details.cache``, they cost at most one round of queries (one statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, LiteralString

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from relay.config import DatabaseConfig, DetailsConfig
from relay.errors import DatabaseUnavailable
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.source import pg
from relay.state.eta import SAMPLE_INTERVAL, Estimates
from relay.state.sharedread import SharedRead
from relay.tasks import cancel_and_wait, report_unexpected_exit

log = get_logger("relay.state.details")

# One statement, one snapshot: the lists and the verdict agree with each other. The function
# is generated from the activities (relay/source/activities/sql.py); with it, what the estimates of
# the time left rest on (relay/state/eta.py), which are put in once per round. Bound: at most
# `details.max_items` rows per activity (each activity also says its `total`).
QUERY = (
    "SELECT public.system_stability_details(%s::integer)::text, "
    "public.system_stability_typical()::text"
)
# Each activity's own JSON (statbus's is_importing() and the deriving ones): what a client
# re-reads after a feed's connect event: read after each request arrived, shared by the
# requests in line (relay/state/sharedread.py).
INDICATORS = "SELECT public.system_stability_indicators()::text"
ACTIVITIES = "SELECT public.system_stability_activities()::text"


class Details:
    """Serves ``GET /api/system-status/details``. ``start()`` then ``aclose()``."""

    def __init__(
        self,
        database: DatabaseConfig,
        settings: DetailsConfig,
        metrics: Metrics,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._database = database
        self._settings = settings
        self._metrics = metrics
        self._pool: AsyncConnectionPool[Any] | None = None
        self._cached: bytes | None = None
        self._cached_at = 0.0
        self._inflight: asyncio.Future[bytes] | None = None
        self._indicators = SharedRead(
            lambda: self._read(INDICATORS), name="indicators", max_waiting=10_000
        )
        self._closed = False
        self._estimates = Estimates()
        # The estimate of the last round (for webhooks and waits): overall, else the longest
        # of the activities'.
        self.latest_eta: dict[str, Any] | None = None
        # While the system is busy, a round every SAMPLE_INTERVAL: each is a progress sample
        # for the estimates, whether or not anyone asks for the details.
        self._busy = busy
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("closed details service cannot be started again")
        if self._pool is not None:
            return
        timeout_ms = round(self._settings.statement_timeout * 1000)
        self._pool = AsyncConnectionPool(
            self._database.dsn,
            min_size=0,
            max_size=self._settings.pool_size,
            timeout=self._settings.statement_timeout,
            kwargs=pg.connect_options(
                self._database,
                "stability-relay-details",
                server_options=f"-c statement_timeout={timeout_ms}",
            ),
            # Gets past a pooler that refuses `options` (relay/source/pg.py), as every
            # relay connection does.
            connection_class=pg.RelayConnection,
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="relay-details",
        )
        await self._pool.open(wait=False)
        self._sampler = asyncio.create_task(self._sample(), name="relay-details-sampler")
        self._sampler.add_done_callback(report_unexpected_exit)

    async def aclose(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._sampler)
        await cancel_and_wait(self._inflight)  # shielded from its callers, not from the close
        await self._indicators.aclose()
        if self._pool is not None:
            await self._pool.close(timeout=timeout)

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            if self._busy():
                with contextlib.suppress(DatabaseUnavailable):
                    await self.fetch()

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        """The pool, for other short reads and writes (the history)."""
        if self._pool is None or self._closed:
            raise DatabaseUnavailable("details service is not running")
        return self._pool

    async def fetch(self) -> bytes:
        """The JSON body: from the cache, from the query in flight, or from a new query."""
        if self._cached is not None and time.monotonic() - self._cached_at < self._settings.cache:
            return self._cached
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._query(), name="relay-details-query")
            self._inflight.add_done_callback(self._landed)
        # Shielded: a client that goes away must not cancel the query the others wait for.
        return await asyncio.shield(self._inflight)

    def _landed(self, future: asyncio.Future[bytes]) -> None:
        self._inflight = None
        if not future.cancelled() and future.exception() is None:
            self._cached, self._cached_at = future.result(), time.monotonic()

    async def _query(self) -> bytes:
        """One round: the details and what estimates rest on; the estimates put in (so each
        round is one progress sample of every job)."""
        self._metrics.details_queries.inc()
        row = await self._row(QUERY, (self._settings.max_items,))
        details, typical = json.loads(row[0]), json.loads(row[1] or "{}")
        annotated = self._estimates.annotate(details, typical)
        self.latest_eta = annotated.get("eta") or _longest(annotated.get("activities"))
        return json.dumps(annotated, separators=(",", ":")).encode()

    async def read_activities(self) -> dict[str, Any]:
        """Every activity's truth, read now on this pool (a fresh read, relay/state/waits.py)."""
        body = await self._read(ACTIVITIES)
        parsed = json.loads(body)
        if not isinstance(parsed, dict):
            raise DatabaseUnavailable("public.system_stability_activities() gave no object")
        return parsed

    async def _read(self, query: LiteralString, params: tuple[Any, ...] = ()) -> bytes:
        row = await self._row(query, params)
        return str(row[0]).encode()

    async def _row(self, query: LiteralString, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        if self._pool is None or self._closed:
            raise DatabaseUnavailable("details service is not running")
        try:
            # The statement timeout bounds the server; this bounds the whole round trip
            # (a half-open pooled connection would otherwise wait for TCP to give up).
            async with asyncio.timeout(self._settings.statement_timeout * 2 + 1):
                async with self._pool.connection() as conn:
                    cursor = await conn.execute(query, params)
                    row = await cursor.fetchone()
        except TimeoutError:
            raise DatabaseUnavailable("details query timed out") from None
        except PoolTimeout:
            raise DatabaseUnavailable("no database connection for details") from None
        except psycopg.errors.UndefinedFunction:
            raise DatabaseUnavailable("details functions are missing: run `db install`") from None
        except psycopg.Error as error:
            raise DatabaseUnavailable(f"details query failed: {type(error).__name__}") from None
        assert row is not None
        return tuple(row)

    async def handle(self, _request: web.Request) -> web.Response:
        return await self._answer(self.fetch())

    async def indicators(self, _request: web.Request) -> web.Response:
        """``GET /api/system-status/indicators``: read after the request arrived (shared by
        the requests in line: after a feed's resync, every client re-reads at once)."""
        return await self._answer(self._indicators.read())

    async def _answer(self, body_of: Awaitable[bytes]) -> web.Response:
        try:
            body = await body_of
        except DatabaseUnavailable as error:
            log.warning("details_unavailable", reason=str(error))
            return web.json_response(
                {"error": "status details are unavailable: the database cannot be reached"},
                status=503,
                headers={"Retry-After": "5", "Cache-Control": "no-store"},
            )
        return web.Response(
            body=body, content_type="application/json", headers={"Cache-Control": "no-store"}
        )


def _longest(activities: Any) -> dict[str, Any] | None:
    if not isinstance(activities, dict):
        return None
    found = [g["eta"] for g in activities.values() if isinstance(g, dict) and g.get("eta")]
    return max(found, key=lambda e: e["high_s"]) if found else None
