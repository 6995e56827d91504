"""The relay's SQL against a real PostgreSQL: activeness, hints, installation, privileges."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql

from relay.dbinstall import install, sql_dir
from relay.errors import DatabaseUnavailable, RelayError, SchemaMissing

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
HintsAfter = Callable[..., Awaitable[list[str]]]

CHANNEL = "system_stability"
SENTINEL = "sentinel"
TASKS_HINT = '{"table":"tasks"}'
IMPORT_JOB_HINT = '{"table":"import_job"}'
COMMAND_REGISTRY_HINT = '{"table":"command_registry"}'

IMPORT_STATES = [
    "waiting_for_upload",
    "upload_completed",
    "preparing_data",
    "analysing_data",
    "waiting_for_review",
    "approved",
    "rejected",
    "processing_data",
    "failed",
    "finished",
]
ACTIVE_IMPORT_STATES = {
    "upload_completed",
    "preparing_data",
    "analysing_data",
    "approved",
    "processing_data",
}
TASK_STATES = ["pending", "processing", "waiting", "interrupted", "completed", "failed"]
ACTIVE_TASK_STATES = {"pending", "processing", "waiting"}
COMMAND_OF_QUEUE = {
    "analytics": "derive_reports",
    "import": "import_job_process",
    "maintenance": "task_cleanup",
}
SECURITY_DEFINER_FUNCTIONS = [
    "is_system_stable",
    "get_analytics_tasks_in_progress",
    "get_import_jobs_in_progress",
]
PINNED_SEARCH_PATH = ["search_path=pg_catalog, pg_temp"]


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
async def hints_after(db_dsn: str, conn: Conn) -> AsyncIterator[HintsAfter]:
    """Run a statement (one transaction) on ``conn``; return the hints its commit sent."""
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")

        async def run(query: LiteralString, params: Sequence[object] | None = None) -> list[str]:
            await _received_before_sentinel(conn, listener)  # discard the test's set-up hints
            await conn.execute(query, params)
            return await _received_before_sentinel(conn, listener)

        yield run


async def _received_before_sentinel(conn: Conn, listener: Conn) -> list[str]:
    """The hints committed on ``conn`` so far and not yet received by ``listener``."""
    # Notifications arrive in commit order, so every earlier one precedes the sentinel.
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, SENTINEL))
    payloads: list[str] = []
    async with aclosing(listener.notifies(timeout=10.0)) as notifies:
        async for notify in notifies:
            if notify.payload == SENTINEL:
                return payloads
            payloads.append(notify.payload)
    raise AssertionError(f"the sentinel notification did not arrive; got {payloads}")


async def is_stable(conn: Conn) -> bool:
    cursor = await conn.execute("SELECT public.is_system_stable()")
    row = await cursor.fetchone()
    assert row is not None
    result: bool = row[0]
    return result


async def insert_task(conn: Conn, command: str, state: str, priority: int | None = None) -> int:
    cursor = await conn.execute(
        "INSERT INTO worker.tasks (command, state, priority) VALUES (%s, %s, %s) RETURNING id",
        (command, state, priority),
    )
    row = await cursor.fetchone()
    assert row is not None
    task_id: int = row[0]
    return task_id


async def json_rows(conn: Conn, function: LiteralString) -> list[dict[str, Any]]:
    cursor = await conn.execute(f"SELECT * FROM public.{function}()")
    return [row[0] for row in await cursor.fetchall()]


# -- is_system_stable() -----------------------------------------------------------------------


async def test_system_is_stable_when_nothing_is_queued(conn: Conn) -> None:
    assert await is_stable(conn) is True


@pytest.mark.parametrize("state", IMPORT_STATES)
async def test_an_import_job_makes_the_system_unstable_only_while_active(
    conn: Conn, state: str
) -> None:
    await conn.execute("INSERT INTO public.import_job (slug, state) VALUES ('job', %s)", (state,))
    assert await is_stable(conn) is (state not in ACTIVE_IMPORT_STATES)


@pytest.mark.parametrize("queue", sorted(COMMAND_OF_QUEUE))
@pytest.mark.parametrize("state", TASK_STATES)
async def test_only_active_analytics_tasks_make_the_system_unstable(
    conn: Conn, state: str, queue: str
) -> None:
    await insert_task(conn, COMMAND_OF_QUEUE[queue], state)
    expected_active = queue == "analytics" and state in ACTIVE_TASK_STATES
    assert await is_stable(conn) is not expected_active


async def test_a_null_state_is_not_active(conn: Conn) -> None:
    cursor = await conn.execute(
        "SELECT public.import_job_state_is_active(NULL), worker.task_state_is_active(NULL)"
    )
    assert await cursor.fetchone() == (False, False)


async def test_moving_a_command_out_of_the_analytics_queue_stabilises_the_system(
    conn: Conn,
) -> None:
    await insert_task(conn, "derive_reports", "pending")
    assert await is_stable(conn) is False
    await conn.execute(
        "UPDATE worker.command_registry SET queue = 'maintenance' WHERE command = 'derive_reports'"
    )
    assert await is_stable(conn) is True


# -- detail functions -----------------------------------------------------------------------------


async def test_analytics_tasks_in_progress_lists_active_analytics_tasks_by_priority(
    conn: Conn,
) -> None:
    low = await insert_task(conn, "derive_reports", "waiting", priority=20)
    high = await insert_task(conn, "derive_statistical_unit", "processing", priority=10)
    unprioritised = await insert_task(conn, "derive_reports", "pending")
    await insert_task(conn, "derive_reports", "completed", priority=1)
    await insert_task(conn, "import_job_process", "pending", priority=1)

    tasks = await json_rows(conn, "get_analytics_tasks_in_progress")

    assert [task["id"] for task in tasks] == [high, low, unprioritised]
    assert set(tasks[0]) == {"id", "command", "state", "created_at", "duration_ms"}
    assert (tasks[0]["command"], tasks[0]["state"]) == ("derive_statistical_unit", "processing")


async def test_import_jobs_in_progress_report_progress_by_priority(conn: Conn) -> None:
    await conn.execute(
        """
        INSERT INTO public.import_job
            (slug, state, priority, total_rows, imported_rows, import_completed_pct)
        VALUES
            ('by-rows', 'processing_data', 2, 200, 50, 0),
            ('by-pct', 'analysing_data', 1, 200, 10, 40),
            ('no-rows', 'upload_completed', NULL, NULL, 0, 0),
            ('done', 'finished', 0, 10, 10, 100)
        """
    )

    jobs = await json_rows(conn, "get_import_jobs_in_progress")

    assert [(job["slug"], job["progress_pct"]) for job in jobs] == [
        ("by-pct", 40.00),
        ("by-rows", 25.00),
        ("no-rows", 0),
    ]
    assert set(jobs[0]) == {
        "id",
        "slug",
        "description",
        "state",
        "total_rows",
        "imported_rows",
        "progress_pct",
        "priority",
        "created_at",
        "updated_at",
    }


# -- hints ------------------------------------------------------------------------------------


async def test_an_analytics_task_hints_when_it_becomes_active_and_when_it_ends(
    conn: Conn, hints_after: HintsAfter
) -> None:
    assert await hints_after(
        "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')"
    ) == [TASKS_HINT]
    assert await hints_after("UPDATE worker.tasks SET state = 'processing'") == []
    assert await hints_after("UPDATE worker.tasks SET state = 'waiting'") == []
    assert await hints_after("UPDATE worker.tasks SET state = 'completed'") == [TASKS_HINT]
    assert await hints_after("UPDATE worker.tasks SET state = 'pending'") == [TASKS_HINT]


async def test_updating_other_columns_of_an_active_task_sends_no_hint(
    conn: Conn, hints_after: HintsAfter
) -> None:
    await insert_task(conn, "derive_reports", "processing")
    assert await hints_after("UPDATE worker.tasks SET duration_ms = 12, error = 'x'") == []


async def test_tasks_outside_the_analytics_queue_never_hint(
    conn: Conn, hints_after: HintsAfter
) -> None:
    for command in ("import_job_process", "task_cleanup"):
        assert (
            await hints_after(
                "INSERT INTO worker.tasks (command, state) VALUES (%s, 'pending')", (command,)
            )
            == []
        )
    assert await hints_after("UPDATE worker.tasks SET state = 'processing'") == []
    assert await hints_after("UPDATE worker.tasks SET state = 'completed'") == []
    assert await hints_after("UPDATE worker.tasks SET state = 'pending'") == []
    assert await hints_after("DELETE FROM worker.tasks") == []


async def test_a_command_moved_into_the_analytics_queue_hints_from_then_on(
    conn: Conn, hints_after: HintsAfter
) -> None:
    add = "INSERT INTO worker.tasks (command, state) VALUES ('task_cleanup', 'pending')"
    assert await hints_after(add) == []
    move = "UPDATE worker.command_registry SET queue = 'analytics' WHERE command = 'task_cleanup'"
    assert await hints_after(move) == [COMMAND_REGISTRY_HINT]
    assert await hints_after(add) == [TASKS_HINT]
    assert await hints_after("UPDATE worker.tasks SET state = 'completed'") == [TASKS_HINT]
    back = "UPDATE worker.command_registry SET queue = 'maintenance' WHERE command = 'task_cleanup'"
    assert await hints_after(back) == [COMMAND_REGISTRY_HINT]
    assert await hints_after(add) == []


async def test_the_task_triggers_agree_with_the_activeness_helper_on_every_state(
    conn: Conn, hints_after: HintsAfter
) -> None:
    """The task triggers spell the active states out; they must be the helper's."""
    cursor = await conn.execute(
        "SELECT label::text, worker.task_state_is_active(label::text) "
        "FROM unnest(enum_range(NULL::worker.task_state)) AS label"
    )
    for state, active in await cursor.fetchall():
        insert = "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', %s)"
        assert await hints_after(insert, (state,)) == ([TASKS_HINT] if active else []), state


async def test_deleting_a_task_hints_only_if_it_was_active(
    conn: Conn, hints_after: HintsAfter
) -> None:
    active = await insert_task(conn, "derive_reports", "pending")
    done = await insert_task(conn, "derive_reports", "completed")
    assert await hints_after("DELETE FROM worker.tasks WHERE id = %s", (done,)) == []
    assert await hints_after("DELETE FROM worker.tasks WHERE id = %s", (active,)) == [TASKS_HINT]


async def test_changing_the_command_of_an_active_task_hints_when_analytics_is_involved(
    conn: Conn, hints_after: HintsAfter
) -> None:
    active = await insert_task(conn, "derive_reports", "pending")
    done = await insert_task(conn, "derive_reports", "completed")
    move = "UPDATE worker.tasks SET command = %s WHERE id = %s"
    assert await hints_after(move, ("task_cleanup", done)) == []
    assert await hints_after(move, ("task_cleanup", active)) == [TASKS_HINT]
    assert await hints_after(move, ("import_job_process", active)) == []
    assert await hints_after(move, ("derive_statistical_history", active)) == [TASKS_HINT]


async def test_a_bulk_statement_sends_one_hint(conn: Conn, hints_after: HintsAfter) -> None:
    assert await hints_after(
        "INSERT INTO worker.tasks (command, state)"
        " SELECT 'derive_reports', 'pending' FROM generate_series(1, 100)"
    ) == [TASKS_HINT]
    assert await hints_after("UPDATE worker.tasks SET state = 'processing'") == []
    assert await hints_after("UPDATE worker.tasks SET state = 'completed'") == [TASKS_HINT]


async def test_a_transaction_sends_at_most_one_hint_per_table(
    conn: Conn, hints_after: HintsAfter
) -> None:
    assert await hints_after(
        "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending');"
        "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending');"
        "UPDATE worker.tasks SET state = 'completed';"
        "INSERT INTO public.import_job (slug, state) VALUES ('a', 'preparing_data');"
        "INSERT INTO public.import_job (slug, state) VALUES ('b', 'preparing_data');"
    ) == [TASKS_HINT, IMPORT_JOB_HINT]


async def test_a_rolled_back_change_sends_no_hint(conn: Conn, hints_after: HintsAfter) -> None:
    assert (
        await hints_after(
            "BEGIN;"
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending');"
            "ROLLBACK;"
        )
        == []
    )


async def test_an_import_job_hints_exactly_when_its_activeness_changes(
    conn: Conn, hints_after: HintsAfter
) -> None:
    set_state = "UPDATE public.import_job SET state = %s WHERE slug = 'job'"
    assert (
        await hints_after(
            "INSERT INTO public.import_job (slug, state) VALUES ('job', 'waiting_for_upload')"
        )
        == []
    )
    assert await hints_after(set_state, ("upload_completed",)) == [IMPORT_JOB_HINT]
    assert await hints_after(set_state, ("preparing_data",)) == []
    assert await hints_after("UPDATE public.import_job SET imported_rows = 10") == []
    assert await hints_after(set_state, ("failed",)) == [IMPORT_JOB_HINT]
    assert await hints_after(set_state, ("rejected",)) == []
    assert await hints_after("DELETE FROM public.import_job WHERE slug = 'job'") == []
    assert await hints_after(
        "INSERT INTO public.import_job (slug, state) VALUES ('other', 'analysing_data')"
    ) == [IMPORT_JOB_HINT]
    assert await hints_after("DELETE FROM public.import_job WHERE slug = 'other'") == [
        IMPORT_JOB_HINT
    ]


async def test_a_state_changed_by_a_before_trigger_still_hints(
    conn: Conn, hints_after: HintsAfter
) -> None:
    await conn.execute(
        """
        CREATE FUNCTION public.finish_when_imported() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.imported_rows >= NEW.total_rows THEN NEW.state := 'finished'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER finish_when_imported BEFORE UPDATE ON public.import_job
        FOR EACH ROW EXECUTE FUNCTION public.finish_when_imported();
        INSERT INTO public.import_job (slug, state, total_rows)
        VALUES ('job', 'processing_data', 5);
        """
    )
    assert await hints_after("UPDATE public.import_job SET imported_rows = 5") == [IMPORT_JOB_HINT]


async def test_any_change_to_the_command_registry_hints(
    conn: Conn, hints_after: HintsAfter
) -> None:
    assert await hints_after(
        "UPDATE worker.command_registry SET queue = 'maintenance' WHERE command = 'derive_reports'"
    ) == [COMMAND_REGISTRY_HINT]
    assert await hints_after(
        "INSERT INTO worker.command_registry (command, queue) VALUES ('new', 'analytics')"
    ) == [COMMAND_REGISTRY_HINT]


async def test_truncating_a_table_hints(conn: Conn, hints_after: HintsAfter) -> None:
    assert await hints_after("TRUNCATE worker.tasks") == [TASKS_HINT]
    assert await hints_after("TRUNCATE public.import_job") == [IMPORT_JOB_HINT]


# -- installation -----------------------------------------------------------------------------


async def _installed_objects(conn: Conn) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(
        """
        SELECT 'trigger', tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL
        SELECT 'function', pronamespace::regnamespace::text, proname FROM pg_proc
        WHERE pronamespace IN ('public'::regnamespace, 'worker'::regnamespace)
        UNION ALL
        SELECT 'command', queue, command FROM worker.command_registry
        ORDER BY 1, 2, 3
        """
    )
    return await cursor.fetchall()


async def test_installing_again_changes_nothing(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    before = await _installed_objects(conn)

    applied = await install(db_dsn, demo_schema=True)

    assert applied == ["demo_schema.sql", "stability.sql", "roles.sql"]
    assert await _installed_objects(conn) == before
    assert await hints_after(
        "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')"
    ) == [TASKS_HINT]


async def test_concurrent_installs_into_one_database_succeed(db_dsn: str) -> None:
    results = await asyncio.gather(*(install(db_dsn, demo_schema=True) for _ in range(4)))
    assert all(result == results[0] for result in results)


async def test_install_without_the_system_tables_reports_schema_missing(
    pg_admin_dsn: str,
) -> None:
    dbname = f"test_{uuid.uuid4().hex}"
    async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        try:
            with pytest.raises(
                SchemaMissing, match=r"stability\.sql: .*missing: public\.import_job, worker\.tasks"
            ):
                await install(psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=dbname))
        finally:
            await admin.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname))
            )


async def test_connection_errors_do_not_reveal_the_password(pg_admin_dsn: str) -> None:
    missing_db = psycopg.conninfo.make_conninfo(
        pg_admin_dsn, dbname="no_such_database", password="s3cret-pw"
    )
    with pytest.raises(DatabaseUnavailable) as unavailable:
        await install(missing_db)
    with pytest.raises(RelayError) as malformed:
        await install("host=localhost password=s3cret-pw port")
    for error in (unavailable.value, malformed.value):
        assert "s3cret-pw" not in str(error)


def test_sql_files_are_found_next_to_the_package() -> None:
    names = {path.name for path in sql_dir().glob("*.sql")}
    assert {"demo_schema.sql", "stability.sql", "roles.sql"} <= names


# -- privileges -------------------------------------------------------------------------------


async def test_relay_functions_pin_their_search_path(conn: Conn) -> None:
    cursor = await conn.execute(
        """
        SELECT proname, prosecdef, proconfig FROM pg_proc
        WHERE proname = ANY(%s) ORDER BY proname
        """,
        ([*SECURITY_DEFINER_FUNCTIONS, "system_stability_hint", "system_stability_task_hint"],),
    )
    rows = {name: (secdef, config) for name, secdef, config in await cursor.fetchall()}
    assert set(rows) == {
        *SECURITY_DEFINER_FUNCTIONS,
        "system_stability_hint",
        "system_stability_task_hint",
    }
    for name, (secdef, config) in rows.items():
        assert config == PINNED_SEARCH_PATH, name
        assert secdef is (name != "system_stability_hint"), name


async def test_activeness_helpers_are_inlinable(conn: Conn) -> None:
    cursor = await conn.execute(
        """
        SELECT provolatile, prosecdef, proconfig FROM pg_proc
        WHERE proname IN ('import_job_state_is_active', 'task_state_is_active')
        """
    )
    assert await cursor.fetchall() == [("i", False, None), ("i", False, None)]


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


async def test_a_writer_that_cannot_read_the_command_registry_can_still_write_tasks(
    db_dsn: str, conn: Conn, login_role: Callable[[bool], Awaitable[str]]
) -> None:
    user = await login_role(False)
    role = sql.Identifier(user)
    await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA worker TO {}").format(role))
    await conn.execute(sql.SQL("GRANT INSERT, UPDATE, SELECT ON worker.tasks TO {}").format(role))
    writer_dsn = psycopg.conninfo.make_conninfo(db_dsn, user=user)
    async with await psycopg.AsyncConnection.connect(writer_dsn, autocommit=True) as writer:
        await insert_task(writer, "derive_reports", "pending")
        await writer.execute("UPDATE worker.tasks SET state = 'completed'")


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
        for table in ("public.import_job", "worker.tasks", "worker.command_registry"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await relay.execute(
                    sql.SQL("SELECT 1 FROM {}").format(sql.Identifier(*table.split(".")))
                )


async def test_other_roles_cannot_call_the_functions(
    db_dsn: str, login_role: Callable[[bool], Awaitable[str]]
) -> None:
    user = await login_role(False)
    other_dsn = psycopg.conninfo.make_conninfo(db_dsn, user=user)
    async with await psycopg.AsyncConnection.connect(other_dsn, autocommit=True) as other:
        for function in SECURITY_DEFINER_FUNCTIONS:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await other.execute(
                    sql.SQL("SELECT * FROM {}()").format(sql.Identifier("public", function))
                )
