"""Installs the relay's SQL (functions, triggers, role) into a database."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import psycopg
from psycopg import errors as pg_errors

from relay.errors import DatabaseUnavailable, RelayError, SchemaMissing

DEMO_SCHEMA = "demo_schema.sql"
STABILITY = "stability.sql"
ROLES = "roles.sql"

# Serialises installs into one database: concurrent CREATE OR REPLACE of the same function
# fails with "tuple concurrently updated". Any fixed number will do; this is b"stabrely".
_INSTALL_LOCK_KEY = 0x7374616272656C79

# Fail rather than queue forever behind a long transaction on the data system's tables (and
# block every writer queued behind us meanwhile).
_LOCK_TIMEOUT = "30s"
_SET_LOCK_TIMEOUT = f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'".encode()

# The channel stability.sql notifies on, written there as a literal; install() puts the
# configured one in its place. The pattern is the config's: no quote can get in.
DEFAULT_CHANNEL = "system_stability"
_CHANNEL_LITERAL = f"'{DEFAULT_CHANNEL}'".encode()
_CHANNEL_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_MISSING_OBJECT = (
    pg_errors.UndefinedTable,
    pg_errors.UndefinedObject,
    pg_errors.InvalidSchemaName,
    pg_errors.UndefinedColumn,
)


def sql_dir() -> Path:
    """The directory holding the SQL files: inside the package when installed from a wheel."""
    packaged = importlib.resources.files("relay") / "sql"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


async def install(
    conninfo: str,
    *,
    demo_schema: bool = False,
    roles: bool = True,
    channel: str = DEFAULT_CHANNEL,
) -> list[str]:
    """Apply the SQL files in order, each in its own transaction; return the names applied.

    The triggers notify on ``channel`` (``database.channel`` in the relay's config): one
    channel per database, the last install wins.

    Raises ``DatabaseUnavailable`` when the database cannot be reached, ``SchemaMissing`` when
    the data system's tables are absent, ``RelayError`` for any other failure. No message
    contains the connection string.
    """
    if not _CHANNEL_PATTERN.fullmatch(channel):
        raise RelayError(f"invalid channel name {channel!r}: lower-case letters, digits, _")
    names = [DEMO_SCHEMA] if demo_schema else []
    names.append(STABILITY)
    if roles:
        names.append(ROLES)
    directory = sql_dir()
    scripts = [(name, (directory / name).read_bytes()) for name in names]
    scripts = [
        (name, script.replace(_CHANNEL_LITERAL, f"'{channel}'".encode()))
        if name == STABILITY
        else (name, script)
        for name, script in scripts
    ]
    async with await _connect(conninfo) as conn:
        for name, script in scripts:
            await _apply(conn, name, script)
    return names


async def _connect(conninfo: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    try:
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=False)
    except psycopg.ProgrammingError:
        # The parser's message quotes the offending part of the string, which may be a password.
        raise RelayError("invalid database connection string") from None
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc


async def _apply(
    conn: psycopg.AsyncConnection[tuple[object, ...]], name: str, script: bytes
) -> None:
    try:
        async with conn.transaction():
            await conn.execute(_SET_LOCK_TIMEOUT)
            await conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_INSTALL_LOCK_KEY,))
            await conn.execute(script)
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
