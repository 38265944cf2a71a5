"""A telehealth back end consuming one session's ahstream events (Python, `websockets`).

Run it beside the service while a call is published (by the browser page, OBS,
GStreamer or `ahstream send`):

    python clients/examples/backend.py \\
        ws://127.0.0.1:8080/sessions/<session>/events --token <read or service token>

It follows the call as a clinician-facing back end would: it keeps the running
decision, reports each A/H segment when it closes with the cues seen in it, and
when the session ends prints one JSON summary line (decision, segments, cue
counts) for the visit record. It keeps no transcript: the summary holds no words.
The session id and its read token come from the `201` answer to `POST /whip`
(`X-Ahstream-Session`, `X-Ahstream-Read-Token`); a service token opens any session.
A refused subscription (401, 403, 404) or a connection that fails is one line on
stderr and exit status 1 (2 for a malformed URL), as with `ahstream listen`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.uri import parse_uri

SCHEMA_VERSION = 1
#: What a refused subscription means, by HTTP status.
REFUSALS = {
    401: "a token is required: pass --token",
    403: "this token may not read this session",
    404: "no such session",
}


class FollowError(Exception):
    """The subscription was refused or failed (the message holds no URL query: no token)."""


def redact(url: str) -> str:
    """``url`` without its query string (which may hold a token)."""
    base, sep, _ = url.partition("?")
    return base + ("?…" if sep else "")


async def follow(url: str, token: str | None = None, out: Any = sys.stdout) -> dict[str, Any]:
    """Consume the events at ``url`` until `session.ended`; returns the visit summary
    (``decision`` None when the stream closed before it). FollowError when the server
    refuses the subscription or the connection fails; InvalidURI for a malformed URL."""
    try:
        return await _follow(url, token, out)
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = REFUSALS.get(status)
        raise FollowError(
            f"the server refused the subscription: {status}" + (f" ({hint})" if hint else "")
        ) from None
    except ConnectionClosedError as exc:
        raise FollowError(f"the connection broke before session.ended ({exc})") from None
    except InvalidURI:
        raise
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        why = (str(exc) or type(exc).__name__).replace(url, redact(url))
        raise FollowError(f"cannot subscribe to {redact(url)}: {why}") from None


async def _follow(url: str, token: str | None, out: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    cues: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"session": None, "decision": None}
    running_label: int | None = None
    async with connect(url, additional_headers=headers, max_size=2**20) as ws:
        async for message in ws:
            try:
                event = json.loads(message)
            except json.JSONDecodeError:
                raise FollowError("the server sent a message that is not JSON") from None
            if not isinstance(event, dict):
                raise FollowError("the server sent a message that is not a JSON object")
            if event.get("v") != SCHEMA_VERSION:
                raise FollowError(f"unsupported event schema version {event.get('v')}")
            kind = event["type"]
            if kind == "session.started":
                summary["session"] = event["session"]
                print(f"session {event['session']} started ({event['profile']})", file=out)
            elif kind == "cue":
                cues.append(event)
            elif kind == "video" and not event["final"] and event["label"] != running_label:
                running_label = event["label"]
                state = "A/H" if running_label else "no A/H"
                print(
                    f"[{event['t']:7.1f} s] running decision: {state} (p={event['p']:.2f})",
                    file=out,
                )
            elif kind == "segment":
                segments.append(event)
                inside = Counter(
                    c["cue"] for c in cues if c["t1"] >= event["t0"] and c["t0"] <= event["t1"]
                )
                why = ", ".join(f"{n}× {cue}" for cue, n in inside.most_common()) or "no cue"
                print(
                    f"[{event['t1']:7.1f} s] A/H segment {event['t0']:.1f}–{event['t1']:.1f} s "
                    f"(peak {event['peak']:.2f}; {why})",
                    file=out,
                )
            elif kind == "error":
                print(f"service error: {event['code']}", file=out)
            elif kind == "session.ended":
                summary.update(
                    duration=event["duration"],
                    reason=event["reason"],
                    decision=event.get("decision"),
                )
                break
    summary["segments"] = [{"t0": s["t0"], "t1": s["t1"], "peak": s["peak"]} for s in segments]
    summary["cues"] = dict(Counter(c["cue"] for c in cues))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Follow one session and print its summary as the last line (JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="ws(s)://HOST:PORT/sessions/<session>/events")
    p.add_argument("--token", help="the session's read token or a service token")
    args = p.parse_args(argv)
    try:
        parse_uri(args.url)  # a malformed URL fails here, before any connection
    except (InvalidURI, ValueError):  # ValueError: urllib's, e.g. an unclosed IPv6 bracket
        print(f"backend.py: invalid URL: {redact(args.url)}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(follow(args.url, args.token))
    except InvalidURI as exc:
        print(f"backend.py: invalid URL: {redact(exc.uri)}", file=sys.stderr)
        return 2
    except FollowError as exc:
        print(f"backend.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("backend.py: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(summary), flush=True)
    if "reason" not in summary:
        print("backend.py: the event stream ended before session.ended", file=sys.stderr)
        return 1
    if summary["decision"] is None:
        print(
            f"backend.py: the session ended without a decision ({summary['reason']})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
