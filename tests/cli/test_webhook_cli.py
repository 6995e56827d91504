"""``stability-relay webhook test NAME --config FILE``: a marked test event, the answer printed."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tests.cli.test_cli import REPO, free_port
from tests.webhook_receiver import SECRET, Answer, Receiver, verify_signature


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write(tmp_path: Path, hooks: list[dict[str, Any]], **extra: Any) -> str:
    path = tmp_path / "relay.yaml"
    path.write_text(json.dumps({"webhooks": hooks, **extra}))
    return str(path)


async def test_sends_a_signed_test_event_and_prints_the_answer(tmp_path: Path) -> None:
    async with Receiver(Answer(200, body="thanks")) as ci:
        config = write(tmp_path, [{"name": "ci", "url": ci.url, "secret": SECRET}])
        code, out, err = await cli("webhook", "test", "ci", "--config", config)
    assert code == 0, err
    assert "HTTP 200" in out
    assert "thanks" in out
    (request,) = ci.requests
    assert request.json["type"] == "system.stability.test"
    assert verify_signature(SECRET, request.headers, request.body)


async def test_slack_test_message_starts_with_test(tmp_path: Path) -> None:
    async with Receiver(path="/services/T0/B0/abc") as slack:
        hooks = [{"name": "team", "url": slack.url, "format": "slack"}]
        config = write(tmp_path, hooks, http={"public_url": "https://status.example"})
        code, out, _err = await cli("webhook", "test", "team", "--config", config)
    assert code == 0
    assert slack.requests[0].json["text"].startswith("Test:")
    assert "/services/T0/B0/abc" not in out, "the URL's secret path is not printed"


async def test_an_error_answer_exits_1_with_status_and_body(tmp_path: Path) -> None:
    async with Receiver(Answer(500, body="x" * 5000)) as ci:
        config = write(tmp_path, [{"name": "ci", "url": ci.url}])
        code, out, _err = await cli("webhook", "test", "ci", "--config", config)
    assert code == 1
    assert "HTTP 500" in out
    assert "[truncated]" in out
    assert len(out) < 1000


async def test_the_receivers_control_characters_never_reach_the_terminal(tmp_path: Path) -> None:
    hostile = "ok\x1b]0;pwned\x07\x1b[2J\u202egnp.exe\r\x9b31m"
    async with Receiver(Answer(200, body=hostile)) as ci:
        config = write(tmp_path, [{"name": "ci", "url": ci.url}])
        code, out, _err = await cli("webhook", "test", "ci", "--config", config)
    assert code == 0
    assert "ok" in out
    for raw in ("\x1b", "\x07", "\u202e", "\r", "\x9b"):
        assert raw not in out, repr(raw)
    assert "\\x1b]0;pwned" in out, "shown escaped, not dropped"


async def test_no_answer_exits_1(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    config = write(tmp_path, [{"name": "ci", "url": dead, "timeout": "2s"}])
    code, out, _err = await cli("webhook", "test", "ci", "--config", config)
    assert code == 1
    assert "no answer: cannot connect" in out


async def test_unknown_name_or_bad_config_exits_2(tmp_path: Path) -> None:
    config = write(tmp_path, [{"name": "ci", "url": "http://127.0.0.1:9/hook"}])
    code, _out, err = await cli("webhook", "test", "nope", "--config", config)
    assert code == 2
    assert 'no webhook named "nope" (configured: ci)' in err
    bad = write(tmp_path, [{"name": "ci", "url": "ftp://x"}])
    code, _out, err = await cli("webhook", "test", "ci", "--config", bad)
    assert code == 2
    assert "webhooks[0].url" in err
    assert "Traceback" not in err
