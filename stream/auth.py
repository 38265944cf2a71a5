"""Bearer-token auth: service tokens (publish, read anything) and per-session read tokens.

Service tokens come from ``--token-file`` (one per line, blank lines and ``#``
comments ignored) and/or the ``AHSTREAM_TOKENS`` environment variable
(comma-separated). Every session gets a random read token when it is created;
it lets its holder subscribe to that session's events and end it, nothing else.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from aiohttp import web

__all__ = [
    "ENV_TOKENS",
    "READ_TOKEN_HEADER",
    "Auth",
    "TokenFileError",
    "bearer_token",
    "load_tokens",
    "parse_token_file",
]

ENV_TOKENS = "AHSTREAM_TOKENS"
READ_TOKEN_HEADER = "X-Ahstream-Read-Token"
CHALLENGE = 'Bearer realm="ahstream"'


class TokenFileError(ValueError):
    """The token file is missing, unreadable or holds no token."""


def parse_token_file(path: str | Path) -> list[str]:
    """The tokens of a token file: one per line, blank lines and ``#`` comments ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenFileError(f"token file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc}") from None
    tokens = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            tokens.append(line)
    if not tokens:
        raise TokenFileError(f"token file {path} holds no token")
    return tokens


def load_tokens(
    token_file: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Service tokens from ``token_file`` and ``AHSTREAM_TOKENS`` (empty list: auth is off)."""
    env = os.environ if environ is None else environ
    tokens = parse_token_file(token_file) if token_file is not None else []
    tokens += [t.strip() for t in env.get(ENV_TOKENS, "").split(",") if t.strip()]
    return list(dict.fromkeys(tokens))


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two tokens. A header's bytes that are not UTF-8 reach
    us as lone surrogates (aiohttp decodes with ``surrogateescape``): they are encoded
    too, and can never equal a token read from a file or the environment."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


class Auth:
    """The service tokens of a server and the read tokens of its sessions."""

    def __init__(self, service_tokens: Iterable[str] = ()) -> None:
        self._service = tuple(service_tokens)
        self._read: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a token."""
        return bool(self._service)

    def is_service(self, token: str | None) -> bool:
        """Whether ``token`` is a service token (every token is compared, in constant time)."""
        if not token:
            return False
        return any([_same(token, t) for t in self._service])

    def issue(self, session_id: str) -> str:
        """Create and remember the read token of a new session."""
        token = secrets.token_urlsafe(24)
        while token.startswith("-"):  # "--token -x…" would read as an option on a command line
            token = secrets.token_urlsafe(24)
        self._read[session_id] = token
        return token

    def forget(self, session_id: str) -> None:
        """Drop the read token of a session that is gone."""
        self._read.pop(session_id, None)

    def may_read(self, session_id: str, token: str | None) -> bool:
        """Whether ``token`` is a service token or the read token of ``session_id``."""
        if not token:
            return False
        read = self._read.get(session_id)
        own = _same(token, read) if read is not None else False
        return self.is_service(token) or own

    def require_service(self, request: web.Request) -> None:
        """Raise 401 unless the request carries a service token (when auth is on)."""
        if not self.enabled:
            return
        token = bearer_token(request)
        if token is None:
            raise web.HTTPUnauthorized(
                text="a bearer token is required\n", headers={"WWW-Authenticate": CHALLENGE}
            )
        if not self.is_service(token):
            raise web.HTTPUnauthorized(
                text="invalid token\n",
                headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'},
            )

    def require_read(self, request: web.Request, session_id: str, query: bool = False) -> None:
        """Raise 401 (no token) or 403 (wrong token) unless the request may read the session."""
        if not self.enabled:
            return
        token = bearer_token(request)
        if token is None and query:
            token = request.query.get("token") or None
        if token is None:
            raise web.HTTPUnauthorized(
                text="a bearer token is required\n", headers={"WWW-Authenticate": CHALLENGE}
            )
        if not self.may_read(session_id, token):
            raise web.HTTPForbidden(text="this token may not read this session\n")


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
