"""Configuration, the plumbing every stage is handed: one YAML file, loaded and validated in
one step (``load``), into the top-level model (``settings``) made of sections, each declared
with its own job (``http``, ``database``, ``state``, ``auth``, ``webhooks``, ``feeds``; the
value types they share in ``fields``), with what "busy" means (``activities``, the activity
model) and the built-in profiles (``profiles``, ``profiles/*.yaml``). It imports no stage, so
every stage may import it (tests/test_layout.py checks both).

The names below are the ones the rest of the relay imports, as ``from relay.config import ...``.
"""

from relay.config.auth import HMAC_ALGORITHMS, KEY_ALGORITHMS, AuthConfig, JwtConfig, Secret
from relay.config.database import DatabaseConfig, StabilityConfig
from relay.config.feeds import (
    EVENT_NAME,
    MAX_WAIT_WINDOWS,
    PER_CLIENT_VARIABLES,
    RESERVED,
    TEMPLATE_VARIABLES,
    ChannelRules,
    ClientFilter,
    Coalesce,
    Enrich,
    FeedConfig,
    Replay,
    Reshape,
    Scope,
    Template,
)
from relay.config.fields import Duration, PositiveDuration, Size, StateName, parse_size
from relay.config.http import (
    CorsConfig,
    HttpConfig,
    Listen,
    ListenAddress,
    Network,
    parse_listen,
    parse_network,
)
from relay.config.load import format_validation_error, interpolate_env, load_config
from relay.config.settings import Config, LoggingConfig
from relay.config.state import DetailsConfig, HistoryConfig, SignalsConfig, WaitConfig
from relay.config.webhooks import (
    SIGNED_KINDS,
    STATUS_MONITORS,
    TEMPLATE_FIELDS,
    WebhookConfig,
    WebhookFormat,
    template_placeholders,
)
from relay.durations import parse_duration

__all__ = [
    "EVENT_NAME",
    "HMAC_ALGORITHMS",
    "KEY_ALGORITHMS",
    "MAX_WAIT_WINDOWS",
    "PER_CLIENT_VARIABLES",
    "RESERVED",
    "SIGNED_KINDS",
    "STATUS_MONITORS",
    "TEMPLATE_FIELDS",
    "TEMPLATE_VARIABLES",
    "AuthConfig",
    "ChannelRules",
    "ClientFilter",
    "Coalesce",
    "Config",
    "CorsConfig",
    "DatabaseConfig",
    "DetailsConfig",
    "Duration",
    "Enrich",
    "FeedConfig",
    "HistoryConfig",
    "HttpConfig",
    "JwtConfig",
    "Listen",
    "ListenAddress",
    "LoggingConfig",
    "Network",
    "PositiveDuration",
    "Replay",
    "Reshape",
    "Scope",
    "Secret",
    "SignalsConfig",
    "Size",
    "StabilityConfig",
    "StateName",
    "Template",
    "WaitConfig",
    "WebhookConfig",
    "WebhookFormat",
    "format_validation_error",
    "interpolate_env",
    "load_config",
    "parse_duration",
    "parse_listen",
    "parse_network",
    "parse_size",
    "template_placeholders",
]
