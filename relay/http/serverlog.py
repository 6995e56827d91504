"""aiohttp's server log, kept free of what a client sent: a malformed request is logged with
its offending raw line, which can carry an ``Authorization`` header or a cookie."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

SERVER_LOGGER = "aiohttp.server"


class MalformedRequestFilter(logging.Filter):
    """Keeps the fact of a malformed request (its status), drops the bytes and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.name == SERVER_LOGGER and isinstance(error, HttpProcessingError):
            record.msg = "malformed_http_request status=%s"
            record.args = (error.code,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "info"
        return True


def quiet_malformed_requests() -> None:
    """Puts the filter on aiohttp's server logger (once), where every such record starts."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, MalformedRequestFilter) for f in logger.filters):
        logger.addFilter(MalformedRequestFilter())
