"""The relay's one pool for short reads and writes, beside the listener's own connection.

Its users take it openly, as a constructor argument: the details and the indicators
(``relay/state/details.py``), the fresh reads (``relay/state/waits.py``), the history's reads
and writes (``relay/state/history.py``), the signals reader (``relay/state/signals.py``) and
the feeds' enrichment (``relay/fanout/enrich.py``). The estimates of the time left
(``relay/state/eta.py``) read nothing of their own: each details round is their sample.

Bound: ``details.pool_size`` connections, each with ``details.statement_timeout`` as its
statement timeout; a caller waits at most that long for a free connection. The connections
still name themselves ``stability-relay-details`` (what an operator sees in
``pg_stat_activity``) and the pool ``relay-details``.

Shutdown order: every user closes before the pool. A user's ``aclose()`` cancels its reads in
flight (the details rounds, the shared reads, the signals task, the history writer, the feeds'
enrichers) and each gives its connection back as it unwinds; the pool then has only idle
connections to close. Closed first, the pool would fail every read waiting for a connection
with ``PoolClosed``, and the users still running would log and answer that as a database
failure (``signals_read_failed``, ``history_write_failed``, a 503) when nothing is wrong with
the database. In ``relay/app.py``: feeds, the leader's term (its history writer), HTTP
handlers, fresh reads, signals, the estimates' sampler, details, then the pool, each step
bounded by what is left of the shutdown deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, LiteralString

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from relay.config import DatabaseConfig, DetailsConfig
from relay.errors import DatabaseUnavailable
from relay.source import pg

# psycopg_pool's own default, for a close given no timeout.
CLOSE_TIMEOUT = 5.0


class ReadPool:
    """``start()`` then ``aclose(timeout)``; both idempotent, not reopenable."""

    def __init__(
        self,
        database: DatabaseConfig,
        settings: DetailsConfig,
        connector: pg.Connector = pg.DEFAULT_CONNECTOR,
    ) -> None:
        self._database = database
        self._connector = connector
        self._settings = settings
        self._pool: AsyncConnectionPool[Any] | None = None
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a closed read pool cannot be started again")
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
            connection_class=self._connector.connection_class,
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="relay-details",
        )
        await self._pool.open(wait=False)

    async def aclose(self, timeout: float | None = None) -> None:
        """Closes the connections; its users have closed first (module docstring)."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            await self._pool.close(timeout=CLOSE_TIMEOUT if timeout is None else timeout)

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        """The pool itself; :class:`DatabaseUnavailable` while it does not run."""
        if self._pool is None or self._closed:
            # The words of the details service, which owned the pool before (logged reasons).
            raise DatabaseUnavailable("details service is not running")
        return self._pool

    def connection(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A pooled connection, unbounded: the caller bounds it and reads its errors."""
        return self.pool.connection()

    @contextlib.asynccontextmanager
    async def round_trip(
        self,
        within: float,
        read: str,
        needs: str,
        known: Mapping[type[psycopg.Error], str] | None = None,
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for one round trip, all of it within ``within`` seconds (the
        wait for the connection included); any failure is :class:`DatabaseUnavailable`:
        "``read`` timed out", "no database connection for ``needs``", the words ``known``
        gives an error of its kind, else "``read`` failed: ErrorName"."""
        pool = self.pool
        try:
            # The statement timeout bounds the server; this bounds the whole round trip
            # (a half-open pooled connection would otherwise wait for TCP to give up).
            async with asyncio.timeout(within):
                async with pool.connection() as conn:
                    yield conn
        except TimeoutError:
            raise DatabaseUnavailable(f"{read} timed out") from None
        except PoolTimeout:
            raise DatabaseUnavailable(f"no database connection for {needs}") from None
        except psycopg.Error as error:
            for kind, words in (known or {}).items():
                if isinstance(error, kind):
                    raise DatabaseUnavailable(words) from None
            raise DatabaseUnavailable(f"{read} failed: {type(error).__name__}") from None

    async def row(self, query: LiteralString, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """One row of one short query (the details' kind: details, indicators, activities,
        the hint), within twice the statement timeout and a second."""
        async with self.round_trip(
            self._settings.statement_timeout * 2 + 1, "details query", "details", _DETAILS_ERRORS
        ) as conn:
            cursor = await conn.execute(query, params)
            row = await cursor.fetchone()
        assert row is not None
        return tuple(row)


_DETAILS_ERRORS: Mapping[type[psycopg.Error], str] = {
    psycopg.errors.UndefinedFunction: "details functions are missing: run `db install`",
}
