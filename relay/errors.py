"""The relay's exception types: one common base, so callers can catch what they can act on."""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid; ``problems`` lists every one with its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DatabaseUnavailable(RelayError):
    """The database cannot be reached or did not answer in time."""


class SchemaMissing(RelayError):
    """The relay's SQL functions are not installed in the database."""


class SchemaMismatch(SchemaMissing):
    """The installed functions or the tables do not fit the config's activities."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class DatabaseReadOnly(DatabaseUnavailable):
    """The server that answered is a standby (in recovery) or read-only: the relay needs the
    primary. Retried at a short, fixed interval: a promotion is usually seconds away."""


class PoolerRefused(DatabaseUnavailable):
    """The connection goes through a pooler that cannot carry LISTEN (transaction or
    statement pooling): notifications would be lost and the relay would report late."""
