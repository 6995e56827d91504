"""The configuration as a whole: the top-level :class:`Config` with every section, the
checks across sections, the profile that supplies the activities, and the values that must
never reach a log line. Reading the file is ``relay/config/load.py``'s."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from relay.config.activities import Activity, EnrichRead
from relay.config.auth import AuthConfig
from relay.config.database import DatabaseConfig, StabilityConfig
from relay.config.feeds import FeedConfig
from relay.config.fields import Section
from relay.config.http import CorsConfig, HttpConfig
from relay.config.profiles import CUSTOM, DEFAULT_PROFILE, load_profile
from relay.config.state import DetailsConfig, HistoryConfig, SignalsConfig, WaitConfig
from relay.config.webhooks import WebhookConfig


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(Section):
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
