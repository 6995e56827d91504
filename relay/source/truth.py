"""The listener's read: one round trip that is the heartbeat, the reconcile, the hold flag,
the transactions running in the read's own snapshot (for a drain, ``relay/source/hold.py``)
and the queue-usage sample; and the check that the answer names exactly this config's
activities (a missing or NULL one is an error, never a guess)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

from relay.config.activities import Activity
from relay.errors import SchemaMissing
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.source import pg

log = get_logger("relay.source.truth")
Deadline = Callable[[AsyncConnection[Any], Coroutine[Any, Any, Any]], Awaitable[Any]]

PROBE = (
    "SELECT public.system_stability_activities(), "
    "pg_sequence_last_value('public.system_stability_hold'::regclass), "
    "array(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x), "
    "array(SELECT pg_listening_channels()), "
    "pg_notification_queue_usage()"
)
# Committed on its own (autocommit): every later snapshot's horizon is past this id, so it
# lists every transaction that began before it and still runs (pg_snapshot_xip() leaves out
# running ids at or above the horizon).
COMMIT_AN_XID = "SELECT pg_current_xact_id()::text"


@dataclass(frozen=True, slots=True)
class Probe:
    activities: Mapping[str, bool]
    held: bool  # the flag is requested (2), held (1), or cannot be read: poll
    flag_readable: bool
    running: frozenset[str]
    channels: frozenset[str]
    queue_usage: float


class TruthReader:
    """Reads :class:`Probe` on the listener's connection, each query within ``deadline``."""

    def __init__(self, activities: Sequence[Activity], metrics: Metrics, deadline: Deadline):
        self._names = [activity.name for activity in activities]
        self._metrics = metrics
        self._deadline = deadline
        self._flag_unreadable_logged = False

    async def commit_an_xid(self, conn: AsyncConnection[Any]) -> int | None:
        cursor = await self._deadline(conn, conn.execute(COMMIT_AN_XID))
        row = await cursor.fetchone()
        return None if row is None else int(row[0])

    async def read(self, conn: AsyncConnection[Any]) -> Probe:
        self._metrics.truth_queries.inc()
        try:
            cursor = await self._deadline(conn, conn.execute(PROBE))
        except (psycopg.errors.UndefinedFunction, psycopg.errors.UndefinedTable):
            raise SchemaMissing(
                "public.system_stability_activities() or public.system_stability_hold is "
                "missing: run `stability-relay db install`"
            ) from None
        except psycopg.errors.InsufficientPrivilege as error:
            raise SchemaMissing(
                f"{pg.describe_error(error)}: run `stability-relay db install` "
                "(sql/roles.sql grants what the relay needs)"
            ) from None
        row = await cursor.fetchone()
        if row is None or row[0] is None:
            raise SchemaMissing("public.system_stability_activities() returned no answer")
        activities, flag, running, channels, usage = row
        if flag is None and not self._flag_unreadable_logged:
            # Only without SELECT on the sequence (PostgreSQL 18; earlier ones raise).
            self._flag_unreadable_logged = True
            log.warning(
                "hold_flag_unreadable",
                hint="GRANT SELECT ON SEQUENCE public.system_stability_hold TO PUBLIC; "
                "until then the relay polls",
            )
        return Probe(
            activities=self.checked(activities),
            held=flag != 0,
            flag_readable=flag is not None,
            running=frozenset(running),
            channels=frozenset(channels),
            queue_usage=float(usage),
        )

    def checked(self, answer: Any) -> dict[str, bool]:
        """Each configured activity's truth; a missing or NULL one is an error, not a guess."""
        names = self._names
        if not isinstance(answer, dict) or set(answer) != set(names):
            installed = sorted(answer) if isinstance(answer, dict) else answer
            raise SchemaMissing(
                f"the database's activities {installed} are not this config's {sorted(names)}: "
                "run `stability-relay db install` with this config"
            )
        unknown = [name for name in names if not isinstance(answer[name], bool)]
        if unknown:
            raise SchemaMissing(f"activities {unknown} read NULL: their expressions cannot tell")
        return {name: answer[name] for name in names}


__all__ = ["COMMIT_AN_XID", "PROBE", "Probe", "TruthReader"]
