"""Reports (`ahstream analyze --report`, `ahstream report`) and analyze's progress bar."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clients.report import load_events, render_report
from tests.conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _check_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.width >= 1000 and image.height >= 600
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10  # not a blank canvas
    return data, pixels


def test_analyze_report_png_and_html(analyzed_call):
    out, run = analyzed_call
    assert sorted(p.name for p in out.iterdir()) == [
        "talking_face.html",
        "talking_face.jsonl",
        "talking_face.png",
    ]
    events = load_events(out / "talking_face.jsonl")
    final = next(e for e in events if e["type"] == "video" and e["final"])
    segments = [e for e in events if e["type"] == "segment"]
    cues = [e for e in events if e["type"] == "cue"]
    words = [w["w"] for e in events if e["type"] == "transcript" and e["final"] for w in e["words"]]
    assert len(words) > 40

    data, pixels = _check_png(out / "talking_face.png")
    assert segments  # the clip has an A/H segment: its shading (orange at 15 % over white)
    shade = np.abs(pixels - np.array([255, 236, 219], dtype=np.float32)).sum(axis=2) < 12
    assert shade.mean() > 0.01

    page = (out / "talking_face.html").read_text(encoding="utf-8")
    label = "A/H" if final["label"] else "no A/H"
    decision = re.search(r'id="decision">([^<]*)<', page).group(1)
    assert decision.startswith(label + " (")
    assert f"{final['p']:.3f}" in decision and f"{final['threshold']:.3f}" in decision
    text = re.sub(r"<[^>]+>", " ", page)
    for word in words[:10] + words[-10:]:
        assert word in text
    for seg in segments:
        assert f"{seg['t0']:.2f}" in page and f"{seg['peak']:.3f}" in page
    assert cues  # the clip has cues (its fillers and hedges at least) ...
    for cue in cues:  # ... and each is on the page
        assert cue["cue"].replace("_", " ") in text
    # self-contained: the PNG is embedded, nothing is loaded from elsewhere
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page).group(1)
    assert base64.b64decode(embedded) == data
    assert not re.search(r"(src|href)=\"?(https?:)?//", page)
    assert "<script" not in page

    # analyze showed a progress bar over the media seconds on stderr
    assert "s of media" in run.stderr and "100%" in run.stderr


def test_report_command_rebuilds_from_saved_events(analyzed_call, tmp_path):
    out, _ = analyzed_call
    run = _cli("report", out / "talking_face.jsonl", "--out", tmp_path / "again")
    assert run.returncode == 0, run.stderr
    _check_png(tmp_path / "again" / "talking_face.png")
    a = (out / "talking_face.html").read_text(encoding="utf-8")
    b = (tmp_path / "again" / "talking_face.html").read_text(encoding="utf-8")
    decision = re.compile(r'id="decision">([^<]*)<')
    assert decision.search(a).group(1) == decision.search(b).group(1)

    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n")
    run = _cli("report", junk, "--out", tmp_path / "junk")
    assert run.returncode == 1 and "not JSON" in run.stderr


def test_json_mode_is_quiet_and_writes_only_what_was_asked(tmp_path, audio_only_wav):
    target = tmp_path / "events.jsonl"
    run = _cli("analyze", audio_only_wav, "--out", target, "--json")
    assert run.returncode == 0, run.stderr
    assert "s of media" not in run.stderr and "%|" not in run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert "report" not in summary["results"][0]
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]


def _session(extra):
    s = "x1"
    frames = [
        {"v": 1, "type": "frame", "session": s, "t": i / 10, "p": 0.2 + 0.006 * i, "lags": {}}
        for i in range(1, 100)
    ]
    return [
        {"v": 1, "type": "session.started", "session": s, "profile": "lite", "models": {}},
        *frames,
        *extra,
        {"v": 1, "type": "session.ended", "session": s, "duration": 10.0, "reason": "deleted"},
    ]


def test_render_report_shows_every_modality_and_escapes_text(tmp_path):
    cue = {"v": 1, "type": "cue", "session": "x1", "strength": 0.8}
    extra = [
        {**cue, "t0": 1.0, "t1": 1.4, "cue": "filler_sound", "modality": "text", "detail": "um"},
        {**cue, "t0": 2.0, "t1": 3.0, "cue": "long_pause", "modality": "voice"},
        {**cue, "t0": 4.0, "t1": 5.0, "cue": "frown", "modality": "face"},
        {**cue, "t0": 6.0, "t1": 7.0, "cue": "valence_inconsistency", "modality": "cross"},
        {
            "v": 1,
            "type": "transcript",
            "session": "x1",
            "t0": 1.0,
            "t1": 1.4,
            "text": "<script>alert(1)</script>",
            "words": [{"w": "<script>alert(1)</script>", "t0": 1.0, "t1": 1.4}],
            "final": True,
        },
        {
            "v": 1,
            "type": "video",
            "session": "x1",
            "t": 9.9,
            "p": 0.79,
            "label": 1,
            "threshold": 0.6,
            "method": "last",
            "evidence": "text",
            "final": True,
        },
        {"v": 1, "type": "segment", "session": "x1", "t0": 6.7, "t1": 9.9, "peak": 0.79},
    ]
    png, page = render_report(_session(extra), tmp_path / "r", "call")
    assert png == tmp_path / "r" / "call.png" and page == tmp_path / "r" / "call.html"
    _check_png(png)
    html = page.read_text(encoding="utf-8")
    assert 'id="decision">A/H (p = 0.790 ≥ threshold 0.600)<' in html
    for label in ("words", "voice", "face", "cross-modal"):
        assert f"<td>{label}</td>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_render_report_without_decision(tmp_path):
    events = [e for e in _session([]) if e["type"] != "frame"]
    _, page = render_report(events, tmp_path, "empty")
    text = page.read_text(encoding="utf-8")
    assert 'id="decision">no final decision<' in text
    # no curve, and the page says why (a late listener's file has only the replay)
    assert "no frame events in this file: a listener that joined after the call" in text
    _, page = render_report(_session([]), tmp_path, "with_frames")
    assert "no frame events" not in page.read_text(encoding="utf-8")
    running = {"v": 1, "type": "video", "session": "x1", "t": 3.0, "p": 0.3, "label": 0}
    _, page = render_report(
        _session([{**running, "threshold": 0.6, "final": False}]), tmp_path, "r"
    )
    assert "no A/H (p = 0.300 &lt; threshold 0.600), running" in page.read_text(encoding="utf-8")
    with pytest.raises(ValueError):
        render_report([], tmp_path, "nothing")


def test_dollar_signs_are_text_not_mathtext(tmp_path):
    words = [("it", 0.1), ("was", 0.3), ("$5", 0.5), ("or", 0.7), ("$10", 0.9), ("$x^", 1.1)]
    transcript = {
        "v": 1,
        "type": "transcript",
        "session": "x1",
        "t0": 0.1,
        "t1": 1.3,
        "text": " ".join(w for w, _ in words),
        "words": [{"w": w, "t0": t, "t1": t + 0.15} for w, t in words],
        "final": True,
    }
    cue = {"v": 1, "type": "cue", "session": "x1", "t0": 1.0, "t1": 1.4, "strength": 0.8}
    cue.update(cue="$x^", modality="text")
    # the stem is the title of the figure: "$x^$" is not a valid math expression
    png, page = render_report(_session([transcript, cue]), tmp_path, "call $x^$ 1")
    _check_png(png)
    text = re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8"))
    assert "it was $5 or $10 $x^" in text
    assert "call $x^$ 1" in text


def test_load_events_rejects_lines_that_are_not_objects(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"v": 1, "type": "session.started", "session": "x1"}\n\n[1,2]\n')
    with pytest.raises(ValueError, match=r"odd\.jsonl:3: not a JSON object"):
        load_events(path)


def test_report_command_refuses_malformed_events_in_one_line(tmp_path, capsys):
    from stream.cli import main

    lists = tmp_path / "lists.jsonl"
    lists.write_text("[1,2]\n")
    lacking = tmp_path / "lacking.jsonl"  # a cue without its times
    lacking.write_text('{"v": 1, "type": "cue", "session": "x1", "modality": "text"}\n')
    wrong = tmp_path / "wrong.jsonl"  # a transcript word that is not an object
    wrong.write_text(
        '{"v": 1, "type": "transcript", "session": "x1", "final": true, "words": [3]}\n'
    )
    assert main(["report", str(lists), str(lacking), str(wrong), "--out", str(tmp_path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"ahstream report: {lists}: {lists}:1: not a JSON object (a list)",
        f"ahstream report: {lacking}: an event lacks the field 't0'",
        f"ahstream report: {wrong}: an event has a malformed field: "
        "'int' object is not subscriptable",
    ]


def test_report_command_refuses_two_files_with_one_stem(tmp_path, capsys):
    """callA/events.jsonl and callB/events.jsonl would both write OUT/events.png and .html:
    refused (exit 2) before anything is written, as `analyze` refuses them."""
    from stream.cli import main

    paths = []
    for call in ("callA", "callB"):
        (tmp_path / call).mkdir()
        path = tmp_path / call / "events.jsonl"
        path.write_text('{"v": 1, "type": "session.started", "session": "x1"}\n')
        paths.append(str(path))
    out = tmp_path / "out"
    assert main(["report", *paths, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ahstream report: {paths[0]} and {paths[1]} would write the same")
    assert not out.exists()
