"""`db install` against a real PostgreSQL: idempotent, keeps or parks the hold, creates the
triggers, removes earlier designs, refuses what does not fit."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.errors import DatabaseUnavailable, RelayError
from relay.source.activities.hints import hint_rows_function
from relay.source.install import InstallRefused, install, sql_dir
from tests.source.sql_support import (
    CHANNEL,
    COMMAND_REGISTRY_HINT,
    HELD,
    HOLD_TRUE,
    IMPORT_JOB_HINT,
    NO_HOLD,
    REQUESTED,
    TASKS_HINT,
    Conn,
    HintsAfter,
    confirm_hold,
    hold_flag,
    received_before_sentinel,
    request_hold,
    set_flag,
    take_hold,
)

# pg_trigger.tgtype bits (PostgreSQL's trigger.h); the ROW (1) and BEFORE (2) bits are clear.
TRIGGER_TYPE_INSERT = 4
TRIGGER_TYPE_DELETE = 8
TRIGGER_TYPE_UPDATE = 16
TRIGGER_TYPE_TRUNCATE = 32


async def _installed_objects(conn: Conn) -> list[tuple[Any, ...]]:
    """Triggers, functions and sequences of the two schemas, with definitions and grants
    (and the data system's command registry)."""
    cursor = await conn.execute(
        """
        SELECT 'trigger', tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL
        SELECT 'function', pronamespace::regnamespace::text, proname,
            pg_get_functiondef(oid) || coalesce(proacl::text, '')
        FROM pg_proc
        WHERE pronamespace IN ('public'::regnamespace, 'worker'::regnamespace)
        UNION ALL
        SELECT 'sequence', relnamespace::regnamespace::text, relname,
            format('%s %s..%s start %s cycle %s %s', seqtypid::regtype, seqmin, seqmax,
                seqstart, seqcycle, coalesce(relacl::text, ''))
        FROM pg_class JOIN pg_sequence ON seqrelid = pg_class.oid
        WHERE relkind = 'S' AND relnamespace IN ('public'::regnamespace, 'worker'::regnamespace)
        UNION ALL
        SELECT 'command', queue, command, NULL FROM worker.command_registry
        ORDER BY 1, 2, 3
        """
    )
    return await cursor.fetchall()


async def test_installing_again_changes_nothing(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    before = await _installed_objects(conn)

    applied = await install(db_dsn, demo_schema=True, park=False)

    assert applied == [
        "demo_schema.sql",
        "hold.sql",
        "activities (generated)",
        "history.sql",
        "roles.sql",
        "signals (generated)",
    ]
    assert await _installed_objects(conn) == before
    assert await hints_after(
        "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')"
    ) == [TASKS_HINT]


@pytest.mark.parametrize("flag", [HELD, REQUESTED])
async def test_installing_again_keeps_a_hold(db_dsn: str, conn: Conn, flag: int) -> None:
    await request_hold(conn)
    if flag == HELD:
        assert await confirm_hold(conn) is True
    await install(db_dsn, demo_schema=True, park=False)
    assert await hold_flag(conn) == flag


async def test_an_install_without_parking_leaves_the_flag_reading_0(
    db_dsn: str, conn: Conn
) -> None:
    """Not NULL, which a relay takes for "cannot read" and polls on: after a fresh install
    (the fixture's), after one that creates the sequence, and after one that finds it unset."""
    assert await hold_flag(conn) == NO_HOLD
    await conn.execute("DROP SEQUENCE public.system_stability_hold")
    await install(db_dsn, park=False)  # demo_schema.sql writes, and the triggers need it
    assert await hold_flag(conn) == NO_HOLD
    await set_flag(conn, None)
    await install(db_dsn, demo_schema=True, park=False)
    assert await hold_flag(conn) == NO_HOLD


async def test_an_install_parks_the_flag_announcing_it_first(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    """No relay listens yet: writers stay quiet. Requested and announced, then confirmed,
    each committed, so a relay already running hears of it before writers go quiet."""
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")
        await install(db_dsn)
        assert await received_before_sentinel(conn, listener) == [HOLD_TRUE]
    assert await hold_flag(conn) == HELD
    job = "INSERT INTO public.import_job (slug, state) VALUES ('q', 'approved')"
    assert await hints_after(job) == []


async def test_install_creates_a_trigger_per_statement_on_each_table(conn: Conn) -> None:
    """INSERT, UPDATE and DELETE: statement triggers with the transition tables of their
    event, calling the table's own hint function; TRUNCATE (which has none): hold.sql's."""
    cursor = await conn.execute(
        r"""
        SELECT tgrelid::regclass::text, tgname, tgtype, tgenabled, tgfoid::regproc::text,
            tgoldtable, tgnewtable, convert_from(rtrim(tgargs, '\x00'::bytea), 'UTF8')
        FROM pg_trigger
        WHERE NOT tgisinternal AND tgname LIKE 'system\_stability%'
        ORDER BY 1, 2
        """
    )
    expected = []
    for table, hint in [
        ("import_job", IMPORT_JOB_HINT),
        ("worker.command_registry", COMMAND_REGISTRY_HINT),
        ("worker.tasks", TASKS_HINT),
    ]:
        own = hint_rows_function(table if "." in table else f"public.{table}").split(".")[1]
        old, new = "system_stability_old", "system_stability_new"
        plain = ("system_stability_hint", None, None)
        expected += [
            (table, "system_stability_hint_delete", TRIGGER_TYPE_DELETE, "O", own, old, None, hint),
            (table, "system_stability_hint_insert", TRIGGER_TYPE_INSERT, "O", own, None, new, hint),
            (table, "system_stability_hint_truncate", TRIGGER_TYPE_TRUNCATE, "O", *plain, hint),
            (table, "system_stability_hint_update", TRIGGER_TYPE_UPDATE, "O", own, old, new, hint),
        ]
    assert await cursor.fetchall() == expected


async def test_install_leaves_no_function_of_the_old_design(conn: Conn) -> None:
    """worker.system_stability_task_hint, _registry_hint, _compile_commands and
    public.system_stability_set_hold(boolean) are gone."""
    cursor = await conn.execute(
        r"""
        SELECT oid::regprocedure::text FROM pg_proc
        WHERE proname LIKE 'system\_stability%'
        """
    )
    assert sorted(row[0] for row in await cursor.fetchall()) == sorted(
        [
            "system_stability_activities()",
            "system_stability_confirm_hold()",
            "system_stability_details(integer)",
            "system_stability_hint()",
            f"{hint_rows_function('public.import_job').split('.')[1]}()",
            f"{hint_rows_function('worker.command_registry').split('.')[1]}()",
            f"{hint_rows_function('worker.tasks').split('.')[1]}()",
            "system_stability_history(timestamp with time zone,text,integer)",
            "system_stability_history_summary(text)",
            "system_stability_indicators()",
            "system_stability_items_analytics(integer)",
            "system_stability_items_importing(integer)",
            "system_stability_notify(text)",
            "system_stability_record(text[],text[],timestamp with time zone,interval)",
            "system_stability_release_hold()",
            "system_stability_request_hold()",
            "system_stability_signals(integer)",
            "system_stability_slugs()",
            "system_stability_typical()",
        ]
    )


async def test_installing_over_the_old_design_removes_it(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    """The per-row triggers and their functions go, and so does the one-step hold's
    set_hold(boolean); the result is a fresh install's."""
    fresh = await _installed_objects(conn)
    # The old releases' objects, as their stability.sql left them (bodies simplified).
    await conn.execute(
        """
        DROP TRIGGER system_stability_hint_insert ON public.import_job;
        DROP TRIGGER system_stability_hint_update ON public.import_job;
        DROP TRIGGER system_stability_hint_delete ON public.import_job;
        DROP TRIGGER system_stability_hint_truncate ON public.import_job;
        DROP TRIGGER system_stability_hint_insert ON worker.tasks;
        DROP TRIGGER system_stability_hint_update ON worker.tasks;
        DROP TRIGGER system_stability_hint_delete ON worker.tasks;
        DROP TRIGGER system_stability_hint_truncate ON worker.tasks;
        DROP TRIGGER system_stability_hint_insert ON worker.command_registry;
        DROP TRIGGER system_stability_hint_update ON worker.command_registry;
        DROP TRIGGER system_stability_hint_delete ON worker.command_registry;
        DROP TRIGGER system_stability_hint_truncate ON worker.command_registry;
        DROP FUNCTION public.system_stability_notify(text);
        DROP FUNCTION public.system_stability_request_hold();
        DROP FUNCTION public.system_stability_confirm_hold();
        DROP FUNCTION public.system_stability_release_hold();
        DROP SEQUENCE public.system_stability_hold;
        CREATE FUNCTION public.system_stability_set_hold(held boolean) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM pg_notify('system_stability', '{"hold":true}');
        END $$;
        CREATE OR REPLACE FUNCTION public.system_stability_hint() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM pg_notify('system_stability', TG_ARGV[0]);
            RETURN NULL;
        END $$;
        CREATE FUNCTION worker.system_stability_task_hint() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM pg_notify('system_stability', '{"table":"tasks"}');
            RETURN NULL;
        END $$;
        CREATE FUNCTION worker.system_stability_compile_commands() RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
        END $$;
        CREATE FUNCTION worker.system_stability_registry_hint() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM worker.system_stability_compile_commands();
            PERFORM pg_notify('system_stability', '{"table":"command_registry"}');
            RETURN NULL;
        END $$;
        CREATE TRIGGER system_stability_hint_insert AFTER INSERT ON worker.tasks
        FOR EACH ROW WHEN (NEW.state = 'pending')
        EXECUTE FUNCTION worker.system_stability_task_hint();
        CREATE TRIGGER system_stability_hint_update AFTER UPDATE ON worker.tasks
        FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION worker.system_stability_task_hint();
        CREATE TRIGGER system_stability_hint_delete AFTER DELETE ON worker.tasks
        FOR EACH ROW EXECUTE FUNCTION worker.system_stability_task_hint();
        CREATE TRIGGER system_stability_hint_truncate AFTER TRUNCATE ON worker.tasks
        FOR EACH STATEMENT EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');
        CREATE FUNCTION public.import_job_state_is_active(state text) RETURNS boolean
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN coalesce(state NOT IN ('finished', 'rejected', 'failed'), false);
        CREATE FUNCTION worker.task_state_is_active(state text) RETURNS boolean
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN coalesce(state IN ('pending', 'processing', 'waiting'), false);
        CREATE TRIGGER system_stability_hint_insert AFTER INSERT ON public.import_job
        FOR EACH ROW WHEN (public.import_job_state_is_active(NEW.state::text))
        EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
        CREATE TRIGGER system_stability_hint_update AFTER UPDATE ON public.import_job
        FOR EACH ROW EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
        CREATE TRIGGER system_stability_hint_delete AFTER DELETE ON public.import_job
        FOR EACH ROW EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
        CREATE TRIGGER system_stability_hint_truncate AFTER TRUNCATE ON public.import_job
        FOR EACH STATEMENT
        EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
        CREATE OR REPLACE TRIGGER system_stability_hint
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON worker.command_registry
        FOR EACH STATEMENT EXECUTE FUNCTION worker.system_stability_registry_hint();
        -- The release before hints by rows: one plain statement trigger per table.
        CREATE TRIGGER system_stability_hint
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON worker.tasks
        FOR EACH STATEMENT EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');
        -- A table's hint function that this config no longer has.
        CREATE FUNCTION public.system_stability_hint_gone_00000000() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
        COMMENT ON FUNCTION public.system_stability_hint_gone_00000000()
        IS 'stability-relay: hint rows of public.gone: a hint when a statement changed one.';
        """
    )
    assert await _installed_objects(conn) != fresh

    await install(db_dsn, demo_schema=True, park=False)

    assert await _installed_objects(conn) == fresh
    await take_hold(conn)
    assert (
        await hints_after(
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')"
        )
        == []
    )


async def test_installing_over_the_one_step_hold_upgrades_it(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    """A development build's flag (MAXVALUE 1) and set_hold(boolean) become a fresh
    install's: a request can then set the flag to 2."""
    fresh = await _installed_objects(conn)
    # As that build's stability.sql and roles.sql left them (body simplified).
    await conn.execute(
        """
        DROP FUNCTION public.system_stability_request_hold();
        DROP FUNCTION public.system_stability_confirm_hold();
        DROP FUNCTION public.system_stability_release_hold();
        DROP SEQUENCE public.system_stability_hold;
        CREATE SEQUENCE public.system_stability_hold
            AS smallint MINVALUE 0 MAXVALUE 1 START 0 NO CYCLE;
        GRANT SELECT ON SEQUENCE public.system_stability_hold TO PUBLIC;
        CREATE FUNCTION public.system_stability_set_hold(held boolean) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM pg_catalog.setval('public.system_stability_hold', held::int);
        END $$;
        REVOKE EXECUTE ON FUNCTION public.system_stability_set_hold(boolean) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION public.system_stability_set_hold(boolean) TO stability_relay;
        """
    )

    await install(db_dsn, demo_schema=True, park=False)

    assert await _installed_objects(conn) == fresh
    assert await hints_after("SELECT public.system_stability_request_hold()") == [HOLD_TRUE]
    assert await hold_flag(conn) == REQUESTED


async def test_concurrent_installs_into_one_database_succeed(db_dsn: str) -> None:
    results = await asyncio.gather(*(install(db_dsn, demo_schema=True) for _ in range(4)))
    assert all(result == results[0] for result in results)


async def test_install_without_the_system_tables_is_refused_naming_each(
    pg_admin_dsn: str,
) -> None:
    dbname = f"test_{uuid.uuid4().hex}"
    async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        try:
            with pytest.raises(InstallRefused) as refused:
                await install(psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=dbname))
            assert refused.value.problems == [
                "activities[0].table: table public.import_job does not exist",
                "activities[1].table: table worker.tasks does not exist",
                "activities[1].tables[0]: table worker.command_registry does not exist",
            ]
            async with await psycopg.AsyncConnection.connect(
                psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=dbname)
            ) as target:  # refused before anything was written
                cursor = await target.execute(
                    "SELECT count(*) FROM pg_proc WHERE proname LIKE 'system_stability%'"
                )
                assert await cursor.fetchone() == (0,)
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
    assert {"demo_schema.sql", "hold.sql", "roles.sql"} <= names
