"""The relay's SQL and its roles against a real PostgreSQL: pinned search paths, what writers,
the relay's role and other roles may call, read and set."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest
from psycopg import sql

from relay.source.activities.hints import hint_rows_function
from tests.source.sql_support import (
    CHANNEL,
    HELD,
    HOLD_FUNCTIONS,
    IMPORT_JOB_HINT,
    NO_HOLD,
    PINNED_SEARCH_PATH,
    REQUESTED,
    SECURITY_DEFINER_FUNCTIONS,
    TASKS_HINT,
    Conn,
    HintsAfter,
    confirm_hold,
    hold_flag,
    is_stable,
    json_rows,
    release_hold,
    request_hold,
    take_hold,
)

# What writers' statements call: hold.sql's and each table's hint function.
WRITERS_FUNCTIONS = [
    "system_stability_hint",
    "system_stability_notify",
    *(
        hint_rows_function(table).split(".")[1]
        for table in ("public.import_job", "worker.command_registry", "worker.tasks")
    ),
]


async def test_relay_functions_pin_their_search_path(conn: Conn) -> None:
    cursor = await conn.execute(
        """
        SELECT proname, prosecdef, proconfig FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace AND proname = ANY(%s) ORDER BY proname
        """,
        ([*SECURITY_DEFINER_FUNCTIONS, *WRITERS_FUNCTIONS],),
    )
    rows = {name: (secdef, config) for name, secdef, config in await cursor.fetchall()}
    assert set(rows) == {*SECURITY_DEFINER_FUNCTIONS, *WRITERS_FUNCTIONS}
    for name in SECURITY_DEFINER_FUNCTIONS:
        secdef, config = rows[name]
        assert secdef is True, name
        assert config[0] == PINNED_SEARCH_PATH[0], name
        # The hold functions wait at most a second for each other's advisory lock.
        hold_function = name in HOLD_FUNCTIONS
        assert config[1:] == (["lock_timeout=1s"] if hold_function else []), name
    # Deliberately neither: both cost every writer's every statement (the benchmark cited in
    # sql/hold.sql). It runs with the writer's rights and qualifies every name instead.
    for name in WRITERS_FUNCTIONS:
        assert rows[name] == (False, None), name


@pytest.fixture
async def login_role(conn: Conn) -> AsyncIterator[Callable[[bool], Awaitable[str]]]:
    """Create login roles, in or out of stability_relay; drop them afterwards."""
    created: list[str] = []

    async def create(relay_member: bool) -> str:
        name = f"relay_test_{uuid.uuid4().hex[:12]}"
        membership = sql.SQL("IN ROLE stability_relay" if relay_member else "")
        await conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN {}").format(sql.Identifier(name), membership)
        )
        created.append(name)
        return name

    yield create
    for name in created:
        role = sql.Identifier(name)
        await conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(role, role))


async def _table_writer(conn: Conn, login_role: Callable[[bool], Awaitable[str]]) -> str:
    """A login role that may write tasks and import jobs, and nothing more."""
    user = await login_role(False)
    role = sql.Identifier(user)
    await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA worker TO {}").format(role))
    await conn.execute(
        sql.SQL(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON worker.tasks, public.import_job TO {}"
        ).format(role)
    )
    return user


async def test_a_writer_with_only_table_privileges_can_write_held_or_not(
    db_dsn: str,
    conn: Conn,
    hints_after: HintsAfter,
    login_role: Callable[[bool], Awaitable[str]],
) -> None:
    """It needs no grant on the flag or the registry; it reads the flag as PUBLIC may."""
    writer_dsn = psycopg.conninfo.make_conninfo(db_dsn, user=await _table_writer(conn, login_role))
    writes = [
        (
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')",
            TASKS_HINT,
        ),
        ("UPDATE worker.tasks SET state = 'processing'", TASKS_HINT),
        ("DELETE FROM worker.tasks", TASKS_HINT),
        (
            "INSERT INTO public.import_job (slug, state) VALUES ('a', 'preparing_data')",
            IMPORT_JOB_HINT,
        ),
        ("UPDATE public.import_job SET state = 'processing_data'", IMPORT_JOB_HINT),
        ("DELETE FROM public.import_job", IMPORT_JOB_HINT),
    ]
    async with await psycopg.AsyncConnection.connect(writer_dsn, autocommit=True) as writer:
        for statement, hint in writes:
            assert await hints_after(statement, on=writer) == [hint], statement
        await request_hold(conn)
        for statement, hint in writes:
            assert await hints_after(statement, on=writer) == [hint], statement
        assert await confirm_hold(conn) is True
        for statement, _ in writes:
            assert await hints_after(statement, on=writer) == [], statement


async def test_a_writer_that_cannot_read_the_flag_still_hints(
    db_dsn: str,
    conn: Conn,
    hints_after: HintsAfter,
    login_role: Callable[[bool], Awaitable[str]],
) -> None:
    """Without the PUBLIC grant the flag reads as NULL: a hint too many, never one lost."""
    await conn.execute("REVOKE SELECT ON SEQUENCE public.system_stability_hold FROM PUBLIC")
    await take_hold(conn)
    writer_dsn = psycopg.conninfo.make_conninfo(db_dsn, user=await _table_writer(conn, login_role))
    async with await psycopg.AsyncConnection.connect(writer_dsn, autocommit=True) as writer:
        assert await hold_flag(writer) is None
        assert await hints_after(
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')",
            on=writer,
        ) == [TASKS_HINT]
        assert await hints_after(
            "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')", on=writer
        ) == [IMPORT_JOB_HINT]


async def test_relay_role_can_call_the_functions_and_listen_but_not_read_tables(
    db_dsn: str, login_role: Callable[[bool], Awaitable[str]]
) -> None:
    user = await login_role(True)
    relay_dsn = psycopg.conninfo.make_conninfo(db_dsn, user=user)
    async with await psycopg.AsyncConnection.connect(relay_dsn, autocommit=True) as relay:
        assert await is_stable(relay) is True
        assert await json_rows(relay, "get_analytics_tasks_in_progress") == []
        assert await json_rows(relay, "get_import_jobs_in_progress") == []
        await relay.execute(f"LISTEN {CHANNEL}")
        await relay.execute("SELECT pg_notification_queue_usage(), pg_listening_channels()")
        await request_hold(relay)
        assert await hold_flag(relay) == REQUESTED
        assert await confirm_hold(relay) is True
        assert await hold_flag(relay) == HELD
        await release_hold(relay)
        assert await hold_flag(relay) == NO_HOLD
        for table in ("public.import_job", "worker.tasks", "worker.command_registry"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await relay.execute(
                    sql.SQL("SELECT 1 FROM {}").format(sql.Identifier(*table.split(".")))
                )


async def test_other_roles_cannot_call_the_functions_or_set_the_flag(
    db_dsn: str, conn: Conn, login_role: Callable[[bool], Awaitable[str]]
) -> None:
    user = await login_role(False)
    other_dsn = psycopg.conninfo.make_conninfo(db_dsn, user=user)
    async with await psycopg.AsyncConnection.connect(other_dsn, autocommit=True) as other:
        for function in SECURITY_DEFINER_FUNCTIONS:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await other.execute(
                    sql.SQL("SELECT * FROM {}()").format(sql.Identifier("public", function))
                )
        for value in (HELD, REQUESTED):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await other.execute("SELECT setval('public.system_stability_hold', %s)", (value,))
        assert await hold_flag(other) == NO_HOLD
    assert await hold_flag(conn) == NO_HOLD
