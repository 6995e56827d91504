"""Installs the relay's SQL into a database: the hold, the generated reads, the role.

Order: the demo's stand-in tables (``--demo-schema``) → the activities checked against the
database (nothing is written when one is wrong) → ``hold.sql`` → the SQL generated from the
activities → ``roles.sql`` → one read of ``system_stability_activities()`` to prove it runs →
with hint triggers, the hold flag parked (writers stay quiet until a relay listens).
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import errors as pg_errors

from relay.errors import ConfigError, DatabaseUnavailable, RelayError, SchemaMissing
from relay.source.activities.check import check_activities
from relay.source.activities.profiles import DEFAULT_PROFILE, load_profile
from relay.source.activities.spec import Activity
from relay.source.activities.sql import install_script
from relay.source.holdflag import CONFIRM, REQUEST

DEMO_SCHEMA = "demo_schema.sql"
HOLD = "hold.sql"
ACTIVITIES = "activities (generated)"
ROLES = "roles.sql"
HISTORY = "history.sql"
PARKED = "hold flag parked (writers stay quiet until a relay listens)"

# Serialises installs into one database: concurrent CREATE OR REPLACE of the same function
# fails with "tuple concurrently updated". Any fixed number will do; this is b"stabrely".
_INSTALL_LOCK_KEY = 0x7374616272656C79

# Fail rather than queue forever behind a long transaction on the data system's tables (and
# block every writer queued behind us meanwhile).
_LOCK_TIMEOUT = "30s"
_SET_LOCK_TIMEOUT = f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'".encode()

# The channel hold.sql notifies on, written there as a literal; install() puts the
# configured one in its place. The pattern is the config's: no quote can get in.
DEFAULT_CHANNEL = "system_stability"
_CHANNEL_LITERAL = f"'{DEFAULT_CHANNEL}'".encode()
_CHANNEL_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")

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
) -> list[Script]:
    """What an install applies, in order (``db install --print`` writes exactly this)."""
    if not _CHANNEL_PATTERN.fullmatch(channel):
        raise RelayError(f"invalid channel name {channel!r}: lower-case letters, digits, _")
    directory = sql_dir()
    result = [Script(DEMO_SCHEMA, (directory / DEMO_SCHEMA).read_bytes())] if demo_schema else []
    hold = (directory / HOLD).read_bytes().replace(_CHANNEL_LITERAL, f"'{channel}'".encode())
    result.append(Script(HOLD, hold))
    result.append(Script(ACTIVITIES, install_script(activities).encode()))
    result.append(Script(HISTORY, (directory / HISTORY).read_bytes()))
    if roles:
        result.append(Script(ROLES, (directory / ROLES).read_bytes()))
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
) -> list[str]:
    """Check, then apply each script in its own transaction; return the names applied.

    ``park``: leave the hold flag set when there are hint triggers, so writers do not notify
    while no relay listens (the first relay to start polls, ends the hold and drains).

    The triggers notify on ``channel`` (``database.channel`` in the relay's config): one
    channel per database, the last install wins. ``profile`` only names the activities'
    origin in problems.

    Raises ``InstallRefused`` listing what does not fit (nothing is written then),
    ``DatabaseUnavailable`` when the database cannot be reached, ``SchemaMissing`` when an
    object is missing, ``RelayError`` for any other failure. No message contains the
    connection string.
    """
    chosen = tuple(activities) if activities is not None else default_activities()
    plan = scripts(chosen, channel=channel, demo_schema=demo_schema, roles=roles)
    async with await _connect(conninfo) as conn:
        if demo_schema:
            await _apply(conn, plan.pop(0))
        try:
            await _refuse_what_does_not_fit(conn, chosen, profile)
        except psycopg.Error as exc:
            raise RelayError(f"checking the activities failed: {_describe(exc)}") from exc
        for script in plan:
            await _apply(conn, script)
        await _prove_it_runs(conn)
        parked = park and any(activity.hint_triggers for activity in chosen) and await _park(conn)
    applied = [*([DEMO_SCHEMA] if demo_schema else []), *(s.name for s in plan)]
    return [*applied, PARKED] if parked else applied


async def _refuse_what_does_not_fit(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    activities: Sequence[Activity],
    profile: str | None,
) -> None:
    cursor = await conn.execute("SELECT current_user")
    row = await cursor.fetchone()
    assert row is not None
    try:
        problems = await check_activities(
            conn, activities, role=str(row[0]), profile=profile, snippets=True
        )
    finally:
        await conn.rollback()
    if problems:
        raise InstallRefused(problems)


async def _prove_it_runs(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute("SELECT public.system_stability_activities()")
    except psycopg.Error as exc:
        raise RelayError(
            f"installed, but public.system_stability_activities() fails: {_describe(exc)}"
        ) from exc


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
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=False)
    except psycopg.ProgrammingError:
        # The parser's message quotes the offending part of the string, which may be a password.
        raise RelayError("invalid database connection string") from None
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc


async def _apply(conn: psycopg.AsyncConnection[tuple[object, ...]], script: Script) -> None:
    name = script.name
    try:
        async with conn.transaction():
            await conn.execute(_SET_LOCK_TIMEOUT)
            await conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_INSTALL_LOCK_KEY,))
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
