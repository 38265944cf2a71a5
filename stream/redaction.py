"""Failures in the server's log without their messages.

An exception's text may quote what it was working on: a transcript, an event, a prompt
(health data, which never goes to the log). So failures are logged with their type and
the frames of their traceback, never their message (nor a chained exception's).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

__all__ = ["log_failure"]


def log_failure(
    logger: logging.Logger, exc: BaseException, msg: str, *args: Any, level: int = logging.ERROR
) -> None:
    """Log ``msg % args`` with the type of ``exc`` and where it was raised, not its text."""
    where = "".join(traceback.format_tb(exc.__traceback__))
    logger.log(level, msg + " (%s)\n%s", *args, type(exc).__name__, where)
