"""How an HTTP answer is read: success, retry (with Retry-After), failure, disable."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from relay.fanout.webhooks.delivery import Outcome, classify, origin, parse_retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (204, Outcome.SUCCESS),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (429, Outcome.RETRY),
        (408, Outcome.RETRY),
        (410, Outcome.DISABLED),
        (301, Outcome.FAILED),
        (307, Outcome.FAILED),
        (400, Outcome.FAILED),
        (401, Outcome.FAILED),
        (404, Outcome.FAILED),
    ],
)
def test_status_codes(status: int, outcome: Outcome) -> None:
    assert classify(status, None, NOW).outcome is outcome


def test_retry_after_is_read_for_429_and_503_only() -> None:
    assert classify(429, "7", NOW).retry_after == 7.0
    assert classify(503, "7", NOW).retry_after == 7.0
    assert classify(500, "7", NOW).retry_after is None


def test_retry_after_as_seconds_or_http_date() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after(formatdate(NOW + 90, usegmt=True), NOW) == 90.0
    assert parse_retry_after(formatdate(NOW - 90, usegmt=True), NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-5", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_log_lines_show_only_scheme_host_and_port() -> None:
    url = "https://user:pw@hooks.slack.com/services/T0/B0/s3cr3t?token=abc"
    assert origin(url) == "https://hooks.slack.com"
    assert origin("http://127.0.0.1:8081/hook") == "http://127.0.0.1:8081"
