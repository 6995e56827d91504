"""Enrich: the function `db install` generates, checked and granted as the activities' are,
and a feed that calls it in single-flight batches, on a scratch schema of its own."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest

from relay.config.activities import EnrichRead, Join
from relay.source.activities.check import check_enrichers
from relay.source.install import InstallRefused, install
from tests.fanout.test_feeds import connected, data_events, feed_config
from tests.support import base_url, eventually, running_relay, sse_connect

SCRATCH = """
CREATE SCHEMA scratch;
CREATE TYPE scratch.kind AS ENUM ('a', 'b');
CREATE TABLE scratch.definition (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug text NOT NULL, name text NOT NULL, mode scratch.kind NOT NULL, custom boolean NOT NULL
);
CREATE TABLE scratch.job (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state text NOT NULL, pct numeric(5, 2) DEFAULT 0,
    definition_id integer REFERENCES scratch.definition (id),
    at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION scratch.job_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('job', json_build_object('verb', TG_OP,
        'id', CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END)::text);
    RETURN NULL;
END;
$$;
CREATE TRIGGER job_notify AFTER INSERT OR UPDATE OR DELETE ON scratch.job
    FOR EACH ROW EXECUTE FUNCTION scratch.job_notify();
INSERT INTO scratch.definition (slug, name, mode, custom) VALUES ('d1', 'One', 'b', false);
"""
ROW = (
    "pg_catalog.to_jsonb(t.*) || pg_catalog.jsonb_build_object('definition', "
    "pg_catalog.jsonb_build_object('slug', d.slug, 'name', d.name, 'mode', d.mode, "
    "'custom', d.custom))"
)
READ = EnrichRead(
    name="scratch_job",
    table="scratch.job",
    joins=(Join(table="scratch.definition", alias="d", condition="d.id = t.definition_id"),),
    row=ROW,
    wrap="job",
)
# What the function must answer for a row: the row as the app's own query reads it.
EXPECTED = """
SELECT pg_catalog.to_jsonb(j.*) || jsonb_build_object('definition', jsonb_build_object(
    'slug', d.slug, 'name', d.name, 'mode', d.mode, 'custom', d.custom))
FROM scratch.job AS j LEFT JOIN scratch.definition AS d ON j.definition_id = d.id
WHERE j.id = %s
"""


def enrich_feed(**enrich: Any) -> dict[str, Any]:
    return {
        "path": "/jobs",
        "channels": ["job"],
        "events": "unnamed",
        "on_connect": "none",
        "filter": {
            "param": "ids",
            "field": "job.id",
            "values": "positive_integers",
            "invalid_body": {"error": "Invalid job ID format"},
            "scope": {},
        },
        "per_channel": {
            "job": {
                "enrich": {"read": READ.model_dump(), **enrich},
                "reshape": {"add": {"timestamp": "$now"}, "keep": ["verb", "job", "timestamp"]},
            }
        },
    }


@pytest.fixture
async def scratch_dsn(db_dsn: str) -> str:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await conn.execute(SCRATCH)
    await install(db_dsn, park=False, enrichers=[READ])
    return db_dsn


async def test_one_call_answers_every_payload_in_order_as_the_row_reads(
    scratch_dsn: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(scratch_dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO scratch.job (state, definition_id) VALUES ('new', 1)")
        await conn.execute("INSERT INTO scratch.job (state, pct) VALUES ('orphan', 40.00)")
        payloads = [
            {"verb": "UPDATE", "id": 2},
            {"verb": "DELETE", "id": 9},
            {"verb": "INSERT", "id": 1},
            {"verb": "UPDATE", "id": 77},  # gone: null
            {"verb": "UPDATE", "id": "1"},  # the column's type reads it
        ]
        cursor = await conn.execute(
            "SELECT public.system_stability_enrich_scratch_job(%s::jsonb)",
            (json.dumps(payloads),),
        )
        row = await cursor.fetchone()
        assert row is not None
        answer = row[0]
        rows = {}
        for job in (1, 2):
            cursor = await conn.execute(EXPECTED, (job,))
            found = await cursor.fetchone()
            assert found is not None
            rows[job] = found[0]
        assert answer == [
            {"verb": "UPDATE", "job": rows[2]},
            {"verb": "DELETE", "job": {"id": 9}},
            {"verb": "INSERT", "job": rows[1]},
            None,
            {"verb": "UPDATE", "job": rows[1]},
        ]
        assert rows[2]["definition"] == {"slug": None, "name": None, "mode": None, "custom": None}
        with pytest.raises(psycopg.errors.DataError):
            await conn.execute(
                "SELECT public.system_stability_enrich_scratch_job(%s::jsonb)",
                ('[{"verb":"UPDATE","id":"abc"}]',),
            )


async def test_the_function_is_the_relay_role_s_only(scratch_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(scratch_dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT has_function_privilege('stability_relay', "
            "'public.system_stability_enrich_scratch_job(jsonb)', 'EXECUTE'), "
            "has_function_privilege('public', "
            "'public.system_stability_enrich_scratch_job(jsonb)', 'EXECUTE'), "
            "(SELECT prosecdef AND proconfig = '{\"search_path=pg_catalog, pg_temp\"}' "
            " FROM pg_proc WHERE proname = 'system_stability_enrich_scratch_job')"
        )
        assert await cursor.fetchone() == (True, False, True)
    # Installed again without it: gone (and roles.sql has nothing to grant).
    await install(scratch_dsn, park=False)
    async with await psycopg.AsyncConnection.connect(scratch_dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT to_regprocedure('public.system_stability_enrich_scratch_job(jsonb)')"
        )
        assert await cursor.fetchone() == (None,)


async def test_install_refuses_a_read_of_a_missing_table_or_one_rls_would_blind(
    db_dsn: str,
) -> None:
    with pytest.raises(InstallRefused) as refused:
        await install(db_dsn, park=False, enrichers=[READ])
    assert any("table scratch.job does not exist" in p for p in refused.value.problems)
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await conn.execute(SCRATCH)
        await conn.execute("ALTER TABLE scratch.definition ENABLE ROW LEVEL SECURITY")
        await conn.execute("DROP ROLE IF EXISTS blind_reader")
        await conn.execute("CREATE ROLE blind_reader")
        await conn.execute("GRANT SELECT ON scratch.job, scratch.definition TO blind_reader")
        problems = await check_enrichers(conn, [READ], role="blind_reader")
        await conn.execute("DROP OWNED BY blind_reader")
        await conn.execute("DROP ROLE blind_reader")
    [problem] = problems
    assert problem.startswith('enrich read "scratch_job".joins[0].table: scratch.definition has')
    assert "row-level security" in problem


async def test_a_burst_is_read_in_few_calls_and_every_client_ends_on_the_last_row(
    scratch_dsn: str,
) -> None:
    async with running_relay(feed_config(scratch_dsn, enrich_feed())) as relay:
        await connected(relay)
        url = base_url(relay) + "/jobs"
        async with (
            sse_connect(url) as every,
            sse_connect(url + "?ids=1&scope=updates_for_ids_only") as one,
        ):
            await eventually(lambda: len(relay.feeds) == 2)
            async with await psycopg.AsyncConnection.connect(scratch_dsn) as conn:
                await conn.execute("INSERT INTO scratch.job (state) VALUES ('s0'), ('s0')")
                await conn.commit()
                for n in range(1, 201):  # 400 notifications, each committed
                    await conn.execute("UPDATE scratch.job SET state = %s", (f"s{n}",))
                    await conn.commit()
            last: dict[float, Any] = {}
            while (
                last.get(1.0, {}).get("state") != "s200" or last.get(2.0, {}).get("state") != "s200"
            ):
                [event] = await data_events(every, 1)
                last[event.json["job"]["id"]] = event.json["job"]
                assert list(event.json) == ["verb", "job", "timestamp"]
            mine = await data_events(one, 1)
            while mine[-1].json["job"]["state"] != "s200":
                mine += await data_events(one, 1)
            assert {e.json["job"]["id"] for e in mine} == {1}
        calls = relay.metrics.registry.get_sample_value(
            "relay_feed_enrich_calls_total", {"feed": "/jobs"}
        )
        assert calls is not None and calls < 402 / 2  # batched: far fewer calls than payloads


async def test_a_failed_call_sends_nothing_counts_and_tells_clients_to_resync(
    scratch_dsn: str,
) -> None:
    async with running_relay(feed_config(scratch_dsn, enrich_feed())) as relay:
        await connected(relay)
        async with sse_connect(base_url(relay) + "/jobs") as client:
            await eventually(lambda: len(relay.feeds) == 1)
            async with await psycopg.AsyncConnection.connect(scratch_dsn, autocommit=True) as conn:
                await conn.execute("DROP FUNCTION public.system_stability_enrich_scratch_job")
                await conn.execute("INSERT INTO scratch.job (state) VALUES ('x')")
                [told] = await data_events(client, 1)
                assert (told.event, told.json) == ("resync", {"reason": "enrich_failed"})
                await install(scratch_dsn, park=False, enrichers=[READ])
                await conn.execute("UPDATE scratch.job SET state = 'y'")
                [event] = await data_events(client, 1)
                assert event.json["job"]["state"] == "y"
        failures = relay.metrics.registry.get_sample_value(
            "relay_feed_enrich_failures_total", {"feed": "/jobs"}
        )
        assert failures == 1


async def test_a_full_line_is_dropped_and_clients_told(scratch_dsn: str) -> None:
    slow = READ.model_copy(
        update={"row": "(SELECT pg_catalog.to_jsonb(t.*) FROM pg_catalog.pg_sleep(0.5))"}
    )
    await install(scratch_dsn, park=False, enrichers=[slow])
    feed = enrich_feed(max_pending=3)
    feed["per_channel"]["job"]["enrich"]["read"] = slow.model_dump()
    async with running_relay(feed_config(scratch_dsn, feed)) as relay:
        await connected(relay)
        async with sse_connect(base_url(relay) + "/jobs") as client:
            await eventually(lambda: len(relay.feeds) == 1)
            async with await psycopg.AsyncConnection.connect(scratch_dsn) as conn:
                await conn.execute("INSERT INTO scratch.job (state) VALUES ('a')")
                await conn.commit()
                await asyncio.sleep(0.1)  # the first call is in flight
                for n in range(10):  # distinct payloads: 5 verbs/ids are not deduplicated
                    await conn.execute("INSERT INTO scratch.job (state) VALUES (%s)", (f"b{n}",))
                    await conn.commit()
            seen = await data_events(client, 2, timeout=10)
            events = [(e.event, e.json.get("reason")) for e in seen]
            assert ("resync", "enrich_overflow") in events
        dropped = relay.metrics.registry.get_sample_value(
            "relay_feed_enrich_dropped_total", {"feed": "/jobs"}
        )
        assert dropped is not None and dropped >= 3
