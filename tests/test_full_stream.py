"""The full profile's streaming path: `ahstream analyze --profile full` on a trained checkpoint.

The checkpoint is the one tests/test_full_pipeline.py trains on the XOR BAH fixture with tiny
encoders (`full_trained` in tests/conftest.py). The fixture's mp4 frames are drawn faces the
face mesh does not find, so the sessions take ``--face-crop centre`` (the frame is the face).
The pure-tone audio gives Whisper no words: text is masked live, face and voice carry it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch

import models.embedding_tcn as embedding_tcn
from models.bah_features import FeatureExtractor, TickConfig, clip_indices, newest_frame
from models.bah_layout import BahLayout
from models.embedding_tcn import load as load_tcn
from models.full_stream import CLIP_FPS, FullStream, load_full_profile
from models.profile import load_models
from models.train_full import FullProfileError, load_encoders
from stream.aggregate import VideoAggregator
from stream.batching import SharedRunners
from stream.cli import main
from tests.bah_fixture import BahFixture
from tests.conftest import ROOT, ServeProcess

torch.set_num_threads(1)


def _pair(fx: BahFixture) -> list[Any]:
    """The first positive and the first negative test video."""
    test = fx.by_split("test")
    return [next(v for v in test if v.label == 1), next(v for v in test if v.label == 0)]


@pytest.fixture(scope="module")
def analyzed(
    full_trained: dict[str, Any], bah_fx: BahFixture, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """`ahstream analyze POS NEG --profile full` in process, every TCN step recorded."""
    out = tmp_path_factory.mktemp("analyzed-full")
    steps: dict[int, list[tuple[np.ndarray, ...]]] = defaultdict(list)
    original = embedding_tcn.TCNStream.step

    def spy(self: Any, v: Any, a: Any, t: Any, present: Any) -> float:
        p = original(self, v, a, t, present)
        steps[id(self)].append((np.array(v), np.array(a), np.array(t), np.array(present), p))
        return p

    pair = _pair(bah_fx)
    mp = pytest.MonkeyPatch()
    mp.setattr(embedding_tcn.TCNStream, "step", spy)
    try:
        argv = ["analyze", *(str(bah_fx.root / v.video_id) for v in pair)]
        argv += ["--profile", "full", "--weights-dir", str(full_trained["out"])]
        argv += ["--face-crop", "centre", "--out-dir", str(out), "--json"]
        assert main(argv) == 0
    finally:
        mp.undo()
    events = [
        [json.loads(line) for line in (out / f"{v.stem}.jsonl").read_text().splitlines()]
        for v in pair
    ]
    assert len(steps) == 2  # one stream per session, in file order (dicts keep it)
    return {"pair": pair, "events": events, "steps": list(steps.values())}


def test_frames_publish_the_tcn_step_which_equals_the_offline_forward(
    analyzed: dict[str, Any], full_trained: dict[str, Any]
) -> None:
    tcn, extra = load_tcn(full_trained["out"] / "embedding_tcn.pt")
    schema = json.loads((ROOT / "clients" / "events.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    for events, steps in zip(analyzed["events"], analyzed["steps"], strict=True):
        assert [e["type"] for e in events if not validator.is_valid(e)] == []
        started = events[0]
        assert started["type"] == "session.started" and started["profile"] == "full"
        assert started["analysis_hz"] == full_trained["summary"]["ticks"]["hz"]
        frames = [e for e in events if e["type"] == "frame"]
        p = np.array([e["p"] for e in frames])
        assert len(frames) == len(steps) >= 6 and np.all((p >= 0) & (p <= 1))
        live = np.array([s[4] for s in steps])
        np.testing.assert_allclose(p, live, atol=1e-6)  # events round to 6 decimals
        # The live/offline guarantee: the steps equal the whole sequence's forward.
        x = [torch.from_numpy(np.stack([s[i] for s in steps])[None]) for i in range(4)]
        with torch.no_grad():
            offline = torch.sigmoid(tcn(*x))[0].numpy()
        np.testing.assert_allclose(live, offline, atol=1e-5)
        present = np.stack([s[3] for s in steps])
        assert present[:, 0].all() and present[1:, 1].all()  # every face clip, audio heard
        assert not present[:, 2].any()  # a pure tone: no words, text masked
        final = [e for e in events if e["type"] == "video" and e["final"]][-1]
        assert final["method"] == "max_ma1s"
        assert final["threshold"] == pytest.approx(extra["threshold"], abs=1e-6)
        agg = VideoAggregator(extra["threshold"], "max_ma1s", started["analysis_hz"])
        for q in live:
            agg.add(float(q))
        assert final["p"] == pytest.approx(agg.p, abs=1e-6) and final["label"] == agg.label


def test_live_ticks_see_what_training_saw_and_decide_like_offline(
    analyzed: dict[str, Any], full_trained: dict[str, Any], bah_fx: BahFixture
) -> None:
    """Live face clips and audio windows embed as the BAH features of the same ticks, and
    the positive video is A/H and the negative not, live as offline."""
    summary = full_trained["summary"]
    enc = load_encoders(*(summary["encoders"][m] for m in ("video", "audio", "text")))
    layout = BahLayout(bah_fx.root)
    videos = {v.video_id: v for v in layout.split("test")}
    ex = FeatureExtractor(layout, enc, None, TickConfig(**summary["ticks"]))
    tcn, extra = load_tcn(full_trained["out"] / "embedding_tcn.pt")
    labels = {"live": [], "offline": []}
    for fv, events, steps in zip(
        analyzed["pair"], analyzed["events"], analyzed["steps"], strict=True
    ):
        f = ex.features(videos[fv.video_id])
        n = min(len(f.times), len(steps))
        for i, m in ((0, "video"), (1, "audio")):
            off = getattr(f, m)[:n]
            on = np.stack([s[i] for s in steps[:n]])
            both = (f.present[:n, i] > 0) & np.array([s[3][i] > 0 for s in steps[:n]])
            assert both.sum() >= n - 1
            cos = np.sum(off * on, 1) / np.linalg.norm(off, axis=1) / np.linalg.norm(on, axis=1)
            assert np.all(cos[both] > 0.99), (m, cos)
        x = [torch.from_numpy(a[None]) for a in (f.video, f.audio, f.text, f.present)]
        with torch.no_grad():
            p_off = torch.sigmoid(tcn(*x))[0].numpy()
        agg = VideoAggregator(extra["threshold"], "max_ma1s", float(summary["ticks"]["hz"]))
        for q in p_off:
            agg.add(float(q))
        labels["offline"].append(agg.label)
        final = [e for e in events if e["type"] == "video" and e["final"]][-1]
        labels["live"].append(final["label"])
    assert [v.label for v in analyzed["pair"]] == [1, 0]
    assert labels["offline"] == [1, 0]  # the trained model separates them offline ...
    assert labels["live"] == [1, 0]  # ... and so does the streaming path


def test_analyze_full_crops_faces_with_the_mesh_and_encodes_the_transcript(
    full_trained: dict[str, Any], speech: tuple[np.ndarray, str], tmp_path: Path
) -> None:
    """A real face and read speech: the face mesh finds the face in every clip (the default
    crops), and the committed words reach the text encoder once Whisper has them."""
    from tests.mediafiles import astronaut_frames, write_media

    audio, _ = speech
    mp4 = write_media(tmp_path / "talk.mp4", audio[: 16000 * 6], astronaut_frames(91), fps=15)
    steps: list[np.ndarray] = []
    original = embedding_tcn.TCNStream.step

    def spy(self: Any, v: Any, a: Any, t: Any, present: Any) -> float:
        steps.append(np.array(present))
        return original(self, v, a, t, present)

    mp = pytest.MonkeyPatch()
    mp.setattr(embedding_tcn.TCNStream, "step", spy)
    try:
        argv = ["analyze", str(mp4), "--profile", "full", "--weights-dir"]
        assert main([*argv, str(full_trained["out"]), "--out", str(tmp_path / "e.jsonl")]) == 0
    finally:
        mp.undo()
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert any(e["type"] == "transcript" and e["final"] for e in events)
    present = np.stack(steps)
    assert len(present) >= 12 and present[:, 0].all() and present[:, 1].all()
    text = present[:, 2]
    assert text[0] == 0 and text[-1] == 1 and np.all(np.diff(text) >= 0)  # once said, kept
    assert all(0 <= e["p"] <= 1 for e in events if e["type"] == "frame")


def test_a_ticks_clip_ends_with_the_newest_frame_it_has_seen(
    full_trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 10 Hz (which does not divide CLIP_FPS) the frame a tick just saw is the newest
    crop of its clip, and the clip is training's: `clip_indices` ending at `newest_frame`."""
    profile = load_full_profile(full_trained["out"], face_crop="centre")
    stream = FullStream(profile)
    video = profile.encoders.video
    clips: list[np.ndarray] = []
    encode = video.encode

    def spy(batch: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        clips.append(np.asarray(batch[0]))
        return encode(batch, *args, **kwargs)

    monkeypatch.setattr(video, "encode", spy)
    size = stream.crop_size
    shown: dict[int, int] = {}  # frame position -> grey level of the frame there
    for k in range(1, 16):
        t = k / 10
        # Frame k is flat grey level k; a frame at t sits at position newest_frame(t).
        assert stream.add_frame(t, np.full((size, size, 3), k, np.uint8), None)
        shown[newest_frame(t, CLIP_FPS)] = k
        tick = stream.step(t, None, t, [])
        assert tick.present[0] == 1.0
        idx = clip_indices(newest_frame(t, CLIP_FPS), stream.num_frames, list(shown))
        assert idx is not None
        assert [int(c[0, 0, 0]) for c in clips[-1]] == [shown[n] for n in idx]
        assert int(clips[-1][-1, 0, 0, 0]) == k


def test_the_full_profile_refuses_to_run_without_trained_weights(
    tmp_path: Path, full_trained: dict[str, Any], bah_fx: BahFixture
) -> None:
    with pytest.raises(FullProfileError, match="--weights-dir"):
        load_models("full", asr=False, face=False)
    with pytest.raises(FullProfileError, match="ahstream train --profile full"):
        load_models("full", weights_dir=str(tmp_path), asr=False, face=False)
    mp4 = str(bah_fx.root / bah_fx.by_split("test")[0].video_id)
    with pytest.raises(SystemExit, match="needs trained weights"):
        main(["analyze", mp4, "--profile", "full", "--out", str(tmp_path / "e.jsonl")])
    ckpt = str(full_trained["out"])
    with pytest.raises(SystemExit, match="--analysis-hz 10 differs from the 2 Hz"):
        main(["analyze", mp4, "--profile", "full", "--weights-dir", ckpt, "--analysis-hz", "10"])
    assert not (tmp_path / "e.jsonl").exists()


def test_the_full_profile_encoders_are_batched_across_sessions(
    full_trained: dict[str, Any],
) -> None:
    models = load_models("full", weights_dir=str(full_trained["out"]), asr=False, face=False)
    assert models.analysis_hz == full_trained["summary"]["ticks"]["hz"]
    clip = np.full((3, 40, 40, 3), 120, np.uint8)
    alone = models.video_encoder.encode([clip])
    shared = SharedRunners(models, max_batch=4, max_wait_ms=1.0)
    try:
        assert set(shared.batchers) == {"video_encoder", "audio_encoder", "text_encoder"}
        np.testing.assert_allclose(models.full.encoders.video.encode([clip]), alone, atol=1e-6)
    finally:
        shared.close()


def test_serve_full_profile_live_over_whip(
    full_trained: dict[str, Any], bah_fx: BahFixture
) -> None:
    """`ahstream serve --profile full`: the positive and the negative fixture videos published
    over WHIP in real time get frame events from the trained TCN at its rate, and decisions
    that tell them apart."""
    import asyncio

    from clients.send import send_file

    srv = ServeProcess(
        "--profile", "full", "--weights-dir", str(full_trained["out"]), "--face-crop", "centre"
    )
    try:
        runs = [asyncio.run(send_file(bah_fx.root / v.video_id, srv.url)) for v in _pair(bah_fx)]
    finally:
        srv.stop()
    labels = []
    for events in runs:
        started = next(e for e in events if e["type"] == "session.started")
        assert started["profile"] == "full" and started["analysis_hz"] == 2.0
        frames = [e for e in events if e["type"] == "frame"]
        assert len(frames) >= 5 and all(0.0 <= e["p"] <= 1.0 for e in frames)
        assert sum(e["modalities"]["video"] for e in frames) >= 4
        final = next(e for e in events if e["type"] == "session.ended")["decision"]
        assert final["method"] == "max_ma1s"
        labels.append(final["label"])
    assert labels == [1, 0], runs
