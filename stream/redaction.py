"""Failures in the server's log without their messages.

An exception's text may quote what it was working on: a transcript, an event, a prompt
(health data, which never goes to the log). So failures are logged with their type and
the frames of their traceback, never their message (nor a chained exception's).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

__all__ = ["log_failure", "redact_server_log"]

# aiohttp's own logger for requests it could not handle: its records carry the exception,
# whose text quotes the request (a bad request line holds its ?token=..., a bad header its
# value).
SERVER_LOGGER = "aiohttp.server"


def log_failure(
    logger: logging.Logger, exc: BaseException, msg: str, *args: Any, level: int = logging.ERROR
) -> None:
    """Log ``msg % args`` with the type of ``exc`` and where it was raised, not its text."""
    where = "".join(traceback.format_tb(exc.__traceback__))
    logger.log(level, msg + " (%s)\n%s", *args, type(exc).__name__, where)


class _RedactedFailures(logging.Filter):
    """Rewrites a record's exception as its type and frames (`log_failure`'s form); a
    client's malformed request or dropped connection is logged at INFO, not ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from aiohttp.http_exceptions import HttpProcessingError

        where = "".join(traceback.format_tb(exc.__traceback__))
        record.msg = f"{record.getMessage()} ({type(exc).__name__})\n{where}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        if isinstance(exc, HttpProcessingError | ConnectionResetError):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def redact_server_log() -> None:
    """Keep request text (tokens, contexts) out of aiohttp's server log (idempotent)."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, _RedactedFailures) for f in logger.filters):
        logger.addFilter(_RedactedFailures())
