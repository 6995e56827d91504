"""The SQL of the signals read: ``public.system_stability_signals(depth_cap integer)``.

Generated from the activities like ``reads.py``'s functions (``SECURITY DEFINER``, ``search_path``
pinned to ``pg_catalog, pg_temp``, every name qualified, revoked from PUBLIC), in a script of
its own that ``db install`` applies after ``roles.sql`` and grants to ``stability_relay``.

One statement, one snapshot: for each activity, over its rows (``relay/config/activities.py``:
the active rows, or an expression activity's details rows),

* ``depth``: how many, exact up to ``depth_cap``; ``depth_cap + 1`` means "more than the cap"
  (each count stops there: ``count(*) FROM (SELECT ... LIMIT depth_cap + 1)``);
* ``oldest_age_s``: seconds since the oldest row's ``age_column`` (null without one, or
  without rows); the function runs with ``TimeZone = 'UTC'``, so a ``timestamp`` column is
  read as UTC;
* ``stalled``: how many rows meet ``stalled``, capped like ``depth`` (null without one).

An expression activity without details has no rows: all three are null. Cost: the counts stop
at the cap; the oldest age reads every row (an index on the age column over the active rows
serves it); the reader bounds the whole statement with ``signals.read_timeout``.

The function's comment carries a fingerprint of its text: a relay refuses signals from a
function generated from another definition (``relay/state/signals.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from relay.config.activities import DOLLAR_TAG, Activity
from relay.source.activities.reads import active_condition, details_source
from relay.source.activities.sql import FINGERPRINT
from relay.source.activities.sqltext import HEADER, MARKER, ident, literal, qualified

FUNCTION = "public.system_stability_signals"
SIGNATURE = f"{FUNCTION}(integer)"
GRANTEE = "stability_relay"
# The relay reads the installed function's comment in the same statement as the signals.
COMMENT_QUERY = (
    "pg_catalog.obj_description("
    f"pg_catalog.to_regprocedure('{SIGNATURE}')::pg_catalog.oid, 'pg_proc')"
)
__all__ = ["FINGERPRINT", "parts", "signals_fingerprint", "signals_script"]


def rows_source(activity: Activity) -> tuple[str, str] | None:
    """The FROM target (alias ``t``) and WHERE clause of the activity's rows, if it has any."""
    if activity.table is not None:
        return qualified(activity.table), active_condition(activity)
    if activity.details is not None:
        return details_source(activity, activity.details)
    return None


def parts(activity: Activity, cap: str = "depth_cap") -> dict[str, str]:
    """The activity's three answers as scalar subqueries, by key (the config key they rest on,
    for problems): ``depth``, ``oldest_age_s``, ``stalled``; null where it has no such thing."""
    source = rows_source(activity)
    if source is None:
        return {"depth": "NULL", "oldest_age_s": "NULL", "stalled": "NULL"}
    table, where = source
    rows = f"FROM {table} AS t WHERE ({where})"
    answers = {
        "depth": f"(SELECT pg_catalog.count(*) FROM (SELECT {rows} LIMIT {cap} + 1) AS r)",
        "oldest_age_s": "NULL",
        "stalled": "NULL",
    }
    if activity.age_column is not None:
        column = f"t.{ident(activity.age_column)}"
        answers["oldest_age_s"] = (
            "(SELECT pg_catalog.round(EXTRACT(epoch FROM pg_catalog.now() "
            f"OPERATOR(pg_catalog.-) pg_catalog.min({column}))::pg_catalog.numeric, 3) {rows})"
        )
    if activity.stalled is not None:
        answers["stalled"] = (
            f"(SELECT pg_catalog.count(*) FROM (SELECT {rows} AND ({activity.stalled}) "
            f"LIMIT {cap} + 1) AS r)"
        )
    return answers


def _function(activities: Sequence[Activity]) -> str:
    entries = []
    for activity in activities:
        fields = ",\n".join(
            f"            {literal(key)}, {sql}" for key, sql in parts(activity).items()
        )
        entries.append(
            f"        {literal(activity.name)}, pg_catalog.jsonb_build_object(\n{fields})"
        )
    body = "    SELECT pg_catalog.jsonb_build_object(\n" + ",\n".join(entries) + "\n    )"
    return (
        f"CREATE OR REPLACE FUNCTION {FUNCTION}(depth_cap integer)\nRETURNS jsonb\n{HEADER}"
        f"SET TimeZone = 'UTC'\nAS {DOLLAR_TAG}\n{body}\n{DOLLAR_TAG};\n"
    )


def signals_fingerprint(activities: Sequence[Activity]) -> str:
    """The generated function's text in 16 hex digits (its comment carries it)."""
    return hashlib.sha256(_function(activities).encode()).hexdigest()[:16]


def signals_script(activities: Sequence[Activity], *, grant: bool = True) -> str:
    """The function, its comment, revoked from PUBLIC and (``grant``, when ``db install``
    applies roles.sql) granted to ``stability_relay``."""
    comment = literal(
        f"{MARKER} depth, oldest age and stalled rows of each activity; "
        f"config {signals_fingerprint(activities)}"
    )
    script = (
        "-- stability-relay: the signals read, generated by `stability-relay db install`.\n"
        + _function(activities)
        + f"COMMENT ON FUNCTION {SIGNATURE} IS {comment};\n"
        + f"REVOKE EXECUTE ON FUNCTION {SIGNATURE} FROM PUBLIC;\n"
    )
    if grant:
        script += f"GRANT EXECUTE ON FUNCTION {SIGNATURE} TO {GRANTEE};\n"
    return script
