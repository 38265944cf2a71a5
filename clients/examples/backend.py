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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from typing import Any

from websockets.asyncio.client import connect

SCHEMA_VERSION = 1


async def follow(url: str, token: str | None = None, out: Any = sys.stdout) -> dict[str, Any]:
    """Consume the events at ``url`` until `session.ended`; returns the visit summary."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    cues: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"session": None, "decision": None}
    running_label: int | None = None
    async with connect(url, additional_headers=headers, max_size=2**20) as ws:
        async for message in ws:
            event = json.loads(message)
            if event.get("v") != SCHEMA_VERSION:
                raise RuntimeError(f"unsupported event schema version {event.get('v')}")
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
    summary = asyncio.run(follow(args.url, args.token))
    print(json.dumps(summary), flush=True)
    return 0 if summary["decision"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
