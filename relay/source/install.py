"""Installs the relay's SQL into a database: the hold, the generated reads, the role.

Order: the demo's stand-in tables (``--demo-schema``) → the activities checked against the
database, their signals' parts planned too (nothing is written when one is wrong) →
``hold.sql`` → the SQL generated from the activities → ``roles.sql`` → the signals read
(``relay/source/activities/signals.py``, granted to ``stability_relay`` when roles are
applied) → one read of ``system_stability_activities()`` and of the signals to prove they run →
each table activity's read planned, for the advice on an index (``read_scans``) → with hint
triggers, the hold flag parked (writers stay quiet until a relay listens).
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from relay.config.activities import Activity, EnrichRead
from relay.config.profiles import CUSTOM, DEFAULT_PROFILE, load_profile
from relay.errors import ConfigError, DatabaseUnavailable, RelayError, SchemaMissing
from relay.source.activities.check import check_activities, check_enrichers
from relay.source.activities.indexes import index_suggestion
from relay.source.activities.readcost import READ_SCAN_ROWS, ReadScan, read_scans
from relay.source.activities.signals import FUNCTION, parts, signals_script
from relay.source.activities.sql import install_script
from relay.source.holdflag import CONFIRM, REQUEST

DEMO_SCHEMA = "demo_schema.sql"
HOLD = "hold.sql"
ACTIVITIES = "activities (generated)"
ROLES = "roles.sql"
HISTORY = "history.sql"
SIGNALS = "signals (generated)"
PARKED = "hold flag parked (writers stay quiet until a relay listens)"

# Serialises installs into one database: concurrent CREATE OR REPLACE of the same function
# fails with "tuple concurrently updated". Any fixed number will do; this is b"stabrely".
_INSTALL_LOCK_KEY = 0x7374616272656C79

# Fail rather than queue forever behind a long transaction on the data system's tables (and
# block every writer queued behind us meanwhile).
_LOCK_TIMEOUT = "30s"

# Every script runs with names resolved from pg_catalog only. In a database where another
# role may CREATE in a schema on the installer's search_path (public before PostgreSQL 15,
# and after pg_upgrade), that role could plant an exact-type overload (public.unnest(text[]),
# an "=" on an enum's type) that beats the built-in polymorphic one: it would run as the
# installer, and forever after from a view that bound it (CVE-2018-1058). Our objects are
# all named with their schema.
SEARCH_PATH = "pg_catalog, pg_temp"
_SESSION_SEARCH_PATH = f"SET search_path = {SEARCH_PATH}".encode()
# What each script's transaction begins with, applied or printed (`db install --print`).
PREAMBLE = (
    f"SET LOCAL search_path = {SEARCH_PATH};\n"
    f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}';\n"
    f"SELECT pg_catalog.pg_advisory_xact_lock({_INSTALL_LOCK_KEY}::pg_catalog.int8);\n"
)

# The channel hold.sql notifies on, written there as a literal; install() puts the
# configured one in its place. The pattern is the config's: no quote can get in.
DEFAULT_CHANNEL = "system_stability"
_CHANNEL_LITERAL = f"'{DEFAULT_CHANNEL}'".encode()
_CHANNEL_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Every object `db install` creates has one of these names: functions in public, and
# relations (views in the activities' schemas; the hold's sequence and the history in public).
_FOREIGN_OBJECTS = r"""
WITH RECURSIVE mine (oid) AS (
    SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user
    UNION
    SELECT m.roleid FROM pg_catalog.pg_auth_members AS m JOIN mine ON m.member = mine.oid
)
SELECT o.kind, o.name, pg_catalog.pg_get_userbyid(o.owner)
FROM (
    SELECT 'function' AS kind, p.oid::pg_catalog.regprocedure::pg_catalog.text AS name,
           p.proowner AS owner
    FROM pg_catalog.pg_proc AS p
    WHERE p.pronamespace = 'public'::pg_catalog.regnamespace
      AND (p.proname LIKE 'system\_stability\_%' OR p.proname IN (
           'is_system_stable', 'get_import_jobs_in_progress', 'get_analytics_tasks_in_progress'))
    UNION ALL
    SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'S' THEN 'sequence' WHEN 'r' THEN 'table'
                WHEN 'i' THEN 'index' ELSE 'relation' END,
           c.oid::pg_catalog.regclass::pg_catalog.text, c.relowner
    FROM pg_catalog.pg_class AS c
    WHERE c.relname LIKE 'system\_stability\_%'
      AND c.relnamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace,
                                 'information_schema'::pg_catalog.regnamespace)
) AS o
JOIN pg_catalog.pg_roles AS owner ON owner.oid = o.owner
-- Not pg_has_role(): it says yes to a superuser for every role. A superuser's object is
-- safe (a superuser could do anything anyway); another login's is not.
WHERE o.owner NOT IN (SELECT mine.oid FROM mine) AND NOT owner.rolsuper
ORDER BY o.kind, o.name
"""

_MISSING_OBJECT = (
    pg_errors.UndefinedTable,
    pg_errors.UndefinedObject,
    pg_errors.InvalidSchemaName,
    pg_errors.UndefinedColumn,
    pg_errors.UndefinedFunction,
)


class InstallRefused(ConfigError):
    """The activities do not fit the database: every problem, with its key path."""


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    text: bytes


def printed(script: Script) -> str:
    """One script as ``db install --print`` writes it: the same transaction as applied."""
    return f"-- ==== {script.name} ====\nBEGIN;\n{PREAMBLE}{script.text.decode()}\nCOMMIT;\n\n"


def suggested_indexes(activities: Sequence[Activity]) -> str:
    """``db install --print``'s last block, comments only: per table activity, the index
    that keeps its read cheap as the table grows. Not applied: ``CREATE INDEX CONCURRENTLY``
    cannot run inside a transaction block (each script is one), and printing cannot see the
    tables' sizes to tell whether it is needed."""
    tables = [activity for activity in activities if activity.table is not None]
    if not tables:
        return ""
    lines = [
        "-- ==== suggested indexes (not applied) ====",
        "-- Each table activity's read of its active rows runs on every hint and every",
        "-- reconcile. Without an index on its state column it scans the table, whose finished",
        "-- rows only grow (58 ms per read at 2 million rows, 0.08 ms with the index). Printing",
        "-- cannot see the tables' sizes: `db install` (connected) warns when a table has more",
        f"-- than {READ_SCAN_ROWS:,} rows and the read would scan it. CREATE INDEX CONCURRENTLY",
        "-- does not block writers but cannot run inside a transaction block: run each on its",
        "-- own (psql runs each statement in its own transaction), as the table's owner.",
    ]
    for activity in tables:
        statement, note = index_suggestion(activity)
        lines.append(f"-- {activity.name} ({activity.table}):")
        if note:
            lines.append(f"--   (the filter: {note})")
        lines.append(f"-- suggested: {statement}" if statement else "-- suggested: none")
    return "\n".join(lines) + "\n"


def sql_dir() -> Path:
    """The directory holding the SQL files: inside the package when installed from a wheel."""
    packaged = importlib.resources.files("relay") / "sql"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def default_activities() -> tuple[Activity, ...]:
    return load_profile(DEFAULT_PROFILE).activities


def scripts(
    activities: Sequence[Activity],
    *,
    channel: str = DEFAULT_CHANNEL,
    demo_schema: bool = False,
    roles: bool = True,
    enrichers: Sequence[EnrichRead] = (),
) -> list[Script]:
    """What an install applies, in order (``db install --print`` writes exactly this)."""
    if not _CHANNEL_PATTERN.fullmatch(channel):
        raise RelayError(f"invalid channel name {channel!r}: lower-case letters, digits, _")
    directory = sql_dir()
    result = [Script(DEMO_SCHEMA, (directory / DEMO_SCHEMA).read_bytes())] if demo_schema else []
    hold = (directory / HOLD).read_bytes().replace(_CHANNEL_LITERAL, f"'{channel}'".encode())
    result.append(Script(HOLD, hold))
    result.append(Script(ACTIVITIES, install_script(activities, enrichers).encode()))
    result.append(Script(HISTORY, (directory / HISTORY).read_bytes()))
    if roles:
        result.append(Script(ROLES, (directory / ROLES).read_bytes()))
    # After roles.sql, which creates the role it is granted to.
    result.append(Script(SIGNALS, signals_script(activities, grant=roles).encode()))
    return result


async def install(
    conninfo: str,
    *,
    activities: Sequence[Activity] | None = None,
    profile: str | None = None,
    demo_schema: bool = False,
    roles: bool = True,
    channel: str = DEFAULT_CHANNEL,
    park: bool = True,
    enrichers: Sequence[EnrichRead] = (),
    scans: list[ReadScan] | None = None,
) -> list[str]:
    """Check, then apply each script in its own transaction; return the names applied.

    ``park``: leave the hold flag set when there are hint triggers, so writers do not notify
    while no relay listens (the first relay to start polls, ends the hold and drains).

    The triggers notify on ``channel`` (``database.channel`` in the relay's config): one
    channel per database, the last install wins. ``profile`` only names the activities'
    origin in problems. ``enrichers``: the feeds' enrich functions (``Config.enrichers``),
    generated with the activities; the tables they read are checked like the activities'.
    ``scans``: filled with each table activity whose read would scan a large table (advice,
    not a refusal: the install goes on).

    Raises ``InstallRefused`` listing what does not fit (nothing is written then),
    ``DatabaseUnavailable`` when the database cannot be reached, ``SchemaMissing`` when an
    object is missing, ``RelayError`` for any other failure. No message contains the
    connection string.
    """
    chosen = tuple(activities) if activities is not None else default_activities()
    plan = scripts(
        chosen, channel=channel, demo_schema=demo_schema, roles=roles, enrichers=enrichers
    )
    async with await _connect(conninfo) as conn:
        if demo_schema:
            await _apply(conn, plan.pop(0))
        try:
            await _refuse_what_does_not_fit(conn, chosen, profile, enrichers)
        except psycopg.Error as exc:
            raise RelayError(f"checking the activities failed: {_describe(exc)}") from exc
        for script in plan:
            await _apply(conn, script)
        await _prove_it_runs(conn)
        if scans is not None:
            scans += await _read_scans(conn, chosen)
        parked = park and any(activity.hint_triggers for activity in chosen) and await _park(conn)
    applied = [*([DEMO_SCHEMA] if demo_schema else []), *(s.name for s in plan)]
    return [*applied, PARKED] if parked else applied


async def _refuse_what_does_not_fit(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    activities: Sequence[Activity],
    profile: str | None,
    enrichers: Sequence[EnrichRead] = (),
) -> None:
    cursor = await conn.execute("SELECT current_user")
    row = await cursor.fetchone()
    assert row is not None
    try:
        problems = await foreign_objects(conn)
        problems += await check_activities(
            conn, activities, role=str(row[0]), profile=profile, snippets=True
        )
        problems += await check_enrichers(
            conn, enrichers, role=str(row[0]), profile=profile, snippets=True
        )
        if not problems:  # the parts rest on tables and snippets checked above
            problems += await signal_problems(conn, activities, profile)
    finally:
        await conn.rollback()
    if problems:
        raise InstallRefused(problems)


async def foreign_objects(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Objects with the relay's names that the installing role does not own, one problem each.

    ``CREATE OR REPLACE`` by a superuser keeps another owner's function as it is owned, and
    ``IF NOT EXISTS`` keeps another's sequence or table: that role could then change what the
    relay reads, or set the hold. An overload of one of our functions (the same name, other
    argument types) is a trap for any caller whose argument types fit it better. None is
    ours to drop: the installer looks at who made it, and why."""
    cursor = await conn.execute(_FOREIGN_OBJECTS)
    return [
        f"{kind} {name} is owned by role {owner!r}, not by the installing role: it has one "
        f"of the relay's names and could change what the relay reads or runs; check who made "
        f"it and drop it (DROP {kind.upper()} {name}), or install as {owner!r}"
        for kind, name, owner in await cursor.fetchall()
    ]


async def signal_problems(
    conn: psycopg.AsyncConnection[Any], activities: Sequence[Activity], profile: str | None
) -> list[str]:
    """Each activity's signals part (its ``age_column``'s age, its ``stalled`` count) planned,
    never executed, in the functions' ``search_path``: one problem per part that does not
    compile, with its key path. Leaves the connection's transaction for the caller to end."""
    problems: list[str] = []
    origin = f' (profile "{profile}")' if profile not in (None, CUSTOM) else ""
    for index, activity in enumerate(activities):
        keyed = {"oldest_age_s": "age_column", "stalled": "stalled"}
        for part, sql in parts(activity, cap="1").items():
            key = keyed.get(part)
            if key is None or sql == "NULL":
                continue
            try:
                async with conn.transaction(force_rollback=True):
                    # As the function runs: its search_path and time zone.
                    await conn.execute(f"SET LOCAL search_path = {SEARCH_PATH}".encode())
                    await conn.execute(b"SET LOCAL TimeZone = 'UTC'")
                    await conn.execute(f"EXPLAIN SELECT {sql}".encode())
            except psycopg.Error as exc:
                if conn.broken:
                    raise
                problems.append(f"activities[{index}].{key}{origin}: {_describe(exc)}")
    return problems


async def _prove_it_runs(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    for call in ("public.system_stability_activities()", f"{FUNCTION}(1)"):
        try:
            async with conn.transaction(force_rollback=True):
                await conn.execute(f"SELECT {call}".encode())
        except psycopg.Error as exc:
            raise RelayError(f"installed, but {call} fails: {_describe(exc)}") from exc


async def _read_scans(
    conn: psycopg.AsyncConnection[tuple[object, ...]], activities: Sequence[Activity]
) -> list[ReadScan]:
    """Advice only: a failure to plan is no reason to fail an install that is done."""
    try:
        return await read_scans(conn, activities)
    except psycopg.Error:
        if not conn.broken:
            await conn.rollback()
        return []


async def _park(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> bool:
    """The two steps of a hold, each committed: relays running now hear of it and poll.
    Best effort (the install is done either way): a relay taking or ending a hold at this
    moment holds the hold lock."""
    try:
        for statement in (REQUEST, CONFIRM):
            async with conn.transaction():
                await conn.execute(statement)
    except psycopg.Error:
        if conn.broken:
            return False
        await conn.rollback()
        return False
    return True


async def _connect(conninfo: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    try:
        conn = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=False, prepare_threshold=None
        )
    except psycopg.ProgrammingError:
        # The parser's message quotes the offending part of the string, which may be a password.
        raise RelayError("invalid database connection string") from None
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc
    try:
        # The session's search_path too: the checks before the scripts, and the proof after.
        await conn.execute(_SESSION_SEARCH_PATH)
        await conn.commit()
    except BaseException:
        await conn.close()
        raise
    return conn


async def _apply(conn: psycopg.AsyncConnection[tuple[object, ...]], script: Script) -> None:
    name = script.name
    try:
        async with conn.transaction():
            await conn.execute(PREAMBLE.encode())
            await conn.execute(script.text)
    except _MISSING_OBJECT as exc:
        raise SchemaMissing(f"{name}: {_describe(exc)}") from exc
    except pg_errors.LockNotAvailable as exc:
        raise RelayError(
            f"{name}: timed out after {_LOCK_TIMEOUT} waiting for a table lock; "
            "a long transaction holds it, retry later"
        ) from exc
    except psycopg.Error as exc:
        if conn.broken:
            raise DatabaseUnavailable(f"{name}: lost the database connection: {exc}") from exc
        raise RelayError(f"{name}: {_describe(exc)}") from exc


def _describe(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary or str(exc)
    return f"{primary} [{exc.sqlstate}]" if exc.sqlstate else primary
