"""Logging: structlog, JSON lines when stdout is not a terminal, readable console output when it is.

All global logging configuration lives here. Every rendered line passes through
:class:`Redactor`, so a configured secret (a DSN password, a token, a webhook
secret) never reaches the output, whatever code logged it. It takes plain values (a level, a
format, the secrets), so this plumbing imports no other part of the relay.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, Protocol, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR
MASK = "***"


class Redactor:
    """A last processor: masks every known secret in the rendered line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __call__(self, _logger: Any, _name: str, line: Any) -> Any:
        if isinstance(line, str):
            for secret in self.secrets:
                line = line.replace(secret, MASK)
        return line

    def mask(self, text: str) -> str:
        return str(self(None, "", text))

    def scrub(self, _logger: Any, _name: str, event: Any) -> Any:
        """A processor before rendering: masks secrets inside the event's values, where
        a renderer might escape them (JSON turns ``"`` into ``\\"``) past the line check."""
        if not self.secrets or not isinstance(event, dict):
            return event
        return {key: self._scrub_value(value) for key, value in event.items()}

    def _scrub_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, list | tuple):
            return [self._scrub_value(item) for item in value]
        if isinstance(value, dict):
            return {key: self._scrub_value(item) for key, item in value.items()}
        return value


redactor = Redactor()


class LogSettings(Protocol):
    """What :func:`configure` reads: ``relay.config.LoggingConfig`` has this shape."""

    @property
    def level(self) -> str: ...

    @property
    def format(self) -> str: ...


def configure(
    settings: LogSettings, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library's logging (aiohttp, psycopg) alike."""
    stream = stream or sys.stdout
    redactor.update(secrets)
    use_json = settings.format == "json" or (settings.format == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    level = _LEVELS[settings.level]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redactor.scrub,
            renderer,
            redactor,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor.scrub,
                renderer,
                redactor,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
