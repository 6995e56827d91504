"""No silent wrongness: the activities checked against the database, every problem listed.

Run by ``db install`` (as the installing role, which will own the functions) and by the
relay at the start of every listener session (for the role that owns the installed
functions). Each problem names its key path and, where the database can be put right,
the statement that does it. What is checked:

* the installed functions are this config's (same names, same fingerprint: ``sql.py``);
* every table exists, and the reading role sees every row of it (``privileges.py``);
* a table activity's state column exists, and each active state is a value of its enum;
* the same for the tables the feeds' enrich functions read (:func:`check_enrichers`);
* at install only, each SQL snippet compiles in the functions' ``search_path`` (and an
  expression is boolean): planned, never executed.

A relay's start also logs the advice of ``readcost.py`` on reads that would scan a large table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

from relay.config.activities import Activity, EnrichRead, split_name
from relay.config.profiles import CUSTOM
from relay.errors import SchemaMismatch, SchemaMissing
from relay.source.activities.privileges import RELATION, check_table
from relay.source.activities.readcost import log_read_scans_once
from relay.source.activities.reads import active_condition, details_source
from relay.source.activities.sql import FINGERPRINT, fingerprint
from relay.source.activities.sqltext import SEARCH_PATH, qualified

BOOLEAN_OID = 16
JSON_OIDS = (114, 3802)  # json, jsonb
UNRESOLVED_HINT = (
    " (name every object with its schema: the functions run with search_path pg_catalog, pg_temp)"
)

_COLUMN = f"""
SELECT ty.typtype = 'e' AS is_enum,
       pg_catalog.format_type(a.atttypid, NULL) AS type_name,
       array(SELECT e.enumlabel::text FROM pg_catalog.pg_enum AS e
             WHERE e.enumtypid = a.atttypid ORDER BY e.enumsortorder) AS labels
FROM pg_catalog.pg_attribute AS a
JOIN pg_catalog.pg_type AS ty ON ty.oid = a.atttypid
WHERE a.attrelid = ({RELATION}) AND a.attname = %(column)s
  AND a.attnum > 0 AND NOT a.attisdropped
"""

INSTALLED = """
SELECT public.system_stability_activities(),
       pg_catalog.obj_description(
           'public.system_stability_activities()'::pg_catalog.regprocedure, 'pg_proc')
"""

OWNER_OF_FUNCTIONS = """
SELECT pg_catalog.pg_get_userbyid(p.proowner)
FROM pg_catalog.pg_proc AS p
WHERE p.oid OPERATOR(pg_catalog.=)
      pg_catalog.to_regprocedure('public.system_stability_activities()')::pg_catalog.oid
"""


@dataclass(frozen=True, slots=True)
class Where:
    """How problems name an activity: its key path, and the profile it came from."""

    index: int
    profile: str | None

    def path(self, key: str) -> str:
        named = self.profile not in (None, CUSTOM)
        origin = f' (profile "{self.profile}")' if named else ""
        return f"activities[{self.index}].{key}{origin}"


async def check_activities(
    conn: AsyncConnection[Any],
    activities: Sequence[Activity],
    *,
    role: str,
    profile: str | None = None,
    snippets: bool = False,
) -> list[str]:
    """Every problem, as ``key.path: message`` lines; empty when the config is right."""
    problems: list[str] = []
    for index, activity in enumerate(activities):
        where = Where(index, profile)
        missing = await _check_tables(conn, activity, where, role, problems)
        if activity.table is not None and activity.table not in missing:
            await _check_states(conn, activity, where, problems)
        if snippets and not missing:
            await _check_snippets(conn, activity, where, problems)
    return problems


async def verify_installed(
    conn: AsyncConnection[Any], activities: Sequence[Activity], profile: str | None
) -> None:
    """At a relay's start: the installed functions are this config's, and their owner sees
    everything the activities read.

    Raises :class:`SchemaMissing` when nothing is installed, :class:`SchemaMismatch` with
    every problem otherwise. (Every read checks the activities' names again:
    ``relay/source/listener.py``.)
    """
    owner = await functions_owner(conn)
    if owner is None:
        raise SchemaMissing(
            "public.system_stability_activities() is missing: run `stability-relay db install`"
        )
    problems = await _installed_config(conn, activities)
    problems += await check_activities(conn, activities, role=owner, profile=profile)
    if problems:
        raise SchemaMismatch(problems)
    await log_read_scans_once(conn, activities, profile)


async def _installed_config(
    conn: AsyncConnection[Any], activities: Sequence[Activity]
) -> list[str]:
    """The installed SQL was generated from these activities: same names, same fingerprint."""
    cursor = await conn.execute(INSTALLED)
    row = await cursor.fetchone()
    answer, comment = row if row else (None, None)
    installed = sorted(answer) if isinstance(answer, dict) else []
    configured = sorted(activity.name for activity in activities)
    if installed != configured:
        return [
            f"activities: the database has {installed or 'none'} installed, this config has "
            f"{configured}: run `stability-relay db install` with this config"
        ]
    found = FINGERPRINT.search(comment or "")
    if found is None or found.group(1) != fingerprint(activities):
        return [
            "activities: the installed SQL was generated from another definition of them (or "
            "by an older relay): run `stability-relay db install` with this config"
        ]
    return []


async def functions_owner(conn: AsyncConnection[Any]) -> str | None:
    """The role the installed functions run as; None when they are not installed."""
    cursor = await conn.execute(OWNER_OF_FUNCTIONS)
    row = await cursor.fetchone()
    return str(row[0]) if row else None


def _table_key(activity: Activity, table: str) -> str:
    if table == activity.table:
        return "table"
    if table in activity.tables:
        return f"tables[{activity.tables.index(table)}]"
    return "details.table"


async def _check_tables(
    conn: AsyncConnection[Any], activity: Activity, where: Where, role: str, problems: list[str]
) -> set[str]:
    missing: set[str] = set()
    for table in activity.read_tables:
        key = where.path(_table_key(activity, table))
        if not await check_table(conn, table, key, role, problems):
            missing.add(table)
    return missing


async def check_enrichers(
    conn: AsyncConnection[Any],
    enrichers: Sequence[EnrichRead],
    *,
    role: str,
    profile: str | None = None,
    snippets: bool = False,
) -> list[str]:
    """The feeds' enrich reads, as the activities are checked: every table they read exists
    and ``role`` sees every row of it (a function that cannot see a row would send nothing for
    it, silently); at install, the row expression and the joins compile and give JSON."""
    problems: list[str] = []
    named = profile not in (None, CUSTOM)
    origin = f' (profile "{profile}")' if named else ""
    for read in enrichers:
        missing = False
        for index, table in enumerate(read.tables):
            part = "table" if index == 0 else f"joins[{index - 1}].table"
            key = f'enrich read "{read.name}".{part}{origin}'
            missing |= not await check_table(conn, table, key, role, problems)
        if snippets and not missing:
            joins = "".join(
                f" LEFT JOIN {qualified(join.table)} AS {join.alias} ON ({join.condition})"
                for join in read.joins
            )
            query = f"SELECT ({read.row}) FROM {qualified(read.table)} AS t{joins} LIMIT 0"
            key = f'enrich read "{read.name}".row{origin}'
            described = await _plan(conn, query, key, problems)
            if described is not None and described not in JSON_OIDS:
                problems.append(f"{key}: must be json or jsonb")
    return problems


async def _check_states(
    conn: AsyncConnection[Any], activity: Activity, where: Where, problems: list[str]
) -> None:
    assert activity.table is not None
    if not activity.active_states:  # the filter alone: no state column is read
        return
    schema, name = split_name(activity.table)
    params = {"schema": schema, "name": name, "column": activity.state_column}
    cursor = await conn.execute(_COLUMN, params)
    row = await cursor.fetchone()
    if row is None:
        problems.append(
            f'{where.path("state_column")}: column "{activity.state_column}" of '
            f"{activity.table} does not exist"
        )
        return
    is_enum, type_name, labels = row
    if not is_enum:
        return
    for position, state in enumerate(activity.active_states):
        if state not in labels:
            problems.append(
                f'{where.path(f"active_states[{position}]")}: "{state}" is not a value of '
                f"{type_name} (its values: {', '.join(labels)})"
            )


async def _check_snippets(
    conn: AsyncConnection[Any], activity: Activity, where: Where, problems: list[str]
) -> None:
    if activity.expression is not None:
        query = f"SELECT ({activity.expression}) LIMIT 0"
        described = await _plan(conn, query, where.path("expression"), problems)
        if described is not None and described != BOOLEAN_OID:
            problems.append(
                f"{where.path('expression')}: must be boolean; add ::boolean if it is text "
                "such as ->>'active'"
            )
    if activity.indicator is not None:
        described = await _plan(
            conn, f"SELECT ({activity.indicator}) LIMIT 0", where.path("indicator"), problems
        )
        if described is not None and described not in JSON_OIDS:
            problems.append(f"{where.path('indicator')}: must be json or jsonb")
    if activity.table is not None and activity.filter:
        query = f"SELECT FROM {qualified(activity.table)} AS t WHERE {active_condition(activity)}"
        await _plan(conn, query + " LIMIT 0", where.path("filter"), problems)
    details = activity.details
    if details is not None:
        source, condition = details_source(activity, details)
        fields = ", ".join(f"({expression})" for expression in details.fields.values())
        order = f" ORDER BY {details.order_by}" if details.order_by else ""
        query = f"SELECT {fields} FROM {source} AS t WHERE {condition}{order} LIMIT 0"
        await _plan(conn, query, where.path("details"), problems)


async def _plan(
    conn: AsyncConnection[Any], query: str, key: str, problems: list[str]
) -> int | None:
    """Plan ``query`` in the functions' search_path; the first column's type, or None."""
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(SEARCH_PATH)
            cursor = await conn.execute(query.encode())
    except psycopg.Error as error:
        message = error.diag.message_primary or str(error)
        unresolved = error.sqlstate in ("42883", "42P01", "42704")
        hint = UNRESOLVED_HINT if unresolved else ""
        problems.append(f"{key}: {message}{hint}")
        return None
    description = cursor.description
    return description[0].type_code if description else None
