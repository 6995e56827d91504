"""``stability-relay wait``: block until the data system is stable (or processing), for CI.

Each round is one long poll of ``/api/system-status/wait`` (which starts with a fresh read, so
nothing committed before it was asked is missed). A relay restart, a proxy cut or a 5xx is
survived by asking again, after a short backoff, until the overall timeout. Exit codes: 0 the
condition was met, 1 timed out, 2 bad usage (or the relay refused the request: 400, 401, 403).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlencode

import aiohttp

from relay.state.eta import eta_text, human_duration

EXIT_MET, EXIT_TIMEOUT, EXIT_USAGE = 0, 1, 2
ROUND = 60.0  # at most this long per request: proxies cut idle requests
RETRY = (0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class WaitRequest:
    url: str
    until: str
    stable_for: float
    timeout: float
    activity: str | None = None
    token: str | None = None


async def wait(request: WaitRequest, out: TextIO = sys.stderr) -> int:
    deadline = time.monotonic() + request.timeout
    headers = {"Authorization": f"Bearer {request.token}"} if request.token else {}
    failures = 0
    held = 0.0
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or remaining < request.stable_for - held:
                print(f"timed out after {human_duration(request.timeout)}", file=out)
                return EXIT_TIMEOUT
            # Short rounds (proxies cut idle requests); how long the condition has held is
            # carried from one round to the next.
            span = min(remaining, ROUND)
            try:
                status, body = await _poll(http, request, span, held)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                failures += 1
                delay = RETRY[min(failures, len(RETRY)) - 1]
                print(f"relay unreachable ({type(error).__name__}); retrying", file=out)
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                continue
            failures = 0
            held = float(body.get("held_s") or 0.0) if status == 408 else 0.0
            if status == 200:
                print(_progress(body, met=True), file=out)
                return EXIT_MET
            if status in (400, 401, 403):
                print(f"refused ({status}): {body.get('error', body)}", file=out)
                return EXIT_USAGE
            print(_progress(body, met=False), file=out)
            if status == 429 or (status >= 500 and body.get("result") != "unknown"):
                # Too many waiters, or a proxy's error: come back later, not at once.
                pause = 5.0 if status == 429 else RETRY[min(failures + 1, len(RETRY)) - 1]
                await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            elif status != 408 and status != 503:
                await asyncio.sleep(1.0)


async def _poll(
    http: aiohttp.ClientSession, request: WaitRequest, span: float, held: float
) -> tuple[int, dict[str, Any]]:
    query = {
        "until": request.until,
        "stable_for": f"{request.stable_for:g}s",
        "held": f"{held:.3f}s",
        "timeout": f"{span:.3f}s",
    }
    if request.activity:
        query["activity"] = request.activity
    url = f"{request.url.rstrip('/')}/api/system-status/wait?{urlencode(query)}"
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=span + 15)) as response:
        body = await response.json(content_type=None)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        return response.status, body


def _progress(body: dict[str, Any], *, met: bool) -> str:
    state = body.get("state", "unknown")
    running = body.get("running") or []
    what = f": {', '.join(running)}" if running else ""
    waited = body.get("waited_s")
    after = f" after {human_duration(float(waited))}" if met and waited else ""
    if met:
        return f"met: {state}{what}{after}"
    if body.get("result") == "unknown" or state == "unknown":
        return "state unknown: the relay has no database connection; waiting"
    estimate = body.get("eta")
    left = ""
    if isinstance(estimate, dict) and "low_s" in estimate and "high_s" in estimate:
        left = f", {eta_text(estimate)} (from {estimate.get('source')})"
    return f"still {state}{what}{left}; waiting"
