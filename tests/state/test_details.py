"""The details API and relayed channels, against a real PostgreSQL over real HTTP."""

from __future__ import annotations

import asyncio

import aiohttp

from relay.devtools.embedded import EmbeddedPostgres
from tests.support import (
    base_url,
    eventually,
    execute,
    relay_config,
    running_relay,
    sample,
    sse_connect,
)

SEED_JOBS = (
    "INSERT INTO public.import_job (slug, state, priority, total_rows, imported_rows, "
    "import_completed_pct) VALUES "
    "('second', 'processing_data', 2, 1000, 250, 25), "
    "('first', 'analysing_data', 1, NULL, 0, 0), "
    "('done', 'finished', 0, 10, 10, 100)",
    "INSERT INTO worker.tasks (command, state, priority) VALUES "
    "('derive_reports', 'processing', 5), ('derive_statistical_unit', 'pending', 1), "
    "('task_cleanup', 'pending', 0), ('derive_reports', 'completed', 0)",
)


async def test_details_lists_active_jobs_and_tasks_in_priority_order(db_dsn: str) -> None:
    await execute(db_dsn, *SEED_JOBS)
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        async with http.get(base_url(relay) + "/api/system-status/details") as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            body = await response.json()
    assert [job["slug"] for job in body["import_jobs"]] == ["first", "second"]
    second = body["import_jobs"][1]
    assert second["state"] == "processing_data"
    assert (second["total_rows"], second["imported_rows"], second["progress_pct"]) == (
        1000,
        250,
        25,
    )
    assert [task["command"] for task in body["analytics_tasks"]] == [
        "derive_statistical_unit",
        "derive_reports",
    ]
    assert set(body["analytics_tasks"][0]) >= {
        "id",
        "command",
        "state",
        "created_at",
        "duration_ms",
    }
    assert body["system_stable"] is False


# An activity that is not active: no rows, nothing stalled, nothing overdue, no read needed.
QUIET = {
    "depth": 0,
    "depth_capped": False,
    "oldest_age_s": 0,
    "stalled": None,
    "stalled_since": None,
    "overdue": False,
    "overdue_bound_s": None,
    "busy_since": None,
}


async def test_details_when_stable_has_empty_lists(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        await eventually(lambda: relay.stability.current.stable is True)
        async with http.get(base_url(relay) + "/api/system-status/details") as response:
            body = await response.json()
        seq = relay.stability.current.seq
    assert body == {
        "seq": seq,
        "ahead": False,
        "import_jobs": [],
        "analytics_tasks": [],
        "system_stable": True,
        "eta": None,
        "signals": {"importing": QUIET, "analytics": QUIET},
        "signals_error": None,
        "activities": {
            "importing": {
                "label": "Importing data",
                "active": False,
                "items": [],
                "total": 0,
                "eta": None,
            },
            "analytics": {
                "label": "Deriving statistics",
                "active": False,
                "items": [],
                "total": 0,
                "eta": None,
            },
        },
    }


async def test_concurrent_requests_in_one_window_cost_one_round_of_queries(db_dsn: str) -> None:
    await execute(db_dsn, *SEED_JOBS)
    config = relay_config(db_dsn, details={"cache": "30s"})
    async with running_relay(config) as relay:
        url = base_url(relay) + "/api/system-status/details"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def get() -> int:
                async with http.get(url) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(get() for _ in range(300)))
        assert statuses == [200] * 300
        assert sample(relay, "relay_details_queries_total") == 1


async def test_details_answers_503_with_json_when_the_database_is_gone(
    restartable_pg: EmbeddedPostgres, db_dsn: str
) -> None:
    config = relay_config(db_dsn, details={"cache": "0s", "statement_timeout": "2s"})
    async with running_relay(config) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay) + "/api/system-status/details"
        async with http.get(url) as response:
            assert response.status == 200
        restartable_pg.stop(mode="immediate")
        async with http.get(url) as response:
            assert response.status == 503
            body = await response.json()
        assert set(body) == {"error"}
        assert "psycopg" not in body["error"] and "127.0.0.1" not in body["error"]
        restartable_pg.start()

        async def recovered() -> bool:
            async with http.get(url) as again:
                return again.status == 200

        await eventually(recovered, timeout=15, interval=0.3)


async def test_progress_notifications_become_named_events(db_dsn: str) -> None:
    await execute(db_dsn, *SEED_JOBS)
    config = relay_config(db_dsn, channels=["import_job_progress"])
    async with running_relay(config) as relay:
        await eventually(lambda: relay.listener.connected.is_set())
        async with sse_connect(base_url(relay) + "/api/system-status/live") as client:
            first = await client.next_event()
            assert first.event is None
            await execute(
                db_dsn,
                "UPDATE public.import_job SET imported_rows = 500, import_completed_pct = 50 "
                "WHERE slug = 'second'",
            )
            event = await client.next_event()
            assert event.event == "import_job_progress"
            assert event.id is None, "named events leave Last-Event-ID to stability events"
            assert event.json["slug"] == "second"
            assert (event.json["imported_rows"], event.json["progress_pct"]) == (500, 50)


async def test_bad_payloads_are_counted_and_dropped_never_a_crash(db_dsn: str) -> None:
    config = relay_config(db_dsn, channels=["import_job_progress"])
    async with running_relay(config) as relay:
        await eventually(lambda: relay.listener.connected.is_set())
        async with sse_connect(base_url(relay) + "/api/system-status/live") as client:
            await client.next_event()
            await execute(
                db_dsn,
                "SELECT pg_notify('import_job_progress', 'not json')",
                "SELECT pg_notify('import_job_progress', '[1, 2]')",
                "SELECT pg_notify('import_job_progress', repeat('x', 7990))",
                "SELECT pg_notify('import_job_progress', repeat('[', 5000))",
                "SELECT pg_notify('import_job_progress', E'{\"ok\":\\n true}')",
            )
            event = await client.next_event()
            assert event.event == "import_job_progress"
            assert event.json == {"ok": True}, "pretty JSON is re-encoded onto one data line"
        dropped = "relay_notifications_dropped_total"
        channel = "import_job_progress"
        assert sample(relay, dropped, channel=channel, reason="not_json") == 3
        assert sample(relay, dropped, channel=channel, reason="not_an_object") == 1
        assert relay.listener.connected.is_set()
        # The listener lives on: a flip still reaches the state.
        await execute(
            db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('z', 'approved')"
        )
        await eventually(lambda: relay.stability.current.stable is False)
