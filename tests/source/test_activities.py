"""Declared activities: what the config accepts, the SQL generated from them, and the checks
that keep a relay from serving an install made from another definition."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from relay.cli.main import startup_problems
from relay.config.activities import Activity
from relay.source.activities.sql import fingerprint, install_script
from relay.source.install import install
from tests.support import execute, fresh_database, relay_config

TABLE_ACTIVITY = {
    "name": "exports",
    "label": "Exporting data",
    "table": "public.export_job",
    "state_column": "status",
    "active_states": ["queued", "running"],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "x" * 40}, "should match pattern"),
        ({"label": "a\nSTOPPING=1"}, "control characters"),
        ({"label": "Costs $stability_relay$ x"}, "must not contain $stability_relay$"),
        ({"active_states": ["ok", "bad\\"]}, "backslashes"),
        ({"filter": "true; DROP TABLE x"}, 'without ";"'),
        ({"details": {}}, "at least one field"),
        ({"expression": "true"}, "exactly one of table"),
        ({"active_states": []}, "needs active_states"),
    ],
)
def test_what_could_break_the_generated_sql_is_refused(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("$", r"\$")):
        Activity.model_validate({**TABLE_ACTIVITY, **change})


def test_the_fingerprint_follows_the_definition_not_just_the_names() -> None:
    one = Activity.model_validate(TABLE_ACTIVITY)
    other = Activity.model_validate({**TABLE_ACTIVITY, "active_states": ["queued"]})
    assert fingerprint([one]) != fingerprint([other])
    assert fingerprint([one]) in install_script([one])


async def test_an_activity_named_like_an_old_view_installs(pg_admin_dsn: str) -> None:
    """The earlier design's views are dropped before this install's are made."""
    async with fresh_database(pg_admin_dsn) as dsn:
        await execute(
            dsn,
            "CREATE SCHEMA worker",
            "CREATE TABLE worker.tasks (id int, state text)",
            "INSERT INTO worker.tasks VALUES (1, 'pending')",
        )
        tasks = Activity.model_validate(
            {
                "name": "tasks",
                "label": "Tasks",
                "table": "worker.tasks",
                "active_states": ["pending"],
            }
        )
        await install(dsn, activities=[tasks], roles=False)
        await install(dsn, activities=[tasks], roles=False)  # and again
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cursor = await conn.execute("SELECT public.system_stability_activities()")
            assert await cursor.fetchone() == ({"tasks": True},)


async def test_a_relay_refuses_an_install_made_from_another_definition(pg_admin_dsn: str) -> None:
    async with fresh_database(pg_admin_dsn) as dsn:
        await execute(dsn, "CREATE TABLE public.export_job (id int, status text)")
        installed = Activity.model_validate(TABLE_ACTIVITY)
        await install(dsn, activities=[installed], roles=False)
        same = relay_config(dsn, activities=[TABLE_ACTIVITY])
        assert await startup_problems(same) == []
        changed = relay_config(dsn, activities=[{**TABLE_ACTIVITY, "active_states": ["queued"]}])
        [problem] = await startup_problems(changed)
        assert "generated from another definition" in problem
        assert "db install" in problem
