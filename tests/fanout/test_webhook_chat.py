"""Chat formats besides Slack: Microsoft Teams (a Workflows webhook, an Adaptive Card message)
and Discord (content and an embed), against loopback stand-ins that enforce each one's
documented request (tests/monitor_receivers.py), with real PostgreSQL commits; Slack's texts,
a 5xx retried, and Discord's 429 waited out by its JSON retry_after and its Retry-After."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from relay.app import Relay
from relay.state.stability import State
from tests.monitor_receivers import Discord, Scripted, Teams
from tests.support import eventually, execute, relay_config, running_relay, sample
from tests.webhook_receiver import hook

START = "INSERT INTO public.import_job (slug, state) VALUES ('x', 'approved')"
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'x'"
QUIET = {"interval": "1h", "read_timeout": "5s"}
PUBLIC = {"public_url": "https://status.example"}


def config(db_dsn: str, tmp_path: Path, *hooks: dict[str, Any]) -> Any:
    return relay_config(
        db_dsn, webhooks=list(hooks), state_directory=str(tmp_path), signals=QUIET, http=PUBLIC
    )


async def busy(relay: Relay, db_dsn: str) -> None:
    await execute(db_dsn, START)
    await eventually(lambda: relay.stability.current.state is State.PROCESSING)
    await eventually(lambda: sample(relay, "relay_signals_reads_total", outcome="ok") >= 1)


def card(hit: Any) -> dict[str, Any]:
    (attachment,) = hit.json["attachments"]
    content: dict[str, Any] = attachment["content"]
    return content


async def test_teams_gets_an_adaptive_card_per_state_and_signal(
    db_dsn: str, tmp_path: Path
) -> None:
    async with Teams(Scripted(500, "try later")) as teams:
        async with running_relay(
            config(db_dsn, tmp_path, hook("teams", teams.url, format="teams"))
        ) as relay:
            await teams.wait_for(1)
            await busy(relay, db_dsn)
            await teams.wait_for(2)
            assert relay.stability.update_signals({"importing": time.time() - 1800}, {})
            await teams.wait_for(3)
            await execute(db_dsn, FINISH)
            await teams.wait_for(5)  # the signal's end, then stable

    titles = [card(hit)["body"][0]["text"] for hit in teams.hits]
    assert titles[0] == "\u2705 Data is stable"
    assert titles[1] == "\u23f3 Processing data: Importing data"
    assert titles[2] == "\u26a0\ufe0f Importing data has made no progress for 30 min"
    assert titles[3] == "\u2705 Importing data is no longer stalled: it finished"
    assert titles[4] == "\u2705 Data is stable"
    assert card(teams.hits[4])["body"][1]["text"].startswith("Processing took ")
    assert card(teams.hits[1])["body"][1]["text"].startswith("Stable for ")
    action = card(teams.hits[0])["actions"][0]
    assert action == {
        "type": "Action.OpenUrl",
        "title": "Open the status page",
        "url": "https://status.example",
    }
    (failed,) = teams.scripted
    assert failed.headers["webhook-id"] == teams.hits[0].headers["webhook-id"]
    assert teams.refused == []


async def test_discord_gets_content_and_an_embed_and_waits_out_429(
    db_dsn: str, tmp_path: Path
) -> None:
    limited = '{{"message": "You are being rate limited.", "retry_after": {}, "global": false}}'
    script = (
        # The header says longer than the body: the header is waited.
        Scripted(429, limited.format(0.2), {"Retry-After": "2"}),
        # The body says longer than the header (its fraction): the body is waited.
        Scripted(429, limited.format(1.6), {"Retry-After": "1"}),
    )
    async with Discord(*script) as discord:
        entry = hook("discord", discord.url, format="discord", retry_schedule=["0.1s"])
        async with running_relay(config(db_dsn, tmp_path, entry)) as relay:
            await discord.wait_for(1)
            await busy(relay, db_dsn)
            await discord.wait_for(2)
            await execute(db_dsn, FINISH)
            await discord.wait_for(3)

    first, second = discord.scripted
    # Lower bounds only: a slow machine waits longer, never shorter.
    assert second.at - first.at >= 2.0 - 0.05
    assert discord.hits[0].at - second.at >= 1.6 - 0.05
    assert first.headers["webhook-id"] == discord.hits[0].headers["webhook-id"]
    messages = [hit.json for hit in discord.hits]
    assert messages[0]["content"] == "\u2705 Data is stable"
    assert messages[1]["content"].startswith("\u23f3 Processing data: Importing data (stable for ")
    assert messages[2]["content"].startswith("\u2705 Data is stable (processing took ")
    embed = messages[2]["embeds"][0]
    assert embed["title"] == "Data is stable"
    assert embed["description"].startswith("Processing took ")
    assert embed["url"] == "https://status.example"
    assert all(message["allowed_mentions"] == {"parse": []} for message in messages)
    assert discord.refused == []
