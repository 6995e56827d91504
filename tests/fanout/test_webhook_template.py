"""The template kind: a body from the config with {{field}} placeholders, filled structurally;
end to end over real HTTP with real commits, a 5xx retried, injection attempts that stay inside
their strings, and check-time errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.config import WebhookConfig, load_config
from relay.errors import ConfigError
from relay.fanout.webhooks.delivery import post
from relay.fanout.webhooks.kinds import render
from relay.fanout.webhooks.payloads import SignalEvent, Transition
from relay.state.stability import State
from tests.cli.test_webhook_cli import cli
from tests.support import execute, relay_config, running_relay
from tests.webhook_receiver import SECRET, Answer, Receiver, hook, verify_signature

START = "INSERT INTO public.import_job (slug, state) VALUES ('x', 'approved')"
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'x'"
TEMPLATE = {
    "summary": "{{text}}",
    "state": "{{state}}",
    "stable": "{{stable}}",
    "running": "{{running}}",
    "took_s": "{{duration}}",
    "line": "[{{state}}] {{running}} via {{name}}",
    "fixed": [1, True, None, "no placeholder"],
}


async def test_the_template_is_filled_for_each_state_and_retried(
    db_dsn: str, tmp_path: Path
) -> None:
    async with Receiver(Answer(503), path="/events") as receiver:
        entry = hook(
            "pager",
            receiver.url,
            format="template",
            template=TEMPLATE,
            secret=SECRET,
            content_type="application/vnd.pager+json",
        )
        config = relay_config(db_dsn, webhooks=[entry], state_directory=str(tmp_path))
        async with running_relay(config):
            await receiver.wait_for(2)  # the state at start, after one 503
            await execute(db_dsn, START)
            await receiver.wait_for(3)
            await execute(db_dsn, FINISH)
            await receiver.wait_for(4)

    first, retried, busy, done = receiver.requests
    assert first.id == retried.id
    assert busy.json == {
        "summary": busy.json["summary"],
        "state": "processing",
        "stable": False,
        "running": ["Importing data"],
        "took_s": busy.json["took_s"],
        "line": "[processing] Importing data via pager",
        "fixed": [1, True, None, "no placeholder"],
    }
    assert busy.json["summary"].startswith("Processing data: Importing data")
    assert done.json["state"] == "stable" and done.json["stable"] is True
    assert done.json["running"] == []
    assert isinstance(done.json["took_s"], float)
    assert done.json["summary"].startswith("Data is stable (processing took ")
    for request in receiver.requests:
        assert request.headers["Content-Type"] == "application/vnd.pager+json"
        assert verify_signature(SECRET, request.headers, request.body)


HOSTILE = [
    'quote " and ", "state": "owned',
    'back\\slash \\" and \\u0000',
    "new\nline\r\n and \t tab",
    "braces {{state}} {{{text}}} }}{{",
    "</script><!-- & 'single' \u2028 \u0000",
]


@pytest.mark.parametrize("label", HOSTILE)
async def test_a_label_cannot_leave_its_string(label: str) -> None:
    async with Receiver(path="/events") as receiver:
        entry = WebhookConfig.model_validate(
            {"name": "pager", "url": receiver.url, "format": "template", "template": TEMPLATE}
        )
        transition = Transition(State.PROCESSING, State.STABLE, 1.0, 5.0, 7, running=(label,))
        event = SignalEvent("stalled", "importing", label, 1.0, None, 1801.0, 8)
        async with aiohttp.ClientSession() as session:
            for item in (transition, event):
                request = render(entry, item, None)
                result = await post(session, entry, request, "msg_test")
                assert result.status == 200
        busy, stalled = (request.json for request in receiver.requests)

    assert set(busy) == set(TEMPLATE), "no key added, none lost"
    assert busy["state"] == "processing", "the label did not replace the state"
    assert busy["running"] == [label]
    assert busy["line"] == f"[processing] {label} via pager", "the label is text, not template"
    assert busy["fixed"] == [1, True, None, "no placeholder"]
    assert stalled["summary"] == f"{label} has made no progress for 30 min"
    assert stalled["state"] is None


BAD = [
    ({"a": "{{nope}}"}, "webhooks[0].template: unknown template field {{nope}}"),
    ('{"a": "{{state}}",}', "webhooks[0].template: template is not valid JSON"),
    ('"just a string"', "webhooks[0].template: template must be a JSON object or array"),
    ({"{{state}}": 1}, "placeholders go in values, not in keys"),
]


@pytest.mark.parametrize(("template", "message"), BAD)
def test_a_bad_template_is_a_config_error_naming_the_key(
    tmp_path: Path, template: Any, message: str
) -> None:
    path = tmp_path / "relay.yaml"
    entry = {"name": "p", "url": "https://p.example/e", "format": "template", "template": template}
    path.write_text(json.dumps({"webhooks": [entry]}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_format_and_template_go_together(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(
        json.dumps({"webhooks": [{"name": "p", "url": "https://p.e/x", "format": "template"}]})
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert any("format template needs a template" in p for p in caught.value.problems)


async def test_check_reports_a_bad_template_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(
        "webhooks:\n"
        "  - name: pager\n"
        "    url: https://pager.example/events\n"
        "    format: template\n"
        '    template: {"summary": "{{text}}", "who": "{{owner}}"}\n'
    )
    code, _out, err = await cli("check", "--config", str(path))
    assert code == 2
    assert "webhooks[0].template: unknown template field {{owner}}" in err
    assert "Traceback" not in err
