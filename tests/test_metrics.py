"""/metrics, /healthz, /readyz and the JSON snapshot, scraped over real HTTP."""

from __future__ import annotations

import math

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from relay.fanout.gauges import StateGauges
from relay.metrics import Metrics
from relay.state.stability import Stability, State
from tests.support import base_url, eventually, execute, relay_config, running_relay, sse_connect

EXPORTED = [
    "relay_system_stable",
    "relay_database_connected",
    "relay_sse_clients",
    "relay_notifications",
    "relay_reconnects",
    "relay_state_transitions",
    "relay_state_since_timestamp_seconds",
    "relay_notify_queue_usage_ratio",
]


async def scrape(
    http: aiohttp.ClientSession, url: str
) -> dict[str, list[tuple[dict[str, str], float]]]:
    async with http.get(url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    for sample_labels, sample_value in samples[name]:
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return sample_value
    raise KeyError((name, labels))


async def test_every_metric_is_exported_and_follows_the_state(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay)
        await eventually(lambda: relay.stability.current.stable is True)
        async with sse_connect(url + "/api/system-status/live", session=http) as client:
            await client.next_event()
            await execute(
                db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('m', 'approved')"
            )
            await client.wait_for_state("processing")
            samples = await scrape(http, url)
        names = {name.removesuffix("_total") for name in samples}
        for metric in EXPORTED:
            assert metric in names, f"{metric} missing from /metrics"
        assert value(samples, "relay_system_stable") == 0.0
        assert value(samples, "relay_database_connected") == 1.0
        assert value(samples, "relay_sse_clients") == 1.0
        assert value(samples, "relay_notifications_total", channel="system_stability") >= 1
        assert value(samples, "relay_state_transitions_total", state="processing") == 1
        assert value(samples, "relay_state_transitions_total", state="stable") == 1
        since = value(samples, "relay_state_since_timestamp_seconds")
        assert abs(since - relay.stability.current.since) < 0.001
        assert 0.0 <= value(samples, "relay_notify_queue_usage_ratio") < 1.0
        assert value(samples, "relay_reconnects_total") == 0


async def test_health_readiness_and_snapshot(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay)
        async with http.get(url + "/healthz") as health:
            assert health.status == 200
        await eventually(lambda: relay.listener.connected.is_set())
        async with http.get(url + "/readyz") as ready:
            assert ready.status == 200
        async with http.get(url + "/api/system-status") as snapshot:
            body = await snapshot.json()
        assert body["stable"] is True
        assert body["state"] == "stable"
        assert body["database_connected"] is True
        assert body["seq"] == relay.stability.current.seq
        assert "since" in body


async def test_each_activity_has_a_gauge_that_follows_it(db_dsn: str) -> None:
    """1 while active, 0 while not; transitions count states, not changes of activity
    within one."""
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay)
        await eventually(lambda: relay.stability.current.stable is True)
        samples = await scrape(http, url)
        assert value(samples, "relay_activity_active", activity="importing") == 0
        assert value(samples, "relay_activity_active", activity="analytics") == 0

        await execute(
            db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('j', 'approved')"
        )
        await eventually(lambda: dict(relay.stability.current.activities)["importing"] is True)
        await execute(
            db_dsn,
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')",
            "UPDATE public.import_job SET state = 'finished'",
        )
        await eventually(lambda: relay.stability.current.running == ("Deriving statistics",))
        samples = await scrape(http, url)
        assert value(samples, "relay_activity_active", activity="importing") == 0
        assert value(samples, "relay_activity_active", activity="analytics") == 1
        entered = value(samples, "relay_state_transitions_total", state="processing")
        assert entered == 1  # importing → analytics stayed one processing period


def test_an_activity_gauge_is_nan_while_unknown() -> None:
    stability = Stability({"importing": "Importing data"})
    metrics = Metrics()
    StateGauges(metrics, stability, lambda: 0, lambda: True)
    sample = metrics.registry.get_sample_value
    assert math.isnan(sample("relay_activity_active", {"activity": "importing"}) or 0.0)
    stability.update_truth({"importing": True})
    assert sample("relay_activity_active", {"activity": "importing"}) == 1
    stability.update(State.UNKNOWN)
    assert math.isnan(sample("relay_activity_active", {"activity": "importing"}) or 0.0)
