"""Webhook test helpers: a real HTTP receiver on loopback, and an independent signature check."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.support import eventually, serve_on_loopback

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef-test-key").decode()


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """The Standard Webhooks check as a receiver writes it, independent of relay.fanout.webhooks."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(candidate.removeprefix("v1,"), expected)
        for candidate in headers.get("webhook-signature", "").split()
        if candidate.startswith("v1,")
    )


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"
    hang: bool = False  # never answer (until the receiver closes)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival
    path: str

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def state(self) -> str:
        return str(self.json["data"]["state"])


class Receiver:
    """Records every POST; answers from a script of :class:`Answer` (then 200)."""

    def __init__(self, *answers: Answer, path: str = "/hook") -> None:
        self.script = list(answers)
        self.path = path
        self.requests: list[Received] = []
        self._release = asyncio.Event()
        self._serving = AsyncExitStack()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def answer(self, *answers: Answer) -> None:
        self.script.extend(answers)

    @property
    def states(self) -> list[str]:
        return [request.state for request in self.requests]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        try:
            await eventually(lambda: len(self.requests) >= count, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"{count} request(s) expected, got {self.requests}") from None
        return self.requests

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self.port = await self._serving.enter_async_context(
            serve_on_loopback(app, self.port, access_log=None, handler_cancellation=True)
        )
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._release.set()
        await self._serving.aclose()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received(dict(request.headers), body, time.monotonic(), request.path))
        answer = self.script.pop(0) if self.script else Answer()
        if answer.hang:
            await self._release.wait()
        return web.Response(status=answer.status, headers=answer.headers, text=answer.body)


def hook(name: str, url: str, **settings: Any) -> dict[str, Any]:
    """A webhook entry for a test config: quick timeouts and retries unless overridden."""
    return {"name": name, "url": url, "timeout": "2s", "retry_schedule": ["0.2s"], **settings}
