"""The source stage's sections: the database connection (``database``) and how its truth
is read (``stability``)."""

from __future__ import annotations

from pydantic import Field, field_validator

from relay.config.fields import Duration, PositiveDuration, Section


class DatabaseConfig(Section):
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


class StabilityConfig(Section):
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
