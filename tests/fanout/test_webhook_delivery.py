"""How an HTTP answer is read: success, retry (with Retry-After), failure, disable."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.fanout.webhooks.delivery import (
    MAX_RETRY_AFTER,
    Outcome,
    classify,
    origin,
    parse_retry_after,
)

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


# 1994-11-06 08:49:37 UTC, RFC 9110's example, in its three forms.
EXAMPLE = 784_111_777.0


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 form
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime form
    ],
)
def test_every_form_of_http_date_is_read(value: str) -> None:
    assert parse_retry_after(value, EXAMPLE - 30) == 30.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (" 7\t", 7.0),
        ("007", 7.0),
        ("0", 0.0),
        ("86401", MAX_RETRY_AFTER),
        ("9" * 5000, MAX_RETRY_AFTER),
    ],
)
def test_delay_seconds_are_ascii_digits_bounded_by_a_day(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "²",  # str.isdigit() says yes
        "³⁰",
        "٣",  # float() reads it as 3
        "\uff11\uff12",  # fullwidth digits
        "\u3000 5",
        "5\u00a0",
        "",
        "1e3",
        "1.5",
        "+5",
        "0x10",
        "5, 7",
        "Sun, 06 Nov 99999999999999999999 08:49:37 GMT",  # a year past a C long
        "Sun, 06 Nov 1994 99999999999:49:37 GMT",  # an hour past a C int
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 +0000",  # an email date, not an HTTP-date
        "sun, 06 nov 1994 08:49:37 gmt",  # the names are case-sensitive
        "06 Nov 1994 08:49:37 GMT",
    ],
)
def test_anything_else_is_no_retry_after(value: str) -> None:
    assert parse_retry_after(value, NOW) is None
    result = classify(429, value, NOW)
    assert result.outcome is Outcome.RETRY and result.retry_after is None


@settings(max_examples=500, deadline=None)
@given(
    value=st.one_of(
        st.text(max_size=40),
        st.text(alphabet="0123456789 ,:-GMTSunNovFeb²٣\t", max_size=40),
        st.from_regex(r"[0-9]{1,30}", fullmatch=True),
    )
)
def test_any_header_text_is_a_bounded_delay_or_none_never_an_error(value: str) -> None:
    seconds = parse_retry_after(value, NOW)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER
    stripped = value.strip(" \t")
    if stripped and all(c in "0123456789" for c in stripped):
        assert seconds == min(float(int(stripped)), MAX_RETRY_AFTER)


def test_log_lines_show_only_scheme_host_and_port() -> None:
    url = "https://user:pw@hooks.slack.com/services/T0/B0/s3cr3t?token=abc"
    assert origin(url) == "https://hooks.slack.com"
    assert origin("http://127.0.0.1:8081/hook") == "http://127.0.0.1:8081"
