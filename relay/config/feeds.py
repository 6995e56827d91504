"""Feeds (``feeds``): NOTIFY channels relayed on SSE routes of their own
(relay/fanout/feeds.py), with what is done to each channel's payloads and what each client may
ask for."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from relay.config.activities import EnrichRead, QualifiedName, enrich_function
from relay.config.fields import Duration, PositiveDuration, Section, Size
from relay.durations import parse_duration

EVENT_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
# Routes the relay serves itself: a feed may not take one over.
RESERVED = ("/api/system-status", "/metrics", "/healthz", "/readyz", "/static", "/")


def _feed_path(value: Any) -> Any:
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9_./-]{1,200}", value):
        raise ValueError(f'expected a path like "/api/sse/worker_status", got {value!r}')
    if any(value == r or (r != "/" and value.startswith(r + "/")) for r in RESERVED):
        raise ValueError(f"{value} is one of the relay's own routes")
    return value


class Coalesce(Section):
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


class Reshape(Section):
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


class Enrich(Section):
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


class ChannelRules(Section):
    """What a feed does to one of its channels' payloads, in this order: coalesce (on the
    payload as notified), enrich, reshape; the client filter then reads the object sent."""

    coalesce: Coalesce | None = None  # instead of the feed's
    enrich: Enrich | None = None
    reshape: Reshape | None = None


class Scope(Section):
    """statbus's scope rule: a client that lists ids gets the payloads for those ids, and, unless
    it asks for ``ids_only``, every payload whose ``verb_field`` is ``all_of_verb`` (a new row).
    ``ids_only`` with no ids gets no payload at all."""

    param: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,31}$")] = "scope"
    verb_field: str = "verb"
    all_of_verb: str = "INSERT"
    ids_only: str = "updates_for_ids_only"
    # The name any other value (or none) stands for, as clients are told it ($scope).
    default: str = "updates_and_all_inserts"


class ClientFilter(Section):
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


class Replay(Section):
    """Each feed keeps its last events (both bounds apply; policy when full: the oldest goes) so
    that a client reconnecting with Last-Event-ID gets what it missed, or `event: resync` when
    that is no longer kept or was sent by an earlier run of the relay."""

    events: int = Field(default=1000, ge=0, le=1_000_000)
    bytes: Size = 1024 * 1024


class FeedConfig(Section):
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
