"""Reports of one session from its events: a PNG timeline and a self-contained HTML summary.

`render_report(events, out_dir, stem)` takes the events of a session (the dicts
of the websocket protocol, as `ahstream analyze` writes them to JSONL, or as
`ahstream send --events` records them) and writes ``out_dir/<stem>.png`` and
``out_dir/<stem>.html``:

- the PNG: frame-level p(t) with the decision threshold, A/H segments shaded,
  the running video-level p, cue events on one row per modality (words,
  voice, face, cross-modal) and transcript excerpts along the same time axis;
- the HTML: the decision, p and threshold, segments, a cue table and the
  committed transcript, with the PNG embedded (base64), no external resources.

A report holds the transcript of a call (health data): it is written only
where the caller asks. Matplotlib runs on its Agg canvas (no display, no
global backend state), so this works in threads and on servers.
"""

from __future__ import annotations

import base64
import html
import json
import math
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stream.record import create_private

__all__ = ["MODALITY_ROWS", "load_events", "render_report", "summarize"]

#: Cue rows of the timeline, top to bottom: (event modality, row label).
MODALITY_ROWS: tuple[tuple[str, str], ...] = (
    ("text", "words"),
    ("voice", "voice"),
    ("face", "face"),
    ("cross", "cross-modal"),
)
_ROW_COLOURS = {"text": "#1f77b4", "voice": "#2ca02c", "face": "#9467bd", "cross": "#d62728"}
_AH_COLOUR = "#ff7f0e"


def load_events(path: str | Path) -> list[dict[str, Any]]:
    """The events of a JSONL file (one JSON object per line; blank lines skipped).

    Raises ValueError naming the file and line of the first line that is not a JSON object.
    """
    events = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not JSON: {exc.msg}") from None
                if not isinstance(event, dict):
                    kind = type(event).__name__
                    raise ValueError(f"{path}:{n}: not a JSON object (a {kind})")
                events.append(event)
    return events


def _of(events: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == kind]


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What a report shows, gathered from the events of one session."""
    started = next(iter(_of(events, "session.started")), {})
    ended = next(iter(_of(events, "session.ended")), None)
    videos = _of(events, "video")
    finals = [v for v in videos if v.get("final")]
    decision: dict[str, Any] | None = None
    if finals:
        v = finals[-1]
        decision = {k: v.get(k) for k in ("p", "label", "threshold", "method", "evidence")}
    elif ended and ended.get("decision"):
        decision = dict(ended["decision"])
    elif videos:  # an interrupted recording: the newest running decision, marked as such
        v = videos[-1]
        decision = {k: v.get(k) for k in ("p", "label", "threshold", "method", "evidence")}
        decision["running"] = True
    if decision is not None:
        decision.setdefault("running", False)
    words = [w for t in _of(events, "transcript") if t.get("final") for w in t.get("words", [])]
    frames = _of(events, "frame")
    duration = None
    if ended is not None:
        duration = ended.get("duration")
    if duration is None:
        times = [f["t"] for f in frames] + [w["t1"] for w in words]
        duration = max(times, default=0.0)
    statuses = _of(events, "status")
    return {
        "session": started.get("session") or (events[0].get("session") if events else ""),
        "profile": started.get("profile"),
        "models": started.get("models", {}),
        "context": started.get("context"),
        "duration": float(duration or 0.0),
        "ended": ended is not None,
        "reason": ended.get("reason") if ended else None,
        "decision": decision,
        "threshold": (decision or {}).get("threshold")
        if decision
        else (videos[-1]["threshold"] if videos else None),
        "frames": frames,
        "videos": [v for v in videos if not v.get("final")],
        "segments": _of(events, "segment"),
        "cues": sorted(_of(events, "cue"), key=lambda c: (c["t0"], c["t1"])),
        "words": words,
        "errors": _of(events, "error"),
        "status": statuses[-1] if statuses else None,
    }


#: Why a report can have no probability curve: the file holds no `frame` event.
NO_FRAMES = (
    "no frame events in this file: a listener that joined after the call "
    "receives only the replayed events (start, cues, segments, errors, final transcript "
    "and decision)"
)


def _decision_text(decision: dict[str, Any] | None) -> str:
    if not decision:
        return "no final decision"
    label = "A/H" if decision.get("label") else "no A/H"
    op = "≥" if decision.get("label") else "<"
    text = f"{label} (p = {decision['p']:.3f} {op} threshold {decision['threshold']:.3f})"
    if decision.get("evidence") == "prior":
        text += ", from the prior alone: fewer than three words were heard"
    elif decision.get("evidence") == "media":
        text += ", from face and voice alone: no words were used"
    return text + (", running: the session has no final decision" if decision["running"] else "")


def _excerpts(
    words: list[dict[str, Any]], duration: float, n: int = 8
) -> list[tuple[float, float, str]]:
    """Committed words grouped into ≤ ``n`` time windows: (t0, t1, text) each."""
    if not words or duration <= 0:
        return []
    width = max(duration / n, 1.0)
    out: list[tuple[float, float, str]] = []
    for i in range(int(math.ceil(duration / width))):
        lo, hi = i * width, (i + 1) * width
        chunk = [w["w"] for w in words if lo <= w["t0"] < hi]
        if chunk:
            out.append((lo, hi, " ".join(chunk)))
    return out


def _render_png(s: dict[str, Any], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ends = [f["t"] for f in s["frames"]] + [g["t1"] for g in s["segments"]]
    duration = max(s["duration"], *ends, 1.0)
    fig = Figure(figsize=(12, 7.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(3, 1, height_ratios=[3.2, 1.8, 1.1])
    ax_p = fig.add_subplot(gs[0])
    ax_c = fig.add_subplot(gs[1], sharex=ax_p)
    ax_t = fig.add_subplot(gs[2], sharex=ax_p)

    # p(t), threshold, running video p, segments
    for seg in s["segments"]:
        for ax in (ax_p, ax_c, ax_t):
            ax.axvspan(seg["t0"], seg["t1"], color=_AH_COLOUR, alpha=0.15, lw=0)
    frames = s["frames"]
    handles: list[Any] = []
    if not frames:
        ax_p.text(
            0.5,
            0.85,  # above the threshold line
            NO_FRAMES,
            transform=ax_p.transAxes,
            ha="center",
            va="center",
            wrap=True,
            color="#555555",
            fontsize=9,
        )
    if frames:
        ts = [f["t"] for f in frames]
        ps = [f["p"] for f in frames]
        (line,) = ax_p.plot(ts, ps, color="#222222", lw=1.4, label="frame p(t)")
        handles.append(line)
        prior = [(f["t"], f["p"]) for f in frames if f.get("evidence") == "prior"]
        if prior:
            pts = ax_p.scatter(
                [t for t, _ in prior],
                [p for _, p in prior],
                s=6,
                color="#999999",
                zorder=3,
                label="prior (< 3 words)",
            )
            handles.append(pts)
    if s["videos"]:
        (vline,) = ax_p.step(
            [v["t"] for v in s["videos"]],
            [v["p"] for v in s["videos"]],
            where="post",
            color="#1f77b4",
            lw=1.0,
            alpha=0.7,
            label="video-level p",
        )
        handles.append(vline)
    if s["threshold"] is not None:
        label = f"threshold {s['threshold']:.3f}"
        thr = ax_p.axhline(s["threshold"], color="#d62728", ls="--", lw=1.2, label=label)
        handles.append(thr)
    if s["segments"]:
        handles.append(Patch(color=_AH_COLOUR, alpha=0.3, label="A/H segment"))
    ax_p.set_ylim(0, 1)
    ax_p.set_ylabel("A/H probability")
    ax_p.grid(alpha=0.3)
    if handles:
        fig.legend(handles=handles, loc="outside upper right", fontsize=8, ncol=len(handles))
    # parse_math=False on every text that shows user text: "$5 or $10" is not mathtext
    fig.suptitle(
        f"{title}: {_decision_text(s['decision'])}",
        fontsize=12,
        x=0.01,
        ha="left",
        parse_math=False,
    )

    # cues by modality
    rows = {m: i for i, (m, _) in enumerate(MODALITY_ROWS)}
    for cue in s["cues"]:
        row = rows.get(cue.get("modality"))
        if row is None:
            continue
        y = len(rows) - 1 - row
        t0, t1 = cue["t0"], max(cue["t1"], cue["t0"] + duration / 300)
        colour = _ROW_COLOURS[cue["modality"]]
        ax_c.broken_barh(
            [(t0, t1 - t0)],
            (y - 0.35, 0.7),
            color=colour,
            alpha=0.35 + 0.65 * float(cue.get("strength", 0.5)),
        )
        ax_c.annotate(
            cue["cue"].replace("_", " "),
            (t0, y + 0.38),
            fontsize=6.5,
            color=colour,
            va="bottom",
            clip_on=True,
            parse_math=False,
        )
    ax_c.set_yticks(
        [len(rows) - 1 - i for i in range(len(rows))], [label for _, label in MODALITY_ROWS]
    )
    ax_c.set_ylim(-0.6, len(rows) - 0.1)
    ax_c.set_ylabel("cues")
    ax_c.grid(axis="x", alpha=0.3)

    # transcript excerpts
    ax_t.set_yticks([])
    ax_t.set_ylim(0, 1)
    ax_t.set_ylabel("transcript")
    excerpts = _excerpts(s["words"], duration)
    for lo, hi, text in excerpts:
        chars = max(10, int(150 * (hi - lo) / duration))
        lines = textwrap.wrap(text, chars)
        shown = "\n".join(lines[:5]) + (" …" if len(lines) > 5 else "")
        ax_t.text(
            lo + 0.01 * duration,
            0.92,
            shown,
            fontsize=7,
            va="top",
            ha="left",
            wrap=False,
            clip_on=True,
            parse_math=False,
        )
        ax_t.axvline(lo, color="#cccccc", lw=0.6)
    if not excerpts:
        ax_t.text(0.01, 0.5, "(no committed words)", fontsize=8, transform=ax_t.transAxes)
    ax_t.set_xlim(0, duration)
    ax_t.set_xlabel("media time (s)")
    for ax in (ax_p, ax_c):
        ax.tick_params(labelbottom=False)
    with create_private(path, binary=True) as f:
        fig.savefig(f, format="png")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
.decision{font-size:1.3em;padding:.6em 1em;border-radius:6px;display:inline-block}
.ah{background:#ffe3c6;border:1px solid #ff7f0e}.noah{background:#dff0d8;border:1px solid #3c763d}
.none{background:#eee;border:1px solid #999}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left}th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd}.muted{color:#777}
.transcript span.seg{background:#ffe3c6}.transcript{line-height:1.6}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
"""


def _in_segment(t: float, segments: list[dict[str, Any]]) -> bool:
    return any(s["t0"] <= t <= s["t1"] for s in segments)


def _render_html(s: dict[str, Any], png: Path, path: Path, title: str) -> None:
    esc = html.escape
    d = s["decision"]
    cls = "none" if not d else ("ah" if d.get("label") else "noah")
    facts = [("session", s["session"]), ("duration", f"{s['duration']:.1f} s of media")]
    if d:
        facts += [
            ("video-level p", f"{d['p']:.3f}"),
            ("threshold", f"{d['threshold']:.3f}"),
            ("method", str(d.get("method"))),
        ]
        if d.get("evidence"):
            facts.append(("evidence", str(d["evidence"])))
    if s["profile"]:
        facts.append(("profile", s["profile"]))
    if s["context"]:
        facts.append(("context", s["context"]))
    if s["reason"]:
        facts.append(("ended", s["reason"]))
    if not s["frames"]:
        facts.append(("frame events", NO_FRAMES))
    st = s["status"]
    if st is not None:
        if st.get("rtf") is not None:
            facts.append(("ASR real-time factor", f"{st['rtf']:.2f}"))
        facts.append(
            (
                "video frames",
                f"{st.get('received_video_frames', 0)} received, "
                f"{st.get('dropped_video_frames', 0)} not analysed (newest-frame policy)",
            )
        )
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in facts)

    if s["segments"]:
        seg_rows = "".join(
            f"<tr><td class=num>{g['t0']:.2f}</td><td class=num>{g['t1']:.2f}</td>"
            f"<td class=num>{g['t1'] - g['t0']:.2f}</td><td class=num>{g['peak']:.3f}</td></tr>"
            for g in s["segments"]
        )
        segments = (
            "<table><tr><th>from (s)</th><th>to (s)</th><th>length (s)</th><th>peak p</th></tr>"
            f"{seg_rows}</table>"
        )
    else:
        segments = "<p class=muted>No A/H segment.</p>"

    labels = dict(MODALITY_ROWS)
    if s["cues"]:
        cue_rows = "".join(
            f"<tr><td class=num>{c['t0']:.2f}</td><td class=num>{c['t1']:.2f}</td>"
            f"<td>{esc(labels.get(c['modality'], c['modality']))}</td>"
            f"<td>{esc(c['cue'].replace('_', ' '))}</td>"
            f"<td class=num>{c['strength']:.2f}</td><td>{esc(c.get('detail') or '')}</td></tr>"
            for c in s["cues"]
        )
        cues = (
            "<table><tr><th>from (s)</th><th>to (s)</th><th>modality</th><th>cue</th>"
            f"<th>strength</th><th>detail</th></tr>{cue_rows}</table>"
        )
    else:
        cues = "<p class=muted>No cue detected.</p>"

    if s["words"]:
        spans = []
        for w in s["words"]:
            word = esc(w["w"])
            tip = f' title="{w["t0"]:.2f}–{w["t1"]:.2f} s"'
            if _in_segment(w["t0"], s["segments"]):
                spans.append(f"<span class=seg{tip}>{word}</span>")
            else:
                spans.append(f"<span{tip}>{word}</span>")
        transcript = (
            "<p class=transcript>" + " ".join(spans) + "</p>"
            "<p class=muted>Shaded words fall inside an A/H segment.</p>"
        )
    else:
        transcript = "<p class=muted>No committed words.</p>"

    errors = ""
    if s["errors"]:
        items = "".join(
            f"<li><code>{esc(e.get('code', ''))}</code>: {esc(e.get('message', ''))}</li>"
            for e in s["errors"]
        )
        errors = f"<h2>Errors</h2><ul>{items}</ul>"

    img = base64.b64encode(png.read_bytes()).decode("ascii")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ahstream report: {esc(title)}</title><style>{_CSS}</style></head>
<body>
<h1>ahstream report: {esc(title)}</h1>
<p class="decision {cls}" id="decision">{esc(_decision_text(d))}</p>
<dl>{dl}</dl>
<h2>Timeline</h2>
<img alt="A/H probability, segments, cues and transcript over media time"
 src="data:image/png;base64,{img}">
<h2>A/H segments</h2>{segments}
<h2>Cues</h2>{cues}
<h2>Transcript</h2>{transcript}
{errors}
<p class=muted>This report contains the transcript of a call. Keep it where health data
may be kept.</p>
</body></html>
"""
    with create_private(path) as f:
        f.write(page)


def render_report(
    events: list[dict[str, Any]], out_dir: str | Path, stem: str
) -> tuple[Path, Path]:
    """Write ``out_dir/<stem>.png`` and ``out_dir/<stem>.html`` for one session's events.

    Returns the two paths. Raises ValueError when ``events`` holds no event of a session.
    """
    if not any(isinstance(e, dict) and "type" in e for e in events):
        raise ValueError("no events to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(events)
    png, page = out / f"{stem}.png", out / f"{stem}.html"
    _render_png(s, png, stem)
    _render_html(s, png, page, stem)
    return png, page
