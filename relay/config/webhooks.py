"""The webhooks (``webhooks``): each kind, what it needs and refuses, and the templates'
fields (docs/webhooks.md)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from relay.config.fields import Duration, PositiveDuration, Section, StateName

# Webhook kinds (docs/webhooks.md). Push monitors keep a status, so they hear every state; the
# two that watch for silence are told the current status again every `repeat`.
WebhookFormat = Literal[
    "json", "slack", "teams", "discord", "template", "healthchecks", "uptime_kuma", "gatus"
]
STATUS_MONITORS = ("uptime_kuma", "gatus")
# The kinds whose receiver can check a Standard Webhooks signature (Slack's never does, but a
# secret there has always been accepted and sent; the newer kinds refuse one).
SIGNED_KINDS = ("json", "template", "slack")
# The fields a template may name, as {{name}} (relay/fanout/webhooks/template.py fills them).
TEMPLATE_FIELDS = (
    "event",
    "text",
    "state",
    "previous",
    "stable",
    "healthy",
    "running",
    "duration",
    "duration_text",
    "eta",
    "eta_text",
    "since",
    "seq",
    "signal",
    "activity",
    "label",
    "stalled",
    "overdue",
    "cleared",
    "url",
    "name",
)
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_KUMA_PATH = re.compile(r"^(/.*)?/api/push/[A-Za-z0-9_-]+$")
_KUMA_QUERY = frozenset({"status", "msg", "ping"})
_GATUS_PATH = re.compile(r"^(/.*)?/api/v1/endpoints/[^/?#]+/external$")
_HEALTHCHECKS_SUFFIX = re.compile(r"/(start|fail|log|[0-9]{1,3})/?$")
_DISCORD_PATH = re.compile(r"^/api(/v[0-9]+)?/webhooks/[0-9]+/[A-Za-z0-9_-]+$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[ -~]*)?$")


def template_placeholders(tree: Any, path: str = "template") -> list[tuple[str, str]]:
    """Every ``{{name}}`` in the string values of a parsed template, with where it is; a
    placeholder in a key raises (keys are written, never filled)."""
    found: list[tuple[str, str]] = []
    if isinstance(tree, str):
        found.extend((path, match.group(1)) for match in _PLACEHOLDER.finditer(tree))
    elif isinstance(tree, dict):
        for key, value in tree.items():
            if _PLACEHOLDER.search(str(key)):
                raise ValueError(f"{path}: placeholders go in values, not in keys ({key!r:.60})")
            found.extend(template_placeholders(value, f"{path}.{key}"))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.extend(template_placeholders(value, f"{path}[{index}]"))
    return found


def _parse_template(value: Any) -> Any:
    """A template as YAML wrote it (a mapping or list), or JSON text; checked, then kept parsed."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise ValueError(f"template is not valid JSON: {error}") from None
    if not isinstance(value, dict | list):
        raise ValueError("template must be a JSON object or array (a YAML mapping or list)")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:  # a YAML date, a NaN: not JSON
        raise ValueError(f"template holds a value JSON cannot carry: {error}") from None
    unknown = sorted({name for _where, name in template_placeholders(value)} - set(TEMPLATE_FIELDS))
    if unknown:
        names = ", ".join("{{" + name + "}}" for name in unknown)
        raise ValueError(
            f"unknown template field {names}; the fields: {', '.join(TEMPLATE_FIELDS)}"
        )
    return value


class WebhookConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str
    format: WebhookFormat = "json"
    secret: str | None = None
    on: tuple[StateName, ...] = ("stable", "processing")
    min_duration: Duration = 0.0
    timeout: PositiveDuration = 10.0
    headers: dict[str, str] = Field(default_factory=dict)
    retry_schedule: tuple[Duration, ...] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    # gatus: the external endpoint's token, sent as "Authorization: Bearer <token>".
    token: str | None = None
    # uptime_kuma and gatus: the current status again this often (null: transitions only).
    repeat: PositiveDuration | None = None
    # template: the body, with {{field}} placeholders in its string values.
    template: Annotated[Any, BeforeValidator(_parse_template)] = None
    content_type: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("format") in STATUS_MONITORS:
            data = {"on": ["stable", "processing", "unknown"], "repeat": 60.0, **data}
        return data

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f'expected an http:// or https:// URL, got "{value}"')
        return value

    @field_validator("secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("whsec_"):
            raise ValueError('expected a Standard Webhooks secret "whsec_<base64>"')
        try:
            key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError('the part after "whsec_" is not valid base64') from None
        if len(key) < 16:
            raise ValueError("the secret is too short: use at least 16 random bytes")
        return value

    @field_validator("on")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one state: stable, processing or unknown")
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _retry_steps(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or min(value) < 0.1:
            raise ValueError('list one or more delays of at least 0.1s, like ["5s", "30s", "2m"]')
        return value

    @field_validator("content_type")
    @classmethod
    def _media_type(cls, value: str | None) -> str | None:
        if value is not None and not _CONTENT_TYPE.match(value):
            raise ValueError(f'expected a media type like "application/json", got {value!r}')
        return value

    @model_validator(mode="after")
    def _fits_its_kind(self) -> WebhookConfig:
        """What each kind needs and refuses; messages never repeat the URL or the token."""
        kind = self.format
        if self.secret is not None and kind not in SIGNED_KINDS:
            raise ValueError(
                f"secret: {kind} cannot check a Standard Webhooks signature; remove it "
                "(the URL or token is what authenticates this kind)"
            )
        if self.token is not None and kind != "gatus":
            raise ValueError("token: only gatus takes a token (use headers for others)")
        if self.repeat is not None and kind not in STATUS_MONITORS:
            raise ValueError("repeat: only uptime_kuma and gatus repeat the current status")
        if (self.template is None) == (kind == "template"):
            raise ValueError(
                "template: format template needs a template"
                if kind == "template"
                else "template: only format template takes a template"
            )
        if self.content_type is not None and kind != "template":
            raise ValueError("content_type: only format template takes a content_type")
        url = _split_url(self.url)
        if url is None:
            raise ValueError("url: not a valid URL")
        path, query = url
        if kind == "healthchecks":
            if _HEALTHCHECKS_SUFFIX.search(path):
                raise ValueError(
                    "url: give the check's ping URL itself (https://hc-ping.com/<uuid>, or "
                    "<site>/ping/<uuid>); /start, /fail and /log are added by the relay"
                )
            if len(path.strip("/")) == 0:
                raise ValueError("url: expected a ping URL like https://hc-ping.com/<uuid>")
        elif kind == "uptime_kuma":
            if not _KUMA_PATH.match(path) or not set(query) <= _KUMA_QUERY:
                raise ValueError(
                    "url: expected Uptime Kuma's push URL, "
                    "https://<kuma>/api/push/<token> (its ?status=up&msg=OK&ping= is optional "
                    "and replaced)"
                )
        elif kind == "gatus":
            if not _GATUS_PATH.match(path) or query:
                raise ValueError(
                    "url: expected https://<gatus>/api/v1/endpoints/<key>/external, without "
                    "a query (<key> is <group>_<name> as Gatus writes it)"
                )
            if not self.token:
                raise ValueError(
                    "token: gatus needs the external endpoint's token (its `token:` in "
                    "Gatus's config)"
                )
        elif kind == "discord" and not _DISCORD_PATH.match(path):
            raise ValueError(
                "url: expected a Discord webhook URL, https://discord.com/api/webhooks/<id>/<token>"
            )
        return self

    @property
    def signing_key(self) -> bytes | None:
        if self.secret is None:
            return None
        return base64.b64decode(self.secret.removeprefix("whsec_"))


def _split_url(url: str) -> tuple[str, dict[str, str]] | None:
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))
