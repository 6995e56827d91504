"""One delivery attempt: POST the body, classify the answer.

2xx success; 5xx, 408, timeouts and connection errors are retried; 429 and 503 carry
``Retry-After`` (seconds or an HTTP date); 410 disables the target; 3xx is a failure
(redirects are never followed: a moved endpoint must be fixed in the config); other
4xx are permanent failures.

Nothing a receiver answers can end a delivery early: a ``Retry-After`` that is not exactly
RFC 9110's grammar is ignored (the target's own retry schedule applies).

Discord answers 429 with ``Retry-After`` (whole seconds) and a JSON body whose ``retry_after``
is the same wait in fractional seconds; the longer of the two is waited (each is Discord's
word, and waiting the longer breaks neither). The sender bounds it like any Retry-After.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import aiohttp
from yarl import URL

from relay import __version__
from relay.config import WebhookConfig
from relay.fanout.webhooks.kinds import Request, render_test
from relay.fanout.webhooks.signing import new_message_id, signature_headers

USER_AGENT = f"stability-relay/{__version__}"
# Bytes of a response body kept for log lines and the CLI.
BODY_PREVIEW = 512


class Outcome(StrEnum):
    SUCCESS = "success"
    RETRY = "retry"
    FAILED = "failed"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    reason: str
    status: int | None = None
    retry_after: float | None = None
    body: str = ""


def classify(status: int, retry_after_header: str | None, now: float) -> Result:
    """The outcome of an HTTP answer (no body yet)."""
    reason = f"HTTP {status}"
    if 200 <= status < 300:
        return Result(Outcome.SUCCESS, reason, status)
    if status == 410:
        return Result(Outcome.DISABLED, f"{reason} Gone: target disabled until restart", status)
    if status in (429, 503):
        after = parse_retry_after(retry_after_header, now)
        return Result(Outcome.RETRY, reason, status, retry_after=after)
    if status >= 500 or status == 408:
        return Result(Outcome.RETRY, reason, status)
    if 300 <= status < 400:
        return Result(Outcome.FAILED, f"{reason}: redirects are not followed", status)
    return Result(Outcome.FAILED, reason, status)


# RFC 9110 §10.2.3: Retry-After = HTTP-date / delay-seconds, delay-seconds = 1*DIGIT, and
# DIGIT is ASCII 0-9 only (str.isdigit() also takes "²", int() and float() take "٣").
# A delay is read up to this (a day); the worker caps it far lower (retry.RETRY_AFTER_CAP).
MAX_RETRY_AFTER = 86_400.0
_DAYS = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_LONG_DAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "|".join(_MONTHS)
_TIME = "([0-9]{2}):([0-9]{2}):([0-9]{2})"
_DELAY_SECONDS = re.compile("[0-9]+")
# RFC 9110 §5.6.7: the IMF-fixdate senders use, and the two obsolete forms recipients read.
_IMF_FIXDATE = re.compile(rf"(?:{_DAYS}), ([0-9]{{2}}) ({_MONTH}) ([0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(rf"(?:{_LONG_DAYS}), ([0-9]{{2}})-({_MONTH})-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME_DATE = re.compile(rf"(?:{_DAYS}) ({_MONTH}) ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``, in ``[0, MAX_RETRY_AFTER]``; ``None`` for a
    missing value or anything that is not exactly delay-seconds or an HTTP-date (never raises:
    the value is the receiver's)."""
    if value is None:
        return None
    value = value.strip(" \t")  # optional whitespace (OWS) is spaces and tabs, nothing else
    if _DELAY_SECONDS.fullmatch(value):
        digits = value.lstrip("0") or "0"
        # Past the bound, however many digits (int() refuses 4,300 and more): not converted.
        return MAX_RETRY_AFTER if len(digits) > 9 else min(float(digits), MAX_RETRY_AFTER)
    when = http_date(value)
    if when is None:
        return None
    return min(max(0.0, when - now), MAX_RETRY_AFTER)


def http_date(value: str) -> float | None:
    """An RFC 9110 HTTP-date as unix seconds; ``None`` if it is not one, or no such day."""
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
    elif match := _ASCTIME_DATE.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
    elif match := _RFC850_DATE.fullmatch(value):
        day, month, short_year, hour, minute, second = match.groups()
        # A two-digit year more than 50 years ahead is the latest such year in the past.
        this_year = datetime.now(UTC).year
        full = this_year - this_year % 100 + int(short_year)
        year = str(full - 100 if full > this_year + 50 else full)
    else:
        return None
    try:
        when = datetime(
            int(year),
            _MONTHS.index(month) + 1,
            int(day),
            int(hour),
            int(minute),
            # A leap second (60) is the last second of its minute here.
            min(int(second), 59),
            tzinfo=UTC,
        )
    except ValueError:  # 31 Feb, hour 25, year 0000: not a day that exists
        return None
    return when.timestamp()


async def post(
    session: aiohttp.ClientSession,
    hook: WebhookConfig,
    request: Request,
    message_id: str,
) -> Result:
    """Send ``request`` once. Never raises for network trouble: that is a :class:`Result` too."""
    now = time.time()
    body = request.body if request.body is not None else b""
    headers = {
        "User-Agent": USER_AGENT,
        **({"Content-Type": request.content_type} if request.content_type else {}),
        **hook.headers,
        # Last, so a configured header can never replace them.
        **request.headers,
        **signature_headers(hook.signing_key, message_id, int(now), body),
    }
    try:
        async with session.request(
            request.method,
            request.url,
            data=request.body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=hook.timeout),
        ) as response:
            result = classify(response.status, response.headers.get("Retry-After"), time.time())
            preview = await response.content.read(BODY_PREVIEW)
    except TimeoutError:
        return Result(Outcome.RETRY, f"no answer within {hook.timeout:g}s")
    except aiohttp.ClientConnectorError as error:
        return Result(Outcome.RETRY, f"cannot connect: {error.os_error.strerror or 'error'}")
    except (aiohttp.ClientError, OSError) as error:
        return Result(Outcome.RETRY, _describe(error))
    text = preview.decode("utf-8", "replace")
    retry_after = result.retry_after
    if result.status == 429 and hook.format == "discord":
        waits = [w for w in (retry_after, body_retry_after(preview)) if w is not None]
        retry_after = max(waits) if waits else None
    return Result(result.outcome, result.reason, result.status, retry_after, text)


def body_retry_after(body: bytes) -> float | None:
    """Discord's JSON ``retry_after`` (seconds, maybe fractional), in ``[0, MAX_RETRY_AFTER]``;
    ``None`` for anything else (never raises: the body is the receiver's)."""
    try:
        value = json.loads(body).get("retry_after")
    except (ValueError, AttributeError):
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        return None
    return min(float(value), MAX_RETRY_AFTER)


def origin(url: str) -> str:
    """What log lines show of a target URL: scheme, host and port; never path or query,
    which carry tokens in Slack-style URLs."""
    try:
        return str(URL(url).origin())
    except ValueError:
        return "<invalid URL>"


def _describe(error: BaseException) -> str:
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(error, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return f"bad response ({type(error).__name__})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__


async def send_test(hook: WebhookConfig, public_url: str | None) -> Result:
    """Send one clearly marked test (``system.stability.test``, chat text "Test: ...", a
    Healthchecks log entry; docs/webhooks.md says what each kind gets)."""
    request = render_test(hook, public_url, time.time())
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        return await post(session, hook, request, new_message_id())
