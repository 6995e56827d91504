"""The statbus profile on a reproduction of statbus's schema (tests/fixtures/statbus.sql).

`stable` must agree with statbus's own three indicators in every state, per activity, when
hinted only by the channels statbus already sends; nothing of ours on its tables; and an
install or start that row-level security would make silently wrong is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, LiteralString

import aiohttp
import psycopg
import pytest
from psycopg import sql

from relay.app import Relay
from relay.cli.main import startup_problems
from relay.config.profiles import load_profile
from relay.source.install import InstallRefused, install
from relay.state.stability import State
from tests import statbus_driver as sb
from tests.support import (
    HINTS_ONLY,
    base_url,
    eventually,
    fresh_database,
    relay_config,
    running_relay,
    sample,
    sse_connect,
)

ACTIVITIES = load_profile("statbus").activities


@pytest.fixture
async def statbus_db(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database with statbus's shape, not yet with the relay's SQL."""
    async with fresh_database(pg_admin_dsn, "statbus") as dsn:
        await sb.apply_statbus_fixture(dsn)
        yield dsn


@pytest.fixture
async def statbus_dsn(statbus_db: str) -> str:
    """statbus with the relay installed by the tables' owner, as the README says."""
    await install(statbus_db, activities=ACTIVITIES, profile="statbus")
    return statbus_db


@pytest.fixture
async def owner(statbus_dsn: str) -> AsyncIterator[sb.AsyncConn]:
    async with await psycopg.AsyncConnection.connect(statbus_dsn, autocommit=True) as conn:
        yield conn


def statbus_config(dsn: str, **sections: Any) -> Any:
    return relay_config(dsn, profile="statbus", **sections)


def hinted_config(dsn: str) -> Any:
    return statbus_config(dsn, database=HINTS_ONLY, stability={"reconcile_interval": "60s"})


async def agrees(relay: Relay, conn: sb.AsyncConn) -> bool:
    expected = await sb.statbus_indicators(conn)
    current = relay.stability.current
    busy = any(expected.values())
    state = State.PROCESSING if busy else State.STABLE
    return dict(current.activities) == expected and current.state is state


async def test_install_puts_no_trigger_on_statbus_tables(owner: sb.AsyncConn) -> None:
    cursor = await owner.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'system_stability%'"
    )
    assert await cursor.fetchone() == (0,)
    cursor = await owner.execute("SELECT public.system_stability_activities()")
    assert await cursor.fetchone() == (
        {"importing": False, "deriving_statistical_units": False, "deriving_reports": False},
    )


@pytest.mark.parametrize("situation", sb.STATES, ids=lambda s: s.name)
async def test_stable_agrees_with_statbus_in_every_state(
    statbus_dsn: str, owner: sb.AsyncConn, situation: sb.Situation
) -> None:
    """Hinted only by statbus's own channels: each step is seen within seconds."""
    async with running_relay(hinted_config(statbus_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await situation.setup(owner)
        assert await sb.statbus_indicators(owner) == situation.expected
        await eventually(lambda: agrees(relay, owner), timeout=5)
        async with aiohttp.ClientSession() as http:
            async with http.get(base_url(relay) + "/api/system-status") as response:
                body = await response.json()
    assert body["activities"] == situation.expected
    assert body["stable"] is not any(situation.expected.values())
    labels = {a.name: a.label for a in ACTIVITIES}
    assert body["running"] == [labels[name] for name, on in situation.expected.items() if on]


async def test_details_show_analysis_progress_and_real_task_columns(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    analysing = next(s for s in sb.STATES if s.name == "import_analysing_40pct")
    await analysing.setup(owner)
    interrupted = next(s for s in sb.STATES if s.name == "analytics_task_interrupted")
    await interrupted.setup(owner)
    async with running_relay(statbus_config(statbus_dsn)) as relay:
        async with aiohttp.ClientSession() as http:
            async with http.get(base_url(relay) + "/api/system-status/details") as response:
                assert response.status == 200
                body = await response.json()
    [job] = body["import_jobs"]
    assert (job["slug"], job["state"], job["progress_pct"]) == ("analysing", "analysing_data", 40)
    [task] = body["analytics_tasks"]
    assert (task["command"], task["state"]) == ("collect_changes", "interrupted")
    assert "process_duration_ms" in task and "duration_ms" not in task
    assert body["system_stable"] is False
    groups = body["activities"]
    assert groups["importing"]["active"] is True and groups["importing"]["total"] == 1
    assert groups["deriving_statistical_units"]["items"] == [task]
    assert groups["deriving_reports"] == {
        "label": "Deriving reports",
        "active": False,
        "items": [],
        "total": 0,
        "eta": None,
    }


async def test_a_change_no_channel_carries_is_caught_by_the_reconcile(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """A task INSERTed without statbus's enqueue functions sends nothing: the reconcile
    (here 1 s) finds it, and no hint arrived for it."""
    config = statbus_config(
        statbus_dsn, database={"heartbeat_interval": "1s"}, stability={"reconcile_interval": "1s"}
    )
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        before = _hints(relay)
        await sb.insert_task_raw(owner, "collect_changes", "pending")
        await eventually(lambda: relay.stability.current.state is State.PROCESSING, timeout=5)
        assert _hints(relay) == before
        assert await agrees(relay, owner)


def _hints(relay: Relay) -> float:
    channels = ("import_job", "worker_task_changed", "worker_tasks")
    return sum(sample(relay, "relay_notifications_total", channel=c) for c in channels)


async def test_random_concurrent_transitions_settle_on_statbus_truth(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """Writers race through statbus's real steps; once they stop, every activity agrees."""
    rng = random.Random(11)

    async def writer(round_: int, index: int) -> None:
        async with await psycopg.AsyncConnection.connect(statbus_dsn, autocommit=True) as conn:
            for step in range(12):
                await _random_step(conn, rng, f"r{round_}-w{index}-{step}")

    async with running_relay(hinted_config(statbus_dsn)) as relay:
        for round_ in range(3):
            await asyncio.gather(*(writer(round_, i) for i in range(4)))
            await eventually(lambda: agrees(relay, owner), timeout=5)


async def _random_step(conn: sb.AsyncConn, rng: random.Random, slug: str) -> None:
    choice = rng.randrange(5)
    if choice == 0:
        job = await sb.add_import_job(conn, slug)
        await sb.set_import_state(conn, job, "upload_completed")
        await sb.set_import_state(conn, job, rng.choice(["preparing_data", "rejected"]))
        return
    if choice == 1:
        cursor = await conn.execute(
            "SELECT id, state::text FROM public.import_job ORDER BY random() LIMIT 1"
        )
        row = await cursor.fetchone()
        if row is not None:
            nxt = {"preparing_data": "analysing_data", "analysing_data": "waiting_for_review"}
            await sb.set_import_state(conn, row[0], nxt.get(row[1], "finished"))
        return
    if choice == 2:
        # A change to a base table: statbus's trigger enqueues collect_changes (one pending
        # at most) and notifies worker_tasks. (Not sb.enqueue_collect_changes: it reads back
        # the pending task, which another writer may have picked up meanwhile.)
        with contextlib.suppress(psycopg.errors.UniqueViolation):
            await conn.execute("INSERT INTO public.legal_unit (name) VALUES (%s)", (slug,))
        return
    cursor = await conn.execute(
        "SELECT id FROM worker.tasks WHERE state::text IN ('pending', 'processing', "
        "'interrupted') ORDER BY random() LIMIT 1"
    )
    row = await cursor.fetchone()
    if row is not None:
        state = rng.choice(["processing", "interrupted", "completed"])
        with contextlib.suppress(psycopg.errors.UniqueViolation):
            await sb.set_task_state(conn, row[0], state)


# -- refusals ---------------------------------------------------------------------------------


PASSWORD = "pw-for-tests"
# Enough to create the relay's functions and read the tables: not their owner, no BYPASSRLS.
INSTALLER_GRANTS = (
    "GRANT CREATE, USAGE ON SCHEMA public, worker TO {r}; "
    "GRANT SELECT ON public.import_job, worker.tasks TO {r}"
)


@contextlib.asynccontextmanager
async def login_role(
    admin: sb.AsyncConn, prefix: str, grants: LiteralString
) -> AsyncIterator[tuple[str, str]]:
    """A login role with ``grants`` (``{r}`` is the role): its name and a DSN for it."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    role = sql.Identifier(name)
    await admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-for-tests'").format(role))
    await admin.execute(sql.SQL(grants).format(r=role))
    info = admin.info
    dsn = psycopg.conninfo.make_conninfo(
        "", host=info.host, port=info.port, dbname=info.dbname, user=name, password=PASSWORD
    )
    try:
        yield name, dsn
    finally:
        await admin.execute(sql.SQL("DROP OWNED BY {}").format(role))
        await admin.execute(sql.SQL("DROP ROLE {}").format(role))


async def test_install_as_a_role_that_rls_would_blind_is_refused_naming_the_fix(
    statbus_db: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(statbus_db, autocommit=True) as admin:
        async with login_role(admin, "installer", INSTALLER_GRANTS) as (role, dsn):
            with pytest.raises(InstallRefused) as refused:
                await install(dsn, activities=ACTIVITIES, profile="statbus")
            [problem] = refused.value.problems
            assert problem.startswith('activities[0].tables[0] (profile "statbus"): ')
            assert "public.import_job has row-level security" in problem
            assert f'ALTER ROLE "{role}" BYPASSRLS' in problem
            cursor = await admin.execute("SELECT current_user")
            owner = (await cursor.fetchone() or ("",))[0]
            assert f'install as the table\'s owner "{owner}"' in problem
            cursor = await admin.execute(
                "SELECT count(*) FROM pg_proc WHERE proname LIKE 'system_stability%'"
            )
            assert await cursor.fetchone() == (0,)  # nothing was written


async def test_install_with_a_policy_that_shows_every_row_is_accepted(statbus_db: str) -> None:
    """notify_reader's USING (true) policy is the kind that makes a reader see everything."""
    grants: LiteralString = (
        "GRANT notify_reader TO {r}; GRANT CREATE, USAGE ON SCHEMA public, worker TO {r};"
        " GRANT SELECT ON worker.tasks TO {r}"
    )
    async with await psycopg.AsyncConnection.connect(statbus_db, autocommit=True) as admin:
        async with login_role(admin, "reader", grants) as (_role, dsn):
            await install(dsn, activities=ACTIVITIES, profile="statbus", roles=False)
            job = await sb.add_import_job(admin, "seen")
            await sb.set_import_state(admin, job, "upload_completed")
            await sb.set_import_state(admin, job, "preparing_data")
            cursor = await admin.execute("SELECT public.system_stability_activities()")
            row = await cursor.fetchone()
            assert row is not None and row[0]["importing"] is True


async def test_a_relay_whose_functions_rls_blinds_refuses_to_start_and_never_says_stable(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """Someone hands the installed functions to a role RLS filters: the start is refused
    with the fix, and a relay started anyway reports unknown, never stable."""
    grants: LiteralString = (
        "GRANT USAGE ON SCHEMA worker TO {r}; GRANT SELECT ON public.import_job, "
        "worker.tasks TO {r}; ALTER FUNCTION public.system_stability_activities() OWNER TO {r}"
    )
    job = await sb.add_import_job(owner, "hidden")
    await sb.set_import_state(owner, job, "upload_completed")
    await sb.set_import_state(owner, job, "preparing_data")
    async with login_role(owner, "blind", grants) as (role, _dsn):
        try:
            config = statbus_config(statbus_dsn)
            problems = await startup_problems(config)
            assert any("row-level security" in p and f'"{role}"' in p for p in problems)
            async with running_relay(config) as relay:
                await eventually(lambda: _reconnects(relay) >= 2)
                assert relay.stability.current.state is State.UNKNOWN
        finally:
            await owner.execute(
                "ALTER FUNCTION public.system_stability_activities() OWNER TO CURRENT_USER"
            )


def _reconnects(relay: Relay) -> float:
    return sample(relay, "relay_reconnects_total")


async def test_a_state_that_is_not_in_the_enum_is_refused(statbus_db: str) -> None:
    activity = ACTIVITIES[0].model_copy(
        update={
            "expression": None,
            "table": "public.import_job",
            "active_states": ("analysing_data", "importing"),
            "details": None,
        }
    )
    with pytest.raises(InstallRefused) as refused:
        await install(statbus_db, activities=[activity], roles=False)
    assert refused.value.problems == [
        # The type by its schema: the install's session resolves names from pg_catalog only.
        'activities[0].active_states[1]: "importing" is not a value of public.import_job_state '
        "(its values: waiting_for_upload, upload_completed, preparing_data, analysing_data, "
        "waiting_for_review, approved, rejected, processing_data, failed, finished)"
    ]


async def test_the_seed_profile_on_statbus_is_refused_for_the_renamed_column(
    statbus_db: str,
) -> None:
    """The planning document's details read worker.tasks.duration_ms, renamed in statbus."""
    with pytest.raises(InstallRefused) as refused:
        await install(statbus_db, profile="seed", roles=False)
    assert refused.value.problems == [
        'activities[1].details (profile "seed"): column "duration_ms" does not exist'
    ]


# -- the command line, as a user runs it -----------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).resolve().parents[2],
    )


async def test_db_install_and_print_with_the_statbus_profile(statbus_db: str) -> None:
    printed = await asyncio.to_thread(_cli, "db", "install", "--print", "--profile", "statbus")
    assert printed.returncode == 0, printed.stderr
    assert "public.is_importing()" in printed.stdout
    assert "CREATE OR REPLACE TRIGGER" not in printed.stdout  # hinted by statbus's channels
    installed = await asyncio.to_thread(
        _cli, "db", "install", "--dsn", statbus_db, "--profile", "statbus"
    )
    assert installed.returncode == 0, installed.stderr
    assert "applied activities (generated)" in installed.stdout
    assert "activities (statbus): importing, deriving_statistical_units, deriving_reports" in (
        installed.stdout
    )


async def test_db_install_refused_by_rls_exits_2_with_the_fix(statbus_db: str) -> None:
    async with await psycopg.AsyncConnection.connect(statbus_db, autocommit=True) as admin:
        async with login_role(admin, "deploy", INSTALLER_GRANTS) as (role, dsn):
            result = await asyncio.to_thread(
                _cli, "db", "install", "--dsn", dsn, "--profile", "statbus"
            )
            assert result.returncode == 2
            assert "public.import_job has row-level security" in result.stderr
            assert f'ALTER ROLE "{role}" BYPASSRLS' in result.stderr
            assert "pw-for-tests" not in result.stderr + result.stdout
            assert "Traceback" not in result.stderr


async def test_run_refuses_a_config_other_than_the_installed_one(statbus_dsn: str) -> None:
    """The seed's activities are not what this database has installed: exit 2, no guess."""
    result = await asyncio.to_thread(
        _cli, "run", "--dsn", statbus_dsn, "--profile", "seed", "--listen", "127.0.0.1:0"
    )
    assert result.returncode == 2
    assert "refusing to start" in result.stderr
    assert "run `stability-relay db install` with this config" in result.stderr


# -- statbus's live feed, served by the relay ------------------------------------------------


async def test_statbus_live_feed_relays_its_worker_hooks_and_serves_the_indicators(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """What statbus's frontend reads: `connected`, then the worker's payloads verbatim; on
    `connected` it re-reads the three indicators, here from one route read fresh."""
    config = statbus_config(statbus_dsn)
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        async with sse_connect(base_url(relay) + "/api/sse/worker_status") as client:
            first = await client.next_event()
            assert (first.event, first.data) == ("connected", "true")
            await owner.execute("CALL worker.notify_is_importing_start()")
            event = await client.next_event()
            assert event.event is None
            assert event.json == {"type": "is_importing", "status": True}
        job = await sb.add_import_job(owner, "feed")
        await sb.set_import_state(owner, job, "upload_completed")
        await sb.set_import_state(owner, job, "preparing_data")
        async with aiohttp.ClientSession() as http:
            url = base_url(relay) + "/api/system-status/indicators"
            async with http.get(url) as response:
                assert response.status == 200
                body = await response.json()
    assert set(body) == {"importing", "deriving_statistical_units", "deriving_reports"}
    truth = await sb.statbus_truth(owner)
    assert body["importing"] == truth["importing"]
    assert body["importing"]["active"] is True
    assert body["deriving_reports"] == {"active": False}
