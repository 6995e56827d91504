"""Stand-ins for the services the newer webhook kinds talk to, on loopback, each enforcing its
service's documented request shape (docs/webhooks.md cites the pages) and answering anything
else as that service does (or, where the service would shrug, with a 400 naming the mistake,
so a test cannot pass on a request the real service would misread).

- Healthchecks.io (self-hosted form ``<site>/ping/<uuid>[/start|/fail|/log|/<0-255>]``):
  HEAD, GET or POST; an unknown check is 404 "not found"; success is 200 "OK".
- Uptime Kuma push monitor: ``GET /api/push/<token>?status=up|down&msg=...&ping=``; an
  unknown token is 404 ``{"ok": false, "msg": ...}``; success is ``{"ok": true}``.
- Gatus external endpoint: ``POST /api/v1/endpoints/<key>/external?success=true|false
  [&error=...][&duration=<Go duration>]`` with ``Authorization: Bearer <token>``: 401 for
  a wrong token, 404 for an unknown key, 400 for a success that is not true/false or a
  duration without a unit.
- Microsoft Teams Workflows webhook (``.../workflows/<id>/triggers/manual/paths/invoke?
  api-version=...&sp=...&sv=...&sig=...``): a JSON message whose attachments are Adaptive
  Cards; 202 Accepted.
- Discord execute webhook (``POST /api/webhooks/<id>/<token>``): JSON with ``content`` and/or
  ``embeds`` within Discord's limits; 204; 404 ``Unknown Webhook``; 429 with a JSON
  ``retry_after`` and ``Retry-After`` when scripted.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.support import eventually, serve_on_loopback


@dataclass
class Hit:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Scripted:
    """An answer given instead of the service's own (a 5xx, a 429), once, in order."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class Fake:
    """The common part: records accepted requests (``hits``) and refused ones (``refused``)."""

    def __init__(self, *script: Scripted) -> None:
        self.script = list(script)
        self.hits: list[Hit] = []
        self.refused: list[tuple[int, str]] = []
        self.scripted: list[Hit] = []
        self._serving = AsyncExitStack()
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Hit]:
        try:
            await eventually(lambda: len(self.hits) >= count, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{count} accepted request(s) expected, got {self.hits}; refused {self.refused}"
            ) from None
        return self.hits

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Fake:
        app = web.Application()
        self.routes(app)
        self.port = await self._serving.enter_async_context(serve_on_loopback(app, access_log=None))
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        await self._serving.aclose()

    async def _hit(self, request: web.Request) -> Hit:
        body = await request.read()
        return Hit(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            body,
            time.monotonic(),
        )

    def _refuse(self, status: int, reason: str, **kwargs: Any) -> web.Response:
        self.refused.append((status, reason))
        return web.Response(status=status, **kwargs)

    def _scripted(self, hit: Hit) -> web.Response | None:
        if not self.script:
            return None
        answer = self.script.pop(0)
        self.scripted.append(hit)
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HC_BODY_LIMIT = 100_000


class Healthchecks(Fake):
    def __init__(self, check: str, *script: Scripted) -> None:
        super().__init__(*script)
        self.check = check

    @property
    def url(self) -> str:
        return f"{self.base}/ping/{self.check}"

    def kinds(self) -> list[str]:
        return [_hc_kind(hit.path) for hit in self.hits]

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/ping/{rest:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        hit = await self._hit(request)
        if request.method not in ("HEAD", "GET", "POST"):
            return self._refuse(405, f"method {request.method}")
        match = re.fullmatch(r"/ping/([^/]+)(?:/(start|fail|log|[0-9]{1,3}))?", request.path)
        if match is None or not UUID.fullmatch(match.group(1)):
            return self._refuse(
                400, f"invalid url format {request.path}", text="invalid url format"
            )
        if match.group(1) != self.check:
            return self._refuse(404, "unknown check", text="not found")
        suffix = match.group(2)
        if suffix is not None and suffix.isdigit() and int(suffix) > 255:
            return self._refuse(400, "exit status past 255", text="invalid url format")
        if len(hit.body) > HC_BODY_LIMIT:  # the service keeps the first 100 kB; we never send more
            return self._refuse(400, "body past 100 kB")
        scripted = self._scripted(hit)
        if scripted is not None:
            return scripted
        self.hits.append(hit)
        return web.Response(text="OK")


def _hc_kind(path: str) -> str:
    last = path.rsplit("/", 1)[-1]
    return last if last in ("start", "fail", "log") or last.isdigit() else "success"


class UptimeKuma(Fake):
    def __init__(self, token: str, *script: Scripted) -> None:
        super().__init__(*script)
        self.token = token

    @property
    def url(self) -> str:
        # As Kuma's UI shows it, query and all: the relay replaces the query.
        return f"{self.base}/api/push/{self.token}?status=up&msg=OK&ping="

    def statuses(self) -> list[tuple[str, str]]:
        return [(hit.query["status"], hit.query["msg"]) for hit in self.hits]

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/push/{token}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        hit = await self._hit(request)
        if request.method != "GET":  # Kuma 1.x routes GET only; Express answers 404
            return self._refuse(404, f"method {request.method}", text="Cannot " + request.method)
        if request.match_info["token"] != self.token:
            body = {"ok": False, "msg": "Monitor not found or not active."}
            return self._refuse(404, "unknown token", json=body)
        query = hit.query
        problems = []
        if query.get("status") not in ("up", "down"):
            problems.append("status is not up or down")
        if not query.get("msg"):
            problems.append("no msg")
        ping = query.get("ping", "")
        if ping and not re.fullmatch(r"[0-9]+(\.[0-9]+)?", ping):
            problems.append("ping is not a number")
        if set(query) - {"status", "msg", "ping"}:
            problems.append(
                f"unexpected parameters {sorted(set(query) - {'status', 'msg', 'ping'})}"
            )
        if problems:
            return self._refuse(400, "; ".join(problems), json={"ok": False, "msg": problems})
        scripted = self._scripted(hit)
        if scripted is not None:
            return scripted
        self.hits.append(hit)
        return web.json_response({"ok": True})


GO_DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+")


class Gatus(Fake):
    def __init__(self, key: str, token: str, *script: Scripted) -> None:
        super().__init__(*script)
        self.key = key
        self.token = token

    @property
    def url(self) -> str:
        return f"{self.base}/api/v1/endpoints/{self.key}/external"

    def results(self) -> list[tuple[str, str | None]]:
        return [(hit.query["success"], hit.query.get("error")) for hit in self.hits]

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/v1/endpoints/{key}/external", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        hit = await self._hit(request)
        if request.method != "POST":
            return self._refuse(405, f"method {request.method}")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._refuse(401, "token", text="invalid token")
        if request.match_info["key"] != self.key:
            return self._refuse(404, "unknown key", text="not found")
        if hit.query.get("success") not in ("true", "false"):
            return self._refuse(400, "success is not true or false")
        duration = hit.query.get("duration")
        if duration is not None and not GO_DURATION.fullmatch(duration):
            return self._refuse(400, f"duration {duration!r} is not a Go duration")
        if set(hit.query) - {"success", "error", "duration"}:
            return self._refuse(400, "unexpected parameters")
        scripted = self._scripted(hit)
        if scripted is not None:
            return scripted
        self.hits.append(hit)
        return web.Response(status=200)


CARD_TYPE = "application/vnd.microsoft.card.adaptive"


class Teams(Fake):
    """A Workflows "when a Teams webhook request is received" trigger: its URL carries the
    signature (``sig``); the flow reads ``attachments`` and posts each Adaptive Card."""

    SIG = "s3cr3t-signature"

    @property
    def url(self) -> str:
        query = f"api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={self.SIG}"
        return f"{self.base}/workflows/0a1b2c/triggers/manual/paths/invoke?{query}"

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/workflows/{flow}/triggers/manual/paths/invoke", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        hit = await self._hit(request)
        if request.method != "POST":
            return self._refuse(405, f"method {request.method}")
        if hit.query.get("sig") != self.SIG or not hit.query.get("api-version"):
            return self._refuse(
                401, "signature", json={"error": {"code": "DirectApiAuthorizationRequired"}}
            )
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            return self._refuse(415, "content type")
        problem = card_message_problem(hit.body)
        if problem:
            return self._refuse(
                400, problem, json={"error": {"code": "InvalidTemplate", "message": problem}}
            )
        scripted = self._scripted(hit)
        if scripted is not None:
            return scripted
        self.hits.append(hit)
        return web.Response(status=202)


def card_message_problem(body: bytes) -> str | None:
    try:
        message = json.loads(body)
    except ValueError:
        return "not JSON"
    if not isinstance(message, dict) or message.get("type") != "message":
        return 'type is not "message"'
    attachments = message.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return "no attachments"
    for attachment in attachments:
        if attachment.get("contentType") != CARD_TYPE:
            return "an attachment is not an Adaptive Card"
        card = attachment.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            return 'content.type is not "AdaptiveCard"'
        if not isinstance(card.get("version"), str):
            return "the card has no version"
        elements = card.get("body")
        if not isinstance(elements, list) or not elements:
            return "the card has no body"
        for element in elements:
            if element.get("type") == "TextBlock" and not isinstance(element.get("text"), str):
                return "a TextBlock without text"
        for action in card.get("actions", []):
            if action.get("type") == "Action.OpenUrl" and not isinstance(action.get("url"), str):
                return "an Action.OpenUrl without url"
    return None


DISCORD_KEYS = {
    "content",
    "username",
    "avatar_url",
    "tts",
    "embeds",
    "allowed_mentions",
    "components",
    "flags",
    "thread_name",
    "applied_tags",
    "poll",
    "attachments",
}


class Discord(Fake):
    WEBHOOK = "/api/webhooks/123456789012345678/tok-EN_abc"

    @property
    def url(self) -> str:
        return f"{self.base}{self.WEBHOOK}"

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/webhooks/{id}/{token}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        hit = await self._hit(request)
        if request.method != "POST":
            return self._refuse(
                405,
                f"method {request.method}",
                json={"message": "405: Method Not Allowed", "code": 0},
            )
        if request.path != self.WEBHOOK:
            return self._refuse(
                404, "unknown webhook", json={"message": "Unknown Webhook", "code": 10015}
            )
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            return self._refuse(
                400, "content type", json={"message": "Cannot send an empty message", "code": 50006}
            )
        problem = discord_problem(hit.body)
        if problem:
            return self._refuse(400, problem, json={"message": "Invalid Form Body", "code": 50035})
        scripted = self._scripted(hit)
        if scripted is not None:
            return scripted
        self.hits.append(hit)
        return web.Response(status=204)


def discord_problem(body: bytes) -> str | None:
    try:
        message = json.loads(body)
    except ValueError:
        return "not JSON"
    if not isinstance(message, dict):
        return "not an object"
    if set(message) - DISCORD_KEYS:
        return f"unknown keys {sorted(set(message) - DISCORD_KEYS)}"
    content, embeds = message.get("content"), message.get("embeds")
    if not content and not embeds:
        return "empty message"
    if content is not None and (not isinstance(content, str) or len(content) > 2000):
        return "content past 2000 characters"
    if embeds is not None:
        if not isinstance(embeds, list) or len(embeds) > 10:
            return "embeds is not a list of at most 10"
        for embed in embeds:
            if len(embed.get("title", "")) > 256 or len(embed.get("description", "")) > 4096:
                return "an embed past its limits"
            color = embed.get("color", 0)
            if type(color) is not int or not 0 <= color <= 0xFFFFFF:
                return "an embed color that is not 0..0xFFFFFF"
            if "timestamp" in embed:
                try:
                    datetime.fromisoformat(embed["timestamp"])
                except ValueError:
                    return "an embed timestamp that is not ISO 8601"
    mentions = message.get("allowed_mentions")
    if mentions is not None and not isinstance(mentions.get("parse", []), list):
        return "allowed_mentions.parse is not a list"
    return None
