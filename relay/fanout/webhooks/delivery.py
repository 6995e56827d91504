"""One delivery attempt: POST the body, classify the answer.

2xx success; 5xx, 408, timeouts and connection errors are retried; 429 and 503 carry
``Retry-After`` (seconds or an HTTP date); 410 disables the target; 3xx is a failure
(redirects are never followed: a moved endpoint must be fixed in the config); other
4xx are permanent failures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

import aiohttp
from yarl import URL

from relay import __version__
from relay.config import WebhookConfig
from relay.fanout.webhooks.payloads import encode_test
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


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (delay-seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        return None
    return max(0.0, when.timestamp() - now)


async def post(
    session: aiohttp.ClientSession,
    hook: WebhookConfig,
    body: bytes,
    message_id: str,
) -> Result:
    """Send ``body`` once. Never raises for network trouble: that is a :class:`Result` too."""
    now = time.time()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **hook.headers,
        # Last, so a configured header can never replace them.
        **signature_headers(hook.signing_key, message_id, int(now), body),
    }
    try:
        async with session.post(
            hook.url,
            data=body,
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
    return Result(result.outcome, result.reason, result.status, result.retry_after, text)


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
    """POST one clearly marked test event (``system.stability.test``, Slack text "Test: ...")."""
    body = encode_test(hook.format, hook.name, public_url, time.time())
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        return await post(session, hook, body, new_message_id())
