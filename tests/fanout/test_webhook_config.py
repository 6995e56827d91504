"""Webhook configuration: every bad value reported with its key path; secrets known to the logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import load_config
from relay.errors import ConfigError

BAD = [
    ("    retry_schedule: []\n", "webhooks[0].retry_schedule: list one or more delays"),
    ("    retry_schedule: [0s]\n", "webhooks[0].retry_schedule: list one or more delays"),
    ("    retry_schedule: [soon]\n", "webhooks[0].retry_schedule[0]: expected a duration"),
    ("    min_duration: a while\n", 'webhooks[0].min_duration: expected a duration like "15s"'),
    ("    timeout: 0s\n", "webhooks[0].timeout: must be greater than 0s"),
    ("    format: msteams\n", "webhooks[0].format: input should be 'json', 'slack', 'teams'"),
    ("    on: []\n", "webhooks[0].on: list at least one state"),
    ("    secret: whsec_!!!\n", 'webhooks[0].secret: the part after "whsec_" is not valid base64'),
    ("    secret: whsec_c2hvcnQ=\n", "webhooks[0].secret: the secret is too short"),
    ("    headers: [X-Token]\n", "webhooks[0].headers: input should be a valid dictionary"),
    ("    retries: 3\n", "webhooks[0].retries: unknown key"),
    ("    name: has space\n", "webhooks[0].name: string should match pattern"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_webhook_settings_are_reported_with_their_key_path(
    tmp_path: Path, extra: str, message: str
) -> None:
    path = tmp_path / "relay.yaml"
    body = "webhooks:\n  - url: https://ci.example/hook\n" + extra
    if "name:" not in extra:
        body += "    name: ci\n"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_missing_url_and_secret_variable_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text("webhooks:\n  - name: ci\n    secret: ${CI_SECRET}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    problems = caught.value.problems
    assert "webhooks[0].secret: environment variable CI_SECRET is not set" in problems


def test_state_directory_falls_back_to_systemd_state_directory(tmp_path: Path) -> None:
    config = load_config(None, environ={"STATE_DIRECTORY": "/var/lib/relay:/var/lib/other"})
    assert config.state_directory == "/var/lib/relay"
    path = tmp_path / "relay.yaml"
    path.write_text("state_directory: /srv/relay\n")
    config = load_config(path, environ={"STATE_DIRECTORY": "/var/lib/relay"})
    assert config.state_directory == "/srv/relay", "the file wins over the environment"


def test_secrets_include_token_bearing_webhook_urls(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(
        "webhooks:\n"
        "  - {name: slack, format: slack, url: 'https://hooks.slack.com/services/T0/B0/xyz'}\n"
        "  - {name: ci, url: 'https://ci.example/hook?token=abcdef'}\n"
        "  - {name: plain, url: 'https://ci.example/hook', headers: {X-Token: tok-123}}\n"
    )
    secrets = load_config(path, environ={}).secrets()
    assert "/services/T0/B0/xyz" in secrets
    assert "https://hooks.slack.com/services/T0/B0/xyz" in secrets
    assert "/hook?token=abcdef" in secrets
    assert "tok-123" in secrets
    assert "/hook" not in secrets, "a short, plain path is not treated as a secret"


def test_the_commented_webhook_example_is_valid(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "config.example.yaml").read_text()
    block = text[text.index("\nwebhooks: []\n") :]
    entries = [line[1:] for line in block.splitlines()[2:] if line.startswith("#  ")]
    path = tmp_path / "relay.yaml"
    path.write_text("webhooks:\n" + "\n".join(entries) + "\n")
    environ = {
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/xyz",
        "CI_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "CI_TOKEN": "ci-token-123",
        "HEALTHCHECKS_PING_URL": "https://hc-ping.com/5a4b9c0e-1f2d-4e3a-9b8c-7d6e5f4a3b2c",
        "KUMA_PUSH_URL": "https://kuma.example/api/push/Xy12Ab34Cd?status=up&msg=OK&ping=",
        "GATUS_TOKEN": "gatus-token-123",
        "TEAMS_WORKFLOW_URL": "https://prod-01.westus.logic.azure.com/workflows/abc/triggers/"
        "manual/paths/invoke?api-version=2016-06-01&sig=xyz",
        "DISCORD_WEBHOOK_URL": "https://discord.com/api/webhooks/1234/abcDEF",
    }
    config = load_config(path, environ=environ)
    names = ["slack", "ci", "healthchecks", "kuma", "gatus", "teams", "discord", "pager"]
    assert [hook.name for hook in config.webhooks] == names
    assert [hook.format for hook in config.webhooks][2:] == [
        "healthchecks",
        "uptime_kuma",
        "gatus",
        "teams",
        "discord",
        "template",
    ]
    assert config.webhooks[0].min_duration == 30.0
    assert config.webhooks[1].retry_schedule == (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    assert config.webhooks[1].headers == {"X-Token": "ci-token-123"}
