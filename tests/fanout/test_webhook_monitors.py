"""Push monitors as webhook kinds: Healthchecks.io, Uptime Kuma and Gatus, each against a
loopback stand-in that enforces its documented request (tests/monitor_receivers.py), with real
PostgreSQL commits making the relay busy and idle, signals set as the relay's reader sets
them, a 5xx retried, and Uptime Kuma's and Gatus's repeats of the current status."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from relay.app import Relay
from relay.config import load_config
from relay.errors import ConfigError
from relay.state.stability import State
from tests.monitor_receivers import Gatus, Healthchecks, Scripted, UptimeKuma
from tests.support import eventually, execute, relay_config, running_relay, sample
from tests.webhook_receiver import SECRET, hook

START = "INSERT INTO public.import_job (slug, state) VALUES ('x', 'approved')"
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'x'"
RESTART = "UPDATE public.import_job SET state = 'approved' WHERE slug = 'x'"
QUIET = {"interval": "1h", "read_timeout": "5s"}  # as tests/fanout/test_signal_webhooks.py
CHECK = "5a4b9c0e-1f2d-4e3a-9b8c-7d6e5f4a3b2c"


def config(db_dsn: str, tmp_path: Path, *hooks: dict[str, Any]) -> Any:
    return relay_config(db_dsn, webhooks=list(hooks), state_directory=str(tmp_path), signals=QUIET)


async def busy(relay: Relay, db_dsn: str, statement: str = START) -> None:
    await execute(db_dsn, statement)
    await eventually(lambda: relay.stability.current.state is State.PROCESSING)
    await eventually(lambda: sample(relay, "relay_signals_reads_total", outcome="ok") >= 1)


async def idle(relay: Relay, db_dsn: str) -> None:
    await execute(db_dsn, FINISH)
    await eventually(lambda: relay.stability.current.state is State.STABLE)


async def test_healthchecks_hears_start_success_fail_and_log(db_dsn: str, tmp_path: Path) -> None:
    async with Healthchecks(CHECK, Scripted(500, "boom")) as hc:
        entry = hook("hc", hc.url, format="healthchecks")
        async with running_relay(config(db_dsn, tmp_path, entry)) as relay:
            await hc.wait_for(1)  # the state at start (stable), once the 500 was retried
            await busy(relay, db_dsn)
            await hc.wait_for(2)
            assert relay.stability.update_signals({"importing": time.time() - 1800}, {})
            await hc.wait_for(3)
            assert relay.stability.update_signals({}, {})
            await hc.wait_for(4)
            await idle(relay, db_dsn)
            await hc.wait_for(5)
            await busy(relay, db_dsn, RESTART)  # a second busy period
            await hc.wait_for(6)
            await idle(relay, db_dsn)
            await hc.wait_for(7)
            assert sample(relay, "relay_webhook_deliveries_total", webhook="hc", outcome="retry")

    assert hc.kinds() == ["success", "start", "fail", "log", "success", "start", "success"]
    assert {hit.method for hit in hc.hits} == {"POST"}
    (failed,) = hc.scripted
    assert failed.headers["webhook-id"] == hc.hits[0].headers["webhook-id"], "a retry, same id"
    texts = [hit.text for hit in hc.hits]
    assert texts[1].startswith("Processing data: Importing data (stable for ")
    assert texts[2] == "Importing data has made no progress for 30 min"
    assert texts[3] == "Importing data is making progress again"
    assert texts[4].startswith("Data is stable (processing took ")
    assert all(hit.headers["Content-Type"].startswith("text/plain") for hit in hc.hits)
    assert "webhook-signature" not in hc.hits[0].headers
    assert hc.refused == []


async def test_uptime_kuma_is_told_each_state_and_again_every_interval(
    db_dsn: str, tmp_path: Path
) -> None:
    async with UptimeKuma("pUsH70k3n", Scripted(503, "busy", {"Retry-After": "1"})) as kuma:
        entry = hook("kuma", kuma.url, format="uptime_kuma", repeat="1s")
        async with running_relay(config(db_dsn, tmp_path, entry)) as relay:
            await kuma.wait_for(3)  # the state at start (after a 503), then two repeats
            assert kuma.statuses()[:3] == [("up", "Data is stable")] * 3
            first = len(kuma.hits)
            await busy(relay, db_dsn)
            await eventually(
                lambda: any(
                    status == "up" and msg.startswith("Processing data: Importing data")
                    for status, msg in kuma.statuses()[first:]
                ),
                timeout=10,
            )
            assert relay.stability.update_signals({"importing": time.time() - 1800}, {})
            stalled = ("down", "Importing data has made no progress for 30 min")
            await eventually(lambda: stalled in kuma.statuses(), timeout=10)
            at = kuma.statuses().index(stalled)
            # The repeats after it say the same: down, with the reason.
            await kuma.wait_for(at + 3)
            for status, msg in kuma.statuses()[at + 1 : at + 3]:
                assert status == "down"
                assert "Importing data has made no progress for 3" in msg
            # A repeat that fails is not retried: the next repeat, a new request, follows.
            kuma.script.append(Scripted(500, "oops"))
            failed_before = len(kuma.scripted)
            await eventually(lambda: len(kuma.scripted) > failed_before, timeout=10)
            count = len(kuma.hits)
            await kuma.wait_for(count + 1)
            repeat_failed = sample(
                relay, "relay_webhook_deliveries_total", webhook="kuma", outcome="repeat_failed"
            )
            assert relay.stability.update_signals({}, {})
            recovered = ("up", "Importing data is making progress again")
            await eventually(lambda: recovered in kuma.statuses(), timeout=10)
            await idle(relay, db_dsn)
            await eventually(
                lambda: kuma.statuses()[-1][0] == "up" and "stable" in kuma.statuses()[-1][1]
            )
            repeated = sample(
                relay, "relay_webhook_deliveries_total", webhook="kuma", outcome="repeated"
            )

    assert repeat_failed == 1
    assert repeated >= 4
    failed_id = kuma.scripted[-1].headers["webhook-id"]
    assert failed_id not in {hit.headers["webhook-id"] for hit in kuma.hits}, "never retried"
    first_hit, retried = kuma.scripted[0], kuma.hits[0]
    assert first_hit.headers["webhook-id"] == retried.headers["webhook-id"], "a transition is"
    assert {hit.method for hit in kuma.hits} == {"GET"}
    assert all(hit.query["ping"] == "" for hit in kuma.hits)
    assert kuma.refused == []


async def test_uptime_kuma_hears_down_while_the_database_is_unknown(
    db_dsn: str, tmp_path: Path
) -> None:
    async with UptimeKuma("pUsH70k3n") as kuma:
        entry = hook("kuma", kuma.url, format="uptime_kuma", repeat=None)
        async with running_relay(config(db_dsn, tmp_path, entry)) as relay:
            await kuma.wait_for(1)
            assert relay.stability.update(State.UNKNOWN)
            await kuma.wait_for(2)
    status, msg = kuma.statuses()[1]
    assert status == "down"
    assert msg.startswith("Status unknown: the relay has no database connection")


async def test_gatus_gets_success_error_and_the_busy_periods_duration(
    db_dsn: str, tmp_path: Path
) -> None:
    async with Gatus("data_stability", "potato-token", Scripted(502)) as gatus:
        entry = hook("gatus", gatus.url, format="gatus", token="potato-token", repeat="1s")
        async with running_relay(config(db_dsn, tmp_path, entry)) as relay:
            await gatus.wait_for(2)  # the state at start (after a 502), then a repeat
            first = len(gatus.hits)
            await busy(relay, db_dsn)
            assert relay.stability.update_signals({"importing": time.time() - 1800}, {})
            failing = ("false", "Importing data has made no progress for 30 min")
            await eventually(lambda: failing in gatus.results()[first:], timeout=10)
            assert relay.stability.update_signals({}, {})
            await idle(relay, db_dsn)
            await eventually(lambda: any("duration" in hit.query for hit in gatus.hits))

    assert gatus.results()[:2] == [("true", None), ("true", None)]
    (ended,) = [hit for hit in gatus.hits if "duration" in hit.query]
    assert ended.query["success"] == "true"
    assert re.fullmatch(r"[0-9]+\.[0-9]{3}s", ended.query["duration"])
    assert {hit.method for hit in gatus.hits} == {"POST"}
    assert gatus.refused == []
    assert gatus.scripted[0].headers["webhook-id"] == gatus.hits[0].headers["webhook-id"]


async def test_a_wrong_gatus_token_is_a_failure_not_a_retry(db_dsn: str, tmp_path: Path) -> None:
    async with Gatus("data_stability", "potato-token") as gatus:
        entry = hook("gatus", gatus.url, format="gatus", token="wrong", repeat=None)
        async with running_relay(config(db_dsn, tmp_path, entry)) as relay:
            await eventually(lambda: gatus.refused)
            await eventually(
                lambda: (
                    sample(
                        relay, "relay_webhook_deliveries_total", webhook="gatus", outcome="failed"
                    )
                    == 1
                )
            )
    assert gatus.refused == [(401, "token")]
    assert gatus.hits == []


BAD = [
    (
        {"format": "healthchecks", "url": f"https://hc-ping.com/{CHECK}/start"},
        "url: give the check's ping URL itself",
    ),
    (
        {"format": "healthchecks", "url": f"https://hc-ping.com/{CHECK}", "secret": SECRET},
        "secret: healthchecks cannot check a Standard Webhooks signature",
    ),
    (
        {"format": "uptime_kuma", "url": "https://kuma.example/push/abc"},
        "url: expected Uptime Kuma's push URL",
    ),
    (
        {"format": "uptime_kuma", "url": "https://kuma.example/api/push/abc?x=1"},
        "url: expected Uptime Kuma's push URL",
    ),
    (
        {"format": "gatus", "url": "https://gatus.example/api/v1/endpoints/core_x/external"},
        "token: gatus needs the external endpoint's token",
    ),
    (
        {"format": "gatus", "url": "https://gatus.example/api/v1/endpoints/core_x", "token": "t"},
        "url: expected https://<gatus>/api/v1/endpoints/<key>/external",
    ),
    (
        {"format": "json", "url": "https://ci.example/hook", "token": "t"},
        "token: only gatus takes a token",
    ),
    (
        {"format": "healthchecks", "url": f"https://hc-ping.com/{CHECK}", "repeat": "1m"},
        "repeat: only uptime_kuma and gatus repeat",
    ),
    (
        {"format": "uptime_kuma", "url": "https://kuma.example/api/push/abc", "repeat": "0s"},
        "webhooks[0].repeat: must be greater than 0s",
    ),
]


@pytest.mark.parametrize(("entry", "message"), BAD)
def test_each_kind_says_what_is_wrong_with_its_settings(
    tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(__import__("json").dumps({"webhooks": [{"name": "m", **entry}]}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    problems = caught.value.problems
    assert any(message in problem for problem in problems), problems
    assert not any(CHECK in p or "kuma.example" in p for p in problems), "no URL echoed"


def test_status_monitors_hear_every_state_and_repeat_by_default(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(
        "webhooks:\n"
        "  - {name: kuma, format: uptime_kuma, url: 'https://k.example/api/push/Ab12'}\n"
        "  - {name: gatus, format: gatus, token: tok-secret-1,"
        " url: 'https://g.example/api/v1/endpoints/core_data/external'}\n"
        "  - {name: hc, format: healthchecks, url: 'https://hc-ping.com/" + CHECK + "'}\n"
    )
    config = load_config(path, environ={})
    kuma, gatus, hc = config.webhooks
    assert kuma.on == gatus.on == ("stable", "processing", "unknown")
    assert kuma.repeat == gatus.repeat == 60.0
    assert hc.on == ("stable", "processing") and hc.repeat is None
    secrets = config.secrets()
    assert "tok-secret-1" in secrets
    assert "https://k.example/api/push/Ab12" in secrets, "the push token is in the URL"


async def test_webhook_test_is_a_log_entry_for_healthchecks_and_a_marked_push_for_kuma(
    tmp_path: Path,
) -> None:
    from tests.cli.test_webhook_cli import cli, write

    async with Healthchecks(CHECK) as hc, UptimeKuma("pUsH70k3n") as kuma:
        hooks = [
            {"name": "hc", "url": hc.url, "format": "healthchecks"},
            {"name": "kuma", "url": kuma.url, "format": "uptime_kuma"},
        ]
        config = write(tmp_path, hooks)
        for name in ("hc", "kuma"):
            code, out, err = await cli("webhook", "test", name, "--config", config)
            assert code == 0, (out, err)
            assert "pUsH70k3n" not in out and CHECK not in out, "the secret URL is not printed"
    assert hc.kinds() == ["log"]
    assert hc.hits[0].text.startswith('Test: stability-relay can post here (webhook "hc")')
    ((status, msg),) = kuma.statuses()
    assert status == "up" and msg.startswith("Test: ")
