"""The BAH layout reader on a synthetic dataset generated here, malformed inputs, the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.bah_layout import (
    AUDIO_RATE,
    BahLayout,
    BahLayoutError,
    FeatureCache,
    parse_clock,
    read_annotations,
    read_frame_split,
    read_transcript,
)
from tests.bah_fixture import FPS, HIGH_HZ, BahFixture, make_bah_fixture


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> BahFixture:
    return make_bah_fixture(tmp_path_factory.mktemp("bah"))


@pytest.fixture(scope="module")
def layout(fx: BahFixture) -> BahLayout:
    return BahLayout(fx.root)


def test_splits_list_videos_labels_and_transcripts(fx: BahFixture, layout: BahLayout) -> None:
    for split in ("train", "val", "test"):
        videos = layout.split(split)
        truth = fx.by_split(split)
        assert [v.video_id for v in videos] == [t.video_id for t in truth]
        assert [v.label for v in videos] == [t.label for t in truth]
        assert [v.transcript_text for v in videos] == [t.transcript for t in truth]
        for v in videos:
            assert v.path.is_file() and v.faces_dir.is_dir() and v.transcript_path.is_file()
            assert v.participant == v.video_id.split("/")[1]
            assert v.question is not None
    assert set(layout.splits()) == {"train", "val", "test"}


def test_transcript_times_are_unrolled_and_null_end_resolved(
    fx: BahFixture, layout: BahLayout
) -> None:
    for truth in fx.videos:
        video = layout.video(truth.video_id)
        utts = layout.utterances(video)
        assert len(utts) == len(truth.utterances)
        for u, (start, end, text) in zip(utts, truth.utterances, strict=True):
            assert u.start == pytest.approx(start, abs=1e-6)
            assert u.text == text
            if end is None:
                assert u.end is None
            else:
                assert u.end == pytest.approx(end, abs=1e-6)
        starts = [u.start for u in utts]
        assert starts == sorted(starts)
        # With the duration, the null last end becomes the end of the video.
        assert layout.utterances(video, duration=fx.seconds)[-1].end == fx.seconds


def test_unrolling_rules_on_a_hand_written_transcript(tmp_path: Path) -> None:
    p = tmp_path / "t.yml"
    p.write_text(
        "chunks:\n"
        "- {text: a, timestamp: !!python/tuple [0.0, 10.0]}\n"
        "- {text: b, timestamp: !!python/tuple [10.5, 29.0]}\n"
        "- {text: c, timestamp: !!python/tuple [0.0, 5.0]}\n"  # new window, offset 29
        "- {text: d, timestamp: !!python/tuple [6.0, null]}\n"  # null end mid-file
        "- {text: e, timestamp: !!python/tuple [1.0, 2.0]}\n"  # new window, offset 35
        "- {text: f, timestamp: !!python/tuple [2.0, null]}\n"
    )
    utts = read_transcript(p, duration=40.0)
    got = [(u.text, u.start, u.end) for u in utts]
    assert got == [
        ("a", 0.0, 10.0),
        ("b", 10.5, 29.0),
        ("c", 29.0, 34.0),
        ("d", 35.0, 36.0),
        ("e", 36.0, 37.0),
        ("f", 37.0, 40.0),
    ]
    bare = tmp_path / "bare.yml"
    bare.write_text("- {text: x, timestamp: !!python/tuple [0.5, 1.0]}\n")
    assert [(u.start, u.end) for u in read_transcript(bare)] == [(0.5, 1.0)]


def test_faces_keep_raw_frame_indices(fx: BahFixture, layout: BahLayout) -> None:
    for truth in fx.videos:
        faces = layout.faces(layout.video(truth.video_id))
        expected = [n for n in range(truth.n_frames) if n not in truth.missing_frames]
        assert [f.frame for f in faces] == expected
        assert faces[-1].t == pytest.approx(expected[-1] / FPS)
        assert all(f.path.name == f"frame-{f.frame}.jpg" for f in faces)


def test_fps_and_audio_are_read_from_the_mp4(fx: BahFixture, layout: BahLayout) -> None:
    for truth in fx.videos[:2] + fx.videos[-2:]:
        video = layout.video(truth.video_id)
        assert layout.fps(video) == pytest.approx(24.0)
        audio = layout.audio(video)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) - fx.seconds * AUDIO_RATE) <= 2
        spectrum = np.abs(np.fft.rfft(audio))
        peak_hz = np.argmax(spectrum) * AUDIO_RATE / len(audio)
        assert peak_hz == pytest.approx(truth.tone_hz, abs=5.0)


def test_annotations_match_the_truth(fx: BahFixture, layout: BahLayout) -> None:
    for truth in fx.videos:
        ann = layout.annotation(layout.video(truth.video_id))
        assert ann is not None
        assert ann.global_ah == truth.label
        np.testing.assert_array_equal(ann.frame_labels(truth.n_frames), truth.frame_labels)
        assert [ann.frame_annotation[n] for n in range(truth.n_frames)] == list(truth.frame_labels)
        if truth.segment is None:
            assert ann.fr_detailed_ah == () and ann.time_detailed_ah == () and ann.all_cues == ()
        else:
            a, b = truth.segment
            assert ann.fr_detailed_ah == ((a, b),)
            ((t0, t1),) = ann.time_detailed_ah
            assert t0 == pytest.approx(a / FPS, abs=1e-3)
            assert t1 == pytest.approx((b + 1) / FPS, abs=1e-3)
            assert ann.all_cues == ("inconsistency face-voice",)


def test_frame_splits_match_faces_and_labels(fx: BahFixture, layout: BahLayout) -> None:
    labels = layout.frame_split("val")
    by_inner = {t.inner: t for t in fx.by_split("val")}
    assert {fl.video for fl in labels} == set(by_inner)
    for fl in labels:
        truth = by_inner[fl.video]
        assert fl.frame is not None and fl.frame not in truth.missing_frames
        assert fl.label == truth.frame_labels[fl.frame]


def test_planted_signal_face_brightness_disagrees_with_tone(
    fx: BahFixture, layout: BahLayout
) -> None:
    for truth in fx.videos:
        high = truth.tone_hz == HIGH_HZ
        for face in layout.faces(layout.video(truth.video_id))[::5]:
            bright = np.asarray(Image.open(face.path)).mean() > 110
            assert int(bright != high) == truth.frame_labels[face.frame]


def test_parse_clock() -> None:
    assert parse_clock("00:01:02.500") == pytest.approx(62.5)
    assert parse_clock("01:00:00.000") == 3600.0
    assert parse_clock(3.25) == 3.25
    with pytest.raises(BahLayoutError, match="HH:MM:SS"):
        parse_clock("1:2")


_ANN = "v.mp4:\n  global_ah: {g}\n  fr_detailed_ah: {fr}\n  time_detailed_ah: {td}\n"


@pytest.mark.parametrize(
    ("name", "text", "reader", "match"),
    [
        ("bad_ts.yml", "chunks:\n- {text: a, timestamp: [zero, 1.0]}\n", "transcript", "number"),
        (
            "short_ts.yml",
            "chunks:\n- {text: a, timestamp: !!python/tuple [1.0]}\n",
            "transcript",
            "pair",
        ),
        (
            "back.yml",
            "chunks:\n- {text: a, timestamp: !!python/tuple [2.0, 1.0]}\n",
            "transcript",
            "before start",
        ),
        ("no_ts.yml", "chunks:\n- {text: a}\n", "transcript", "timestamp"),
        (
            "unsafe.yml",
            "chunks: !!python/object/apply:os.system ['echo pwned']\n",
            "transcript",
            "invalid YAML",
        ),
        ("broken.yml", "chunks: [\n", "transcript", "invalid YAML"),
        ("ann_g.yaml", _ANN.format(g=2, fr="[]", td="[]"), "annotations", "global_ah"),
        ("ann_fr.yaml", _ANN.format(g=1, fr="[[9, 3]]", td="[]"), "annotations", "end before"),
        (
            "ann_td.yaml",
            _ANN.format(g=1, fr="[]", td="[['1.5', '00:00:02.000']]"),
            "annotations",
            "HH:MM:SS",
        ),
        ("ann_list.yaml", "- 1\n- 2\n", "annotations", "mapping"),
        ("frames.txt", "a/frame-1.jpg,1\na/frame-2.jpg,maybe\n", "frames", ":2:"),
    ],
)
def test_malformed_files_raise_with_the_file_name(
    tmp_path: Path, name: str, text: str, reader: str, match: str
) -> None:
    p = tmp_path / name
    p.write_text(text)
    read = {
        "transcript": read_transcript,
        "annotations": read_annotations,
        "frames": read_frame_split,
    }[reader]
    with pytest.raises(BahLayoutError, match=match) as err:
        read(p)
    assert name in str(err.value)


def test_malformed_layout_files_raise_with_the_file_name(tmp_path: Path) -> None:
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "val.txt").write_text("Videos/1/Visite_1/x.mp4,2,text\n")
    layout = BahLayout(tmp_path)
    with pytest.raises(BahLayoutError, match="val.txt:1"):
        layout.split("val")
    with pytest.raises(BahLayoutError, match="test.txt"):
        layout.split("test")
    with pytest.raises(BahLayoutError, match="video_annotation_transcript.yaml"):
        layout.annotations()
    video = layout.video("Videos/1/Visite_1/x.mp4")
    with pytest.raises(BahLayoutError, match="x.mp4"):
        layout.fps(video)
    with pytest.raises(BahLayoutError, match="x.mp4"):
        layout.faces(video, fps=24.0)
    video.path.parent.mkdir(parents=True)
    video.path.write_bytes(b"not an mp4")
    with pytest.raises(BahLayoutError, match="x.mp4"):
        layout.audio(video)
    with pytest.raises(BahLayoutError, match="nowhere"):
        BahLayout(tmp_path / "nowhere")


def test_feature_cache_computes_once_per_model_and_video(tmp_path: Path) -> None:
    calls: list[str] = []

    def compute(tag: str) -> dict[str, np.ndarray]:
        calls.append(tag)
        return {"emb": np.arange(6, dtype=np.float32).reshape(2, 3), "t": np.array([0.0, 0.5])}

    vid = "Videos/1/Visite_1/1_Question_1_Video.mp4"
    cache = FeatureCache(tmp_path / "cache")
    first = cache.get_or_compute("facebook/hubert-base-ls960", vid, lambda: compute("a"))
    again = FeatureCache(tmp_path / "cache").get_or_compute(
        "facebook/hubert-base-ls960", vid, lambda: compute("b")
    )
    assert calls == ["a"]
    for k in ("emb", "t"):
        np.testing.assert_array_equal(first[k], again[k])
        assert first[k].dtype == again[k].dtype
    cache.get_or_compute("MCG-NJU/videomae-base", vid, lambda: compute("c"))
    cache.get_or_compute("facebook/hubert-base-ls960", vid + "x", lambda: compute("d"))
    assert calls == ["a", "c", "d"]
    assert cache.get("facebook/hubert-base-ls960", "other") is None
    assert cache.path("m", vid).suffix == ".npz" and cache.path("m", vid).is_relative_to(
        tmp_path / "cache"
    )
