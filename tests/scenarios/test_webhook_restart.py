"""Webhooks across restarts and in the logs: the relay as users run it, a real process.

Killed with SIGKILL while a delivery is owed: sent after the restart, same ``webhook-id``.
Changed while the relay was down: the new state is sent on start; unchanged: nothing is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.cli.test_cli import REPO, free_port
from tests.support import eventually, execute
from tests.webhook_receiver import SECRET, Answer, Receiver, verify_signature

START = "INSERT INTO public.import_job (slug, state) VALUES ('x', 'approved')"
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'x'"


def write_config(path: Path, dsn: str, state_directory: Path, hooks: list[dict[str, Any]]) -> None:
    tree = {
        "database": {"dsn": dsn, "heartbeat_interval": "1s", "reconnect_initial": "0.1s"},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"format": "json"},
        "state_directory": str(state_directory),
        "webhooks": hooks,
    }
    path.write_text(json.dumps(tree))  # JSON is YAML


class RelayProcess:
    """``python -m relay run --config FILE``, its output appended to a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay",
                "run",
                "--config",
                str(self.config),
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                cwd=REPO,
            )

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signum)
        code = await asyncio.wait_for(self.process.wait(), timeout=15)
        self.process = None
        return code

    def lines(self) -> list[dict[str, Any]]:
        text = self.log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@contextlib.asynccontextmanager
async def relay_process(config: Path, log: Path) -> AsyncIterator[RelayProcess]:
    relay = RelayProcess(config, log)
    try:
        yield relay
    finally:
        if relay.process is not None and relay.process.returncode is None:
            relay.process.kill()
            await relay.process.wait()


def saved_pending_id(state_directory: Path, name: str) -> str | None:
    tree = json.loads((state_directory / "webhooks.json").read_text())
    pending = tree["targets"][name]["pending"]
    return str(pending["id"]) if pending else None


async def test_delivery_owed_at_sigkill_is_sent_after_restart_with_the_same_id(
    db_dsn: str, tmp_path: Path
) -> None:
    hooks = [{"name": "ci", "secret": SECRET, "timeout": "2s", "retry_schedule": ["0.2s"]}]
    async with Receiver() as ci, relay_process(tmp_path / "r.yaml", tmp_path / "log") as relay:
        write_config(tmp_path / "r.yaml", db_dsn, tmp_path, [{**hooks[0], "url": ci.url}])
        await relay.start()
        await ci.wait_for(1)  # the state at start: stable
        ci.answer(*[Answer(500)] * 1000)
        await execute(db_dsn, START)
        await ci.wait_for(2)
        owed = ci.requests[1]
        assert owed.state == "processing"
        # Write-ahead: the id was on disk before the receiver first saw it.
        assert saved_pending_id(tmp_path, "ci") == owed.id
        assert await relay.stop(signal.SIGKILL) == -signal.SIGKILL
        ci.script.clear()  # the receiver recovers: 200 from now on
        seen = len(ci.requests)
        await relay.start()
        await ci.wait_for(seen + 1)
        again = ci.requests[seen]
        await execute(db_dsn, FINISH)  # the sentinel: nothing else came before it
        await ci.wait_for(seen + 2)
        assert await relay.stop() == 0
    assert again.id == owed.id
    assert again.body == owed.body
    assert verify_signature(SECRET, again.headers, again.body)
    assert [r.state for r in ci.requests[seen:]] == ["processing", "stable"]
    assert saved_pending_id(tmp_path, "ci") is None


async def test_state_changed_while_down_is_sent_on_start_unchanged_is_not(
    db_dsn: str, tmp_path: Path
) -> None:
    async with Receiver() as ci, relay_process(tmp_path / "r.yaml", tmp_path / "log") as relay:
        write_config(tmp_path / "r.yaml", db_dsn, tmp_path, [{"name": "ci", "url": ci.url}])
        await relay.start()
        await ci.wait_for(1)
        assert await relay.stop() == 0
        await execute(db_dsn, START)  # while the relay is down
        await relay.start()
        await ci.wait_for(2)
        assert await relay.stop() == 0
        before = len(relay.lines())
        await relay.start()  # nothing changed this time: nothing is sent...
        await eventually(
            lambda: any(
                line["event"] == "transition" and line["state"] == "processing"
                for line in relay.lines()[before:]
            )
        )
        # The sender starts once this relay is elected, which it is only after its first
        # read: a change before that would come with its previous period's length unknown.
        await eventually(
            lambda: any(line["event"] == "webhooks_started" for line in relay.lines()[before:])
        )
        await execute(db_dsn, FINISH)  # ...so the next request is this transition
        await ci.wait_for(3)
        assert await relay.stop() == 0
    assert ci.states == ["stable", "processing", "stable"]
    data = ci.requests[1].json["data"]
    assert data["previous_state"] == "stable"
    assert data["previous_duration_seconds"] is None, "unknown: the relay was down"
    later = ci.requests[2].json["data"]
    assert later["previous_state"] == "processing"
    assert later["previous_duration_seconds"] > 0


async def test_secrets_never_reach_the_logs(db_dsn: str, tmp_path: Path) -> None:
    """Tokens in headers, secrets, Slack URL paths and query strings are never logged, not
    even masked: the output has no mask at all, so no code path tried to log them."""
    token, slack_token, query_token = "X-Token-Value-1a2b3c", "SlackPathToken9z8y", "QueryTok42x"
    dead = free_port()
    async with (
        Receiver(Answer(500), Answer(401, body="denied")) as ci,
        Receiver(path=f"/services/T0/B0/{slack_token}") as slack,
        relay_process(tmp_path / "r.yaml", tmp_path / "log") as relay,
    ):
        hooks = [
            {"name": "ci", "url": ci.url, "secret": SECRET, "headers": {"X-Token": token}},
            {"name": "slack", "url": slack.url, "format": "slack"},
            {"name": "dead", "url": f"http://127.0.0.1:{dead}/hook?token={query_token}"},
        ]
        for entry in hooks:
            entry.update(timeout="1s", retry_schedule=["0.2s"])
        write_config(tmp_path / "r.yaml", db_dsn, tmp_path, hooks)
        await relay.start()
        await ci.wait_for(2)
        await slack.wait_for(1)
        await eventually(
            lambda: (
                {"webhook_failed", "webhook_retry", "webhook_delivered"}
                <= {line["event"] for line in relay.lines()}
                and any(line.get("webhook") == "dead" for line in relay.lines())
            )
        )
        assert await relay.stop() == 0
    output = (tmp_path / "log").read_text()
    for secret in (token, slack_token, query_token, SECRET, SECRET.removeprefix("whsec_")):
        assert secret not in output
    assert "***" not in output
    lines = relay.lines()
    failed = next(line for line in lines if line["event"] == "webhook_failed")
    assert failed["target"] == f"http://127.0.0.1:{ci.port}"
    assert failed["status"] == 401
    retry = next(line for line in lines if line.get("webhook") == "dead")
    assert retry["target"] == f"http://127.0.0.1:{dead}"
    assert "cannot connect" in retry["reason"]
