"""Configuration: one YAML file, declared here, loaded and validated in one step.

Every problem is reported with its key path (``http.heartbeat: expected a duration
like "15s", got "fast"``); the result is a frozen object passed down to every
component. The config file and the variables it names are read here only; the process's
own settings are read where they apply (systemd's NOTIFY_SOCKET in ``relay/fanout/systemd.py``,
RELAY_SSE_TAKEOVER in ``relay/fanout/takeover.py``, RELAY_TOKEN by the CLI's ``wait``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.config.activities import Activity, EnrichRead, QualifiedName, enrich_function
from relay.config.profiles import CUSTOM, DEFAULT_PROFILE, load_profile
from relay.durations import parse_duration as parse_duration  # re-exported
from relay.errors import ConfigError

# The spellings sizes accept (units are case-sensitive: KB and MB are 1000-based, KiB and MiB
# 1024-based); pydantic's ByteSize does the arithmetic. It alone would also take "64k" (64000),
# "8bit" (1), "0.5B" (0), "64mb" and true (1), none of which a buffer size should mean.
_SIZE = re.compile(r"^\s*\d+\s*(?:B|KiB|MiB|KB|MB)?\s*$", re.ASCII)
_SIZE_ADAPTER: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# An item of a YAML flow collection holding `${VAR}` (`[${TOKEN}]`, `{X-Token: ${T}}`,
# `[tok-${T}]`) is not valid YAML ("{" is a flow indicator). Only a document that does not
# parse as written is retried with such items quoted, so a valid one is never rewritten.
_FLOW_ENV_ITEM = re.compile(
    r"(?:(?<=[\[{])|(?<=, )|(?<=: ))"
    r"(\s*)([^\s,\[\]{}'\"#]*\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\n]*)?\}[^\s,\[\]{}'\"#]*)(\s*)"
    r"(?=[\]},])"
)


def parse_size(value: Any) -> int:
    """``"64KiB"``, ``"1MB"`` or a number of bytes, to bytes (by :class:`pydantic.ByteSize`)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _SIZE.match(value):
        return int(_SIZE_ADAPTER.validate_python(value))
    raise ValueError(f'expected a size like "64KiB", got {value!r}')


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0s")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
Size = Annotated[int, BeforeValidator(parse_size)]
StateName = Literal["stable", "processing", "unknown"]


def parse_network(value: Any) -> Any:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(
            f'expected an IP address or CIDR like "10.0.0.0/8", got "{value}"'
        ) from None


Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(parse_network)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ListenAddress(_Section):
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


def parse_listen(value: Any) -> Any:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) to a :class:`ListenAddress`."""
    if isinstance(value, ListenAddress | dict):
        return value
    text = str(value)
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        raise ValueError(f'expected HOST:PORT like "127.0.0.1:8080", got "{text}"')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    return {"host": host, "port": port}


Listen = Annotated[ListenAddress, BeforeValidator(parse_listen)]


class DatabaseConfig(_Section):
    dsn: str = ""
    channel: str = Field(default="system_stability", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    application_name: str = "stability-relay"
    connect_timeout: PositiveDuration = 5.0
    heartbeat_interval: PositiveDuration = 5.0
    heartbeat_timeout: PositiveDuration = 5.0
    reconnect_initial: PositiveDuration = 0.5
    reconnect_max: PositiveDuration = 30.0
    reconnect_reset_after: Duration = 60.0
    keepalives_idle: Duration = 10.0
    keepalives_interval: Duration = 5.0
    keepalives_count: int = Field(default=3, ge=1)
    tcp_user_timeout: Duration = 15.0

    @field_validator("dsn")
    @classmethod
    def _parsable(cls, value: str) -> str:
        """Refused here, not retried forever at run time (the message never repeats it)."""
        if value:
            from psycopg.conninfo import conninfo_to_dict

            try:
                conninfo_to_dict(value)
            except Exception:
                raise ValueError(
                    "cannot be parsed: a libpq connection string (host=... dbname=...) or a "
                    "postgresql:// URL"
                ) from None
        return value


class StabilityConfig(_Section):
    # Notifications are hints; this re-read of the truth catches anything missed.
    reconcile_interval: PositiveDuration = 5.0
    # Reads answering hints are at least this far apart; hints in between coalesce. Also the
    # poll interval during a hold.
    min_read_interval: PositiveDuration = 0.05
    # When hints come faster than reads, ask writers to stop sending them and poll instead
    # (sql/hold.sql). Holds taken by other relays are followed either way.
    hold_when_busy: bool = True
    # A hold ends once the state has not changed for this long.
    hold_release_after: PositiveDuration = 2.0


class HttpConfig(_Section):
    listen: Listen = ListenAddress(host="127.0.0.1", port=8080)
    heartbeat: PositiveDuration = 15.0
    retry: Duration = 3.0
    max_clients: int = Field(default=20_000, ge=1)
    client_buffer: Size = 64 * 1024
    shutdown_timeout: Duration = 5.0
    public_url: str | None = None
    # Per client address (behind a proxy: from X-Forwarded-For of a trusted proxy); off if null.
    max_clients_per_address: int | None = Field(default=None, ge=1)
    trusted_proxies: tuple[Network, ...] = ()
    max_header_size: Size = 8190
    # A connection that has not completed a request (or sits idle between requests) for this
    # long is closed: idle and slow sockets do not hold file descriptors for an hour.
    idle_timeout: PositiveDuration = 15.0
    # File descriptors kept free below the open-file limit for the database connections,
    # webhooks, static files and health checks: past limit - fd_reserve, new connections
    # serve only /healthz, /readyz and /metrics (docs/sockets.md).
    fd_reserve: int = Field(default=64, ge=16, le=65_536)


class DetailsConfig(_Section):
    # Requests within this window and one state share one answer (and one round of queries).
    cache: Duration = 1.0
    statement_timeout: PositiveDuration = 5.0
    pool_size: int = Field(default=2, ge=1, le=20)
    # Rows listed per activity (each also reports its total): the answer's size is bounded.
    max_items: int = Field(default=100, ge=1, le=10_000)


class WaitConfig(_Section):
    # GET /api/system-status/wait (and the CLI's `wait`): long polls at once; more get 429.
    max_waiters: int = Field(default=1000, ge=1, le=100_000)
    # ...of which one client address may hold this many (behind a proxy listed in
    # http.trusted_proxies: per X-Forwarded-For client); more get 429. Off if null.
    max_waiters_per_address: int | None = Field(default=100, ge=1)
    max_timeout: PositiveDuration = 3600.0
    # While the condition holds, it is re-read fresh at least this often.
    recheck: PositiveDuration = 5.0
    # Concurrent fresh reads wait in line behind one read; more than this get 503.
    max_fresh_waiting: int = Field(default=10_000, ge=1)


class HistoryConfig(_Section):
    # Busy periods older than this are deleted as new ones are written (README "History").
    retention: PositiveDuration = 90 * 86400.0


class SignalsConfig(_Section):
    """Stalled, overdue, depth and lag (relay/state/signals.py; README "Signals")."""

    # While any activity is active, its signals are read this often (one statement for all
    # of them, shared by every scrape and details request); an overdue bound is noticed at
    # its time, without a read.
    interval: PositiveDuration = 15.0
    # The statement's bound: past it the read fails and the gauges say NaN until the next.
    read_timeout: PositiveDuration = 5.0
    # Depth and stalled rows are counted exactly up to this, then read as depth_cap + 1.
    depth_cap: int = Field(default=10_000, ge=1, le=1_000_000)
    # An activity without overdue_after is overdue past overdue_factor x the 90th percentile
    # of its busy periods in the history (the last 7 days), once there are overdue_min_periods
    # of them, and never sooner than overdue_min_bound after it began.
    overdue_factor: float = Field(default=3.0, ge=1.0, le=1000.0)
    overdue_min_periods: int = Field(default=5, ge=1, le=10_000)
    overdue_min_bound: PositiveDuration = 300.0

    @model_validator(mode="after")
    def _read_within_interval(self) -> SignalsConfig:
        if self.read_timeout >= self.interval:
            raise ValueError(
                f"read_timeout ({self.read_timeout:g}s) must be shorter than interval "
                f"({self.interval:g}s): one read at a time, each within its interval"
            )
        return self


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


def _non_empty_secret(value: str) -> str:
    if len(value) < 16:
        raise ValueError("too short (or its environment variable is empty): use 16+ characters")
    return value


Secret = Annotated[str, AfterValidator(_non_empty_secret)]
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d+)?$|^https?://\[[0-9A-Fa-f:]+\](:\d+)?$")


def _hmac_key(value: str) -> str:
    if len(value.encode()) < 32:
        raise ValueError("too short: an HMAC key needs at least 32 bytes (RFC 7518 3.2)")
    return value


class JwtConfig(_Section):
    secret: Annotated[str, AfterValidator(_hmac_key)] | None = None
    public_key: str | None = None
    algorithms: tuple[str, ...] = ()
    cookie: str | None = None
    audience: str | None = None
    issuer: str | None = None
    roles: tuple[str, ...] = ()
    role_claim: str = "role"
    leeway: Duration = 30.0

    @model_validator(mode="after")
    def _one_key(self) -> JwtConfig:
        if (self.secret is None) == (self.public_key is None):
            raise ValueError("set exactly one of secret (HS256/384/512) or public_key (RS*/ES*)")
        allowed = HMAC_ALGORITHMS if self.secret is not None else KEY_ALGORITHMS
        wrong = [a for a in self.algorithms if a not in allowed]
        if wrong:
            raise ValueError(f"algorithms {wrong} do not fit the key; use some of {allowed}")
        return self

    @property
    def allowed_algorithms(self) -> list[str]:
        default = HMAC_ALGORITHMS if self.secret is not None else KEY_ALGORITHMS
        return list(self.algorithms or default)


HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
KEY_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


class AuthConfig(_Section):
    bearer_tokens: tuple[Secret, ...] = ()
    jwt: JwtConfig | None = None
    metrics_token: Secret | None = None
    # The badges (/api/system-status/badge and badge.svg) without a credential, for READMEs
    # and wikis, while every other route stays private. They say what the snapshot's state
    # says, and no more (no labels, no details).
    public_badge: bool = False

    @model_validator(mode="after")
    def _something_to_check(self) -> AuthConfig:
        if not self.bearer_tokens and self.jwt is None:
            raise ValueError("configure bearer_tokens or jwt (or remove the auth section)")
        return self


class CorsConfig(_Section):
    allow_origins: tuple[str, ...] = ()

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f'expected origins like "https://app.example" (no path, no "*"), got "{origin}"'
                )
        return value


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


class WebhookConfig(_Section):
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


# -- feeds: NOTIFY channels relayed on SSE routes of their own (relay/fanout/feeds.py) -----

EVENT_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
# Routes the relay serves itself: a feed may not take one over.
RESERVED = ("/api/system-status", "/metrics", "/healthz", "/readyz", "/static", "/")


def _feed_path(value: Any) -> Any:
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9_./-]{1,200}", value):
        raise ValueError(f'expected a path like "/api/sse/worker_status", got {value!r}')
    if any(value == r or (r != "/" and value.startswith(r + "/")) for r in RESERVED):
        raise ValueError(f"{value} is one of the relay's own routes")
    return value


class Coalesce(_Section):
    """A trailing debounce: payloads with the same value of ``key`` (per channel; without a
    key, one per channel) wait until none has arrived for ``window``; each arrival restarts
    its key's timer and replaces the payload waiting, so the last one wins. Keys are
    independent timers."""

    window: PositiveDuration = 0.5
    key: str | None = None
    # A key that keeps receiving is sent anyway once its first payload has waited this long.
    # Unset: MAX_WAIT_WINDOWS windows, so a steady stream faster than the window is still sent
    # now and then; null: never (statbus's debounces: a stream that never pauses waits for a
    # pause).
    max_wait: PositiveDuration | None = None
    # Bound on keys waiting; policy when full: the key that has waited longest is sent now.
    max_pending: int = Field(default=1000, ge=1, le=100_000)

    @model_validator(mode="before")
    @classmethod
    def _bounded_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_wait" not in data:
            try:
                window = parse_duration(data.get("window", 0.5))
            except ValueError:
                return data  # the field's own validation says what is wrong, with its path
            return {**data, "max_wait": MAX_WAIT_WINDOWS * window if window > 0 else None}
        return data


# Coalesce.max_wait when unset, in windows.
MAX_WAIT_WINDOWS = 10


# A template value that is filled in when sent: the relay's version, the time (ISO 8601 with
# milliseconds, UTC), a connection's id, the ids and scope a client asked for, how many ids.
TEMPLATE_VARIABLES = ("$version", "$now", "$connection_id", "$ids", "$scope", "$id_count")
PER_CLIENT_VARIABLES = ("$connection_id", "$ids", "$scope", "$id_count")


def _template(value: Any, path: str = "") -> Any:
    """A JSON object whose string values may be one of TEMPLATE_VARIABLES ("$$" writes "$")."""
    if isinstance(value, dict):
        for key, item in value.items():
            _template(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _template(item, f"{path}[{index}]")
    elif (
        isinstance(value, str)
        and value.startswith("$")
        and not value.startswith("$$")
        and value not in TEMPLATE_VARIABLES
    ):
        where = f" at {path}" if path else ""
        raise ValueError(
            f"unknown variable {value}{where} (known: {', '.join(TEMPLATE_VARIABLES)}; "
            'write "$$" for a literal "$")'
        )
    return value


Template = Annotated[dict[str, Any], AfterValidator(_template)]


class Reshape(_Section):
    """The object sent, built from a payload: ``keep`` lists the keys in their order (default:
    ``add``'s, then the payload's); ``add`` gives constants (or ``$now``); ``rename`` maps an
    output key to the payload key it comes from; ``defaults`` stand for a key absent or null.
    A kept key absent from the payload and without a default is left out."""

    add: Template = Field(default_factory=dict)
    keep: tuple[str, ...] | None = None
    rename: dict[str, str] = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _only_now(self) -> Reshape:
        per_event = [v for v in self.add.values() if isinstance(v, str) and v.startswith("$")]
        if any(v not in ("$now", "$version") and not v.startswith("$$") for v in per_event):
            raise ValueError("add: only $now and $version can be filled in per event")
        return self


class Enrich(_Section):
    """A SQL function called with a JSON array of payloads (deduplicated), answering a JSON
    array as long: for each, the object to send, or null to send nothing. One call at a time
    per feed (single flight): what arrives meanwhile goes in the next call, together.

    ``read``: a function `db install` generates (public.system_stability_enrich_<name>);
    ``function``: one of the system's own, with that signature (jsonb) -> jsonb."""

    read: EnrichRead | None = None
    function: QualifiedName | None = None
    # The whole call, from the pool to the answer; past it the call is abandoned.
    timeout: PositiveDuration = 2.0
    # Payloads waiting for the next call; policy when full: all of them are dropped, counted
    # in relay_feed_enrich_dropped_total, and the feed's clients get `event: resync`.
    max_pending: int = Field(default=1000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _one_function(self) -> Enrich:
        if (self.read is None) == (self.function is None):
            raise ValueError("set exactly one of read (generated by db install) or function")
        return self

    @property
    def function_name(self) -> str:
        if self.read is not None:
            return enrich_function(self.read)
        assert self.function is not None
        return self.function


class ChannelRules(_Section):
    """What a feed does to one of its channels' payloads, in this order: coalesce (on the
    payload as notified), enrich, reshape; the client filter then reads the object sent."""

    coalesce: Coalesce | None = None  # instead of the feed's
    enrich: Enrich | None = None
    reshape: Reshape | None = None


class Scope(_Section):
    """statbus's scope rule: a client that lists ids gets the payloads for those ids, and, unless
    it asks for ``ids_only``, every payload whose ``verb_field`` is ``all_of_verb`` (a new row).
    ``ids_only`` with no ids gets no payload at all."""

    param: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,31}$")] = "scope"
    verb_field: str = "verb"
    all_of_verb: str = "INSERT"
    ids_only: str = "updates_for_ids_only"
    # The name any other value (or none) stands for, as clients are told it ($scope).
    default: str = "updates_and_all_inserts"


class ClientFilter(_Section):
    """Each client may ask for payloads whose ``field`` (a key, or a dotted path such as
    ``import_job.id``, in the object sent) is among ``?<param>=a,b``.

    ``values``: ``text`` (each non-empty; a bad list is a 400 naming the parameter) or
    ``positive_integers`` (statbus: items trimmed, "" and "0" skipped, each read as JavaScript's
    parseInt reads it, and one that is not a number above 0 makes the request a 400)."""

    param: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,31}$")] = "ids"
    field: str = "id"
    max_values: int = Field(default=100, ge=1, le=10_000)
    values: Literal["text", "positive_integers"] = "text"
    # The body of the 400 answer (a JSON object); default: {"error": "<what is wrong>"}.
    invalid_body: dict[str, Any] | None = None
    scope: Scope | None = None


class Replay(_Section):
    """Each feed keeps its last events (both bounds apply; policy when full: the oldest goes) so
    that a client reconnecting with Last-Event-ID gets what it missed, or `event: resync` when
    that is no longer kept or was sent by an earlier run of the relay."""

    events: int = Field(default=1000, ge=0, le=1_000_000)
    bytes: Size = 1024 * 1024


class FeedConfig(_Section):
    path: Annotated[str, BeforeValidator(_feed_path)]
    # Several channels are merged into one stream, in the order their payloads are sent.
    channels: tuple[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")], ...] = Field(
        min_length=1
    )
    # unnamed: `data: <payload>` (read with onmessage); channel: `event: <channel>`.
    events: Literal["unnamed", "channel"] = "channel"
    # verbatim: the payload as notified; compact: parsed and written again as JavaScript's
    # JSON.stringify writes it (no spaces, 100.00 as 100). Reshaped and enriched payloads are
    # always compact.
    encode: Literal["verbatim", "compact"] = "verbatim"
    # On connect: a named event (connect_event, connect_data), the stability snapshot as
    # `event: stability`, an unnamed data message built per client (connect_message), or
    # nothing.
    on_connect: Literal["event", "snapshot", "message", "none"] = "snapshot"
    connect_event: Annotated[str, Field(pattern=EVENT_NAME)] = "connected"
    connect_data: str = "true"
    connect_message: Template | None = None
    # `retry: <ms>` (feed's retry_interval, else http.retry): first, after the greeting, or not
    # sent (the browser's default then applies).
    retry: Literal["first", "after_greeting", "none"] = "first"
    retry_interval: Duration | None = None
    # After the relay reconnects to the database (notifications may have been missed): the
    # connect event again when on_connect is "event", else `event: resync`.
    heartbeat: Literal["comment", "event"] = "comment"
    heartbeat_comment: Annotated[str, Field(pattern=r"^[ -~]{0,64}$")] = "ping"
    heartbeat_event: Annotated[str, Field(pattern=EVENT_NAME)] = "heartbeat"
    # The heartbeat event's JSON: per client ($connection_id, $id_count) if it says so.
    heartbeat_data: Template = Field(
        default_factory=lambda: {"type": "heartbeat", "timestamp": "$now"}
    )
    heartbeat_interval: PositiveDuration | None = None  # default: http.heartbeat
    coalesce: Coalesce | None = None
    per_channel: dict[str, ChannelRules] = Field(default_factory=dict)
    filter: ClientFilter | None = None
    replay: Replay = Replay()

    @model_validator(mode="after")
    def _consistent(self) -> FeedConfig:
        if "\n" in self.connect_data or "\r" in self.connect_data:
            raise ValueError("connect_data must be one line (it is one SSE data line)")
        if (self.on_connect == "message") != (self.connect_message is not None):
            raise ValueError('connect_message goes with on_connect: "message" (and only with it)')
        if self.retry == "none" and self.on_connect in ("none",):
            raise ValueError('retry: "none" needs a greeting (on_connect) to open the stream')
        unknown = sorted(set(self.per_channel) - set(self.channels))
        if unknown:
            raise ValueError(f"per_channel names channels the feed does not have: {unknown}")
        return self

    def rules(self, channel: str) -> ChannelRules:
        """The channel's rules, with the feed's coalesce unless it has its own."""
        own = self.per_channel.get(channel)
        if own is None:
            return ChannelRules(coalesce=self.coalesce)
        if own.coalesce is None and self.coalesce is not None:
            return own.model_copy(update={"coalesce": self.coalesce})
        return own

    @property
    def enriched(self) -> bool:
        return any(rules.enrich is not None for rules in self.per_channel.values())


class Config(_Section):
    # What "busy" means: a built-in profile's activities (default "seed"), or the config's
    # own under `activities:` (profile "custom"). After loading, `activities` always holds
    # the effective list and `profile` its name.
    profile: str | None = None
    activities: tuple[Activity, ...] = ()
    database: DatabaseConfig = DatabaseConfig()
    stability: StabilityConfig = StabilityConfig()
    http: HttpConfig = HttpConfig()
    details: DetailsConfig = DetailsConfig()
    wait: WaitConfig = WaitConfig()
    history: HistoryConfig = HistoryConfig()
    signals: SignalsConfig = SignalsConfig()
    auth: AuthConfig | None = None
    cors: CorsConfig = CorsConfig()
    logging: LoggingConfig = LoggingConfig()
    # Further NOTIFY channels relayed to SSE clients as named events.
    channels: tuple[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")], ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    # SSE routes of their own for further channels (README "Feeds"); a profile may bring some.
    feeds: tuple[FeedConfig, ...] = ()
    state_directory: str | None = None

    @model_validator(mode="after")
    def _unique_webhook_names(self) -> Config:
        seen: set[str] = set()
        for hook in self.webhooks:
            if hook.name in seen:
                raise ValueError(f'webhook name "{hook.name}" is used twice')
            seen.add(hook.name)
        return self

    @model_validator(mode="before")
    @classmethod
    def _resolve_profile(cls, data: Any) -> Any:
        """``profile`` and ``activities`` into the effective activity list."""
        if not isinstance(data, dict):
            return data
        profile, activities = data.get("profile"), data.get("activities")
        if activities:
            if profile not in (None, CUSTOM):
                raise ValueError(
                    f'profile "{profile}" and activities are both set: remove one (or set '
                    "profile: custom to use the activities listed here)"
                )
            return {**data, "profile": CUSTOM}
        name = profile or DEFAULT_PROFILE
        if not isinstance(name, str) or name == CUSTOM:
            raise ValueError("profile custom needs its activities listed under activities:")
        try:
            chosen = load_profile(name)
        except KeyError as error:
            raise ValueError(f"profile: {error.args[0]}") from None
        resolved = {**data, "profile": name, "activities": chosen.activities}
        if "feeds" not in data and chosen.feeds:
            resolved["feeds"] = chosen.feeds
        return resolved

    @model_validator(mode="after")
    def _unique_activity_names(self) -> Config:
        names = [activity.name for activity in self.activities]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"activity names must be unique: {', '.join(twice)} used twice")
        return self

    @model_validator(mode="after")
    def _unique_feed_paths(self) -> Config:
        paths = [feed.path for feed in self.feeds]
        twice = sorted({path for path in paths if paths.count(path) > 1})
        if twice:
            raise ValueError(f"feed paths must be unique: {', '.join(twice)} used twice")
        return self

    @model_validator(mode="after")
    def _one_read_per_enrich_name(self) -> Config:
        seen: dict[str, EnrichRead] = {}
        for feed in self.feeds:
            for rules in feed.per_channel.values():
                read = rules.enrich.read if rules.enrich is not None else None
                if read is not None and seen.setdefault(read.name, read) != read:
                    raise ValueError(f'enrich read "{read.name}" is defined twice, differently')
        return self

    @property
    def activity_names(self) -> tuple[str, ...]:
        return tuple(activity.name for activity in self.activities)

    @property
    def enrichers(self) -> tuple[EnrichRead, ...]:
        """The enrich functions `db install` generates for the feeds, each once."""
        found: dict[str, EnrichRead] = {}
        for feed in self.feeds:
            for rules in feed.per_channel.values():
                if rules.enrich is not None and rules.enrich.read is not None:
                    found.setdefault(rules.enrich.read.name, rules.enrich.read)
        return tuple(found.values())

    def secrets(self) -> list[str]:
        """Every configured value that must never reach a log line."""
        found = [_dsn_password(self.database.dsn)]
        if self.auth is not None:
            found.extend(self.auth.bearer_tokens)
            found.append(self.auth.metrics_token)
            if self.auth.jwt is not None:
                found.append(self.auth.jwt.secret)
        for hook in self.webhooks:
            found.append(hook.secret)
            found.append(hook.token)
            found.extend(hook.headers.values())
            found.append(_url_password(hook.url))
            found.extend(_url_tokens(hook))
        return [s for s in found if s and len(s) >= 3]


def _dsn_password(dsn: str) -> str | None:
    if not dsn:
        return None
    from psycopg.conninfo import conninfo_to_dict

    try:
        value = conninfo_to_dict(dsn).get("password")
    except Exception:  # an unparsable DSN fails later, with a clean message
        return _url_password(dsn)
    return str(value) if value else None


def _url_tokens(hook: WebhookConfig) -> list[str]:
    """A webhook URL whose path or query carries a token (Slack's does) is itself a secret."""
    path = re.sub(r"^[a-z][a-z0-9+.-]*://[^/?#]*", "", hook.url)
    if (
        hook.format in ("slack", "discord", "teams", "uptime_kuma")
        or "?" in path
        or len(path) >= 16
    ):
        return [hook.url, path]
    return []


def _url_password(url: str) -> str | None:
    match = re.match(r"^[a-z][a-z0-9+.-]*://[^:/@]*:([^@/]*)@", url)
    return match.group(1) if match else None


def interpolate_env(
    tree: Any,
    environ: Mapping[str, str],
    path: str = "",
    *,
    literal: Collection[str] = (),
) -> tuple[Any, list[str]]:
    """Replace ``${NAME}`` and ``${NAME:-default}`` inside the string values of a parsed tree.

    It runs on what YAML has already parsed, so a substituted value is never YAML: whatever
    it holds (``#``, ``: ``, quotes, line breaks) stays one string where it was, and
    comments, keys and non-string scalars stay as written. Values at the key paths in
    ``literal`` (the command line's) are kept as given. Returns the new tree and one
    ``key.path: ...`` problem per variable that is not set (naming it, never a value).
    """
    problems: list[str] = []
    if path and path in literal:
        return tree, problems
    if isinstance(tree, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(substitute, tree), problems
    if isinstance(tree, dict):
        result: dict[Any, Any] = {}
        for key, value in tree.items():
            result[key], sub = interpolate_env(value, environ, _join(path, key), literal=literal)
            problems.extend(sub)
        return result, problems
    if isinstance(tree, list):
        items = []
        for index, value in enumerate(tree):
            item, sub = interpolate_env(value, environ, _join(path, index), literal=literal)
            items.append(item)
            problems.extend(sub)
        return items, problems
    return tree, problems


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


# Values under these keys may be secrets: error messages never repeat them.
_SECRET_PATH = re.compile(r"^(database\.dsn|auth\.|webhooks\[\d+\]\.(url|secret|headers|token))")


def format_validation_error(error: ValidationError) -> list[str]:
    """One ``key.path: message`` line per problem."""
    lines = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path = _join(path, part)
        kind = item["type"]
        secret = _SECRET_PATH.match(path) is not None
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "value_error":
            message = str(item["ctx"]["error"]) if "ctx" in item else item["msg"]
            if secret:
                message = message.split(", got ")[0]
        else:
            message = f"{item['msg'][0].lower()}{item['msg'][1:]}"
            if not secret:  # never echo what may be a password, token or secret URL
                message += f", got {item['input']!r}"
        lines.append(f"{path or '<root>'}: {message}")
    return lines


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    require_dsn: bool = False,
) -> Config:
    """Read, interpolate and validate; raise :class:`ConfigError` listing every problem.

    ``overrides`` are dotted keys (``{"http.listen": "0.0.0.0:80"}``) from the command line.
    """
    environ = os.environ if environ is None else environ
    tree: Any = {}
    if path is not None:
        tree = _read_yaml(Path(path))
    if not isinstance(tree, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, got {type(tree).__name__}"])
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)  # before interpolation: a flag replaces ${VAR} too
    tree, problems = interpolate_env(tree, environ, literal=(overrides or {}).keys())
    database = tree.get("database")
    if isinstance(database, dict) and not database.get("dsn") and environ.get("RELAY_DSN"):
        database["dsn"] = environ["RELAY_DSN"]
    elif database is None and environ.get("RELAY_DSN"):
        tree["database"] = {"dsn": environ["RELAY_DSN"]}
    if not tree.get("state_directory") and environ.get("STATE_DIRECTORY"):
        # systemd's StateDirectory=; it may list several, colon-separated: use the first.
        tree["state_directory"] = environ["STATE_DIRECTORY"].split(":")[0]
    try:
        config = Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError([*problems, *format_validation_error(error)]) from None
    if problems:
        raise ConfigError(problems)
    if require_dsn and not config.database.dsn:
        raise ConfigError(["database.dsn: required (in the file, with --dsn, or as $RELAY_DSN)"])
    return config


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so a key like ``on:`` stays "on"."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_ConfigLoader) or {}
    except yaml.YAMLError:
        quoted = _FLOW_ENV_ITEM.sub(r'\1"\2"\3', text)
        if quoted == text:
            raise
    try:
        return yaml.load(quoted, Loader=_ConfigLoader) or {}
    except yaml.YAMLError:
        pass
    return yaml.load(text, Loader=_ConfigLoader) or {}  # raises: the error as written


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read the file ({error.strerror})"]) from None
    try:
        return _load_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}: {problem}{where}"]) from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value
