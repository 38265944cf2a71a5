"""The full profile's BAH pipeline end to end: per-tick features, training, evaluation, score.

A synthetic dataset in the distributed BAH layout (`tests.bah_fixture`) with a planted
face-vs-voice signal and tiny random encoders of the real classes (`tests.tiny_models`)
go through the CLI in process: `ahstream train --profile full`, `ahstream evaluate
--bah-root`, `ahstream score`.

The fixture is its XOR variant (``xor_chunk_s``): the tone is random per 0.5 s chunk and
the face is the tone XOR the label, so neither the face sequence nor the voice alone says
anything about the labels. (In the plain variant the face alone does: a positive's face
changes class, a negative's never does; a face-only model scores 1.0 there.) Ticks hear
0.5 s of audio to match the chunks. Training with one sensor masked must then fail, which
is what shows the models learn the cross-modal conflict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from models.bah_features import (
    FeatureExtractor,
    TickConfig,
    clip_indices,
    frame_ticks,
    tick_times,
)
from models.bah_layout import AUDIO_RATE, BahLayout, FeatureCache
from models.conflict_head import ConflictAwareAH, load_checkpoint, save_checkpoint
from models.embedding_tcn import ONNX_INPUTS, TCNStream
from models.embedding_tcn import export_onnx as export_tcn_onnx
from models.embedding_tcn import load as load_tcn
from models.full_stream import load_full_profile
from models.runner import OrtRunner
from models.train_full import (
    FullProfileError,
    FullTrainConfig,
    evaluate_full,
    load_encoders,
    train_full,
    weights_encoders,
)
from stream.cli import main
from tests.bah_fixture import BahFixture, make_bah_fixture
from tests.full_training import COUNTS
from tests.full_training import train_argv as _train_argv

torch.set_num_threads(1)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any] | None]:
    """`ahstream ARGV` in process: exit code and the JSON of its last stdout line."""
    capsys.readouterr()
    code = main(list(argv))
    lines = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and lines else None)


def test_train_learns_the_planted_signal(full_trained: dict[str, Any], bah_fx: BahFixture) -> None:
    s = full_trained["summary"]
    assert s["val"]["video"]["n"] == len(bah_fx.by_split("val"))
    assert s["val"]["video"]["macro_f1"] >= 0.9
    frame = s["val"]["frame"]
    n_frame_lines = len((bah_fx.root / "split-frames" / "val.txt").read_text().split())
    assert frame["n"] == n_frame_lines  # exactly the frames of the frame split
    assert frame["macro_f1"] >= 0.9 and 0.75 <= frame["ap"] <= 1.0
    assert 0.0 <= s["video_level"]["alpha"] <= 1.0
    assert {p.name for p in full_trained["out"].iterdir()} >= {
        "full_profile.json",
        "conflict_head.pt",
        "embedding_tcn.pt",
    }


def test_trained_tcn_streams_as_it_was_evaluated(
    full_trained: dict[str, Any], bah_fx: BahFixture, tiny_encoders: dict[str, Path], tmp_path: Path
) -> None:
    out = full_trained["out"]
    enc = load_encoders(*(str(tiny_encoders[k]) for k in ("video", "audio", "text")))
    layout = BahLayout(bah_fx.root)
    ticks = TickConfig(**full_trained["summary"]["ticks"])
    ex = FeatureExtractor(layout, enc, FeatureCache(out / "feature-cache"), ticks)
    video = next(v for v in layout.split("val") if v.label == 1)
    f = ex.features(video)
    assert ex.stats.computed == 0  # the training run cached it
    tcn, extra = load_tcn(out / "embedding_tcn.pt")
    x = {
        "video": f.video[None],
        "audio": f.audio[None],
        "text": f.text[None],
        "present": f.present[None],
    }
    with torch.no_grad():
        offline = torch.sigmoid(tcn(*(torch.from_numpy(x[n]) for n in ONNX_INPUTS)))[0].numpy()
    stream = TCNStream(tcn)
    live = [
        stream.step(f.video[k], f.audio[k], f.text[k], f.present[k]) for k in range(len(f.times))
    ]
    np.testing.assert_allclose(live, offline, atol=1e-5)
    # The A/H ticks of this positive video score above the tuned threshold, the others below.
    lab = f.tick_labels()
    assert lab is not None
    pred = np.asarray(live) >= extra["threshold"]
    assert np.mean(pred == (lab >= 0.5)) >= 0.8
    # ONNX export of the trained model (normalisation included) on this sequence.
    runner = OrtRunner(export_tcn_onnx(tcn, tmp_path / "tcn.onnx"))
    logit = runner.run(x)["logit"][0]
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), offline, atol=1e-4)


def test_evaluate_val_and_test_and_score_the_submission(
    full_trained: dict[str, Any], bah_fx: BahFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    out = full_trained["out"]
    for split in ("val", "test"):
        csv = out / f"{split}.csv"
        code, res = _run(
            capsys,
            "evaluate",
            "--bah-root",
            str(bah_fx.root),
            "--split",
            split,
            "--weights-dir",
            str(out),
            "--submission",
            str(csv),
            "--json",
        )
        assert code == 0 and res is not None
        assert res["n"] == len(bah_fx.by_split(split))
        # Held-out test videos too: thresholds come from val only.
        assert res["macro_f1"] >= 0.9, (split, res)
        assert res["frame"]["macro_f1"] >= 0.9 and 0.75 <= res["frame"]["ap"] <= 1.0
        if split == "val":  # the same weights and features give what training reported
            assert res["macro_f1"] == full_trained["summary"]["val"]["video"]["macro_f1"]
            assert res["frame"] == pytest.approx(full_trained["summary"]["val"]["frame"])
        lines = csv.read_text().splitlines()
        assert [ln.split(",")[0] for ln in lines] == [v.video_id for v in bah_fx.by_split(split)]
        code, scored = _run(
            capsys,
            "score",
            "--predictions",
            str(csv),
            "--split-file",
            str(bah_fx.root / "split" / f"{split}.txt"),
            "--json",
        )
        assert code == 0 and scored is not None
        assert scored["macro_f1"] == pytest.approx(res["macro_f1"])
        assert scored["ap"] == pytest.approx(res["ap"], abs=1e-9)


def test_the_served_video_decision_is_tuned_on_val_and_is_what_evaluate_reports(
    full_trained: dict[str, Any],
    bah_fx: BahFixture,
    tiny_encoders: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The service decides a video by the TCN's max_ma1s aggregate against a threshold tuned
    on the val videos' aggregates and stored with the TCN; evaluate reports that decision,
    video by video as the live aggregator makes it. A checkpoint without it decides with
    the frame-level threshold, as before, and says so."""
    import logging

    from models.metrics import best_threshold, evaluate_scores
    from stream.aggregate import VideoAggregator

    out, summary = full_trained["out"], full_trained["summary"]
    tcn, extra = load_tcn(out / "embedding_tcn.pt")
    assert extra["video_method"] == "max_ma1s"
    served = {"source": "tcn", "method": "max_ma1s", "threshold": extra["video_threshold"]}
    assert summary["decision"] == served
    profile = load_full_profile(out)
    assert (profile.threshold, profile.frame_threshold, profile.method) == (
        extra["video_threshold"], extra["threshold"], "max_ma1s")  # fmt: skip
    assert profile.describe()["decision"] == served
    # A session decides the video by the served threshold; its segments follow the frame p,
    # so they open and close around the frame-level one.
    from models.profile import load_models
    from stream.publisher import Publisher
    from stream.session import Session

    models = load_models("full", weights_dir=str(out), asr=False, face=False)
    session = Session("s", models, Publisher("s"), analysis_hz=float(summary["ticks"]["hz"]))
    assert session.aggregator.threshold == extra["video_threshold"]
    segments = session.segments
    assert (segments.enter + segments.exit) / 2 == pytest.approx(extra["threshold"])

    hz = float(summary["ticks"]["hz"])
    enc = load_encoders(*(str(tiny_encoders[k]) for k in ("video", "audio", "text")))
    layout = BahLayout(bah_fx.root)
    ex = FeatureExtractor(
        layout, enc, FeatureCache(out / "feature-cache"), TickConfig(**summary["ticks"])
    )
    for split in ("val", "test"):
        labels, p_live = [], []
        for video in layout.split(split):
            f = ex.features(video)
            stream = TCNStream(tcn)
            agg = VideoAggregator(extra["video_threshold"], "max_ma1s", hz)
            for k in range(len(f.times)):
                agg.add(stream.step(f.video[k], f.audio[k], f.text[k], f.present[k]))
            labels.append(video.label)
            p_live.append(agg.p)
        code, res = _run(capsys, "evaluate", "--bah-root", str(bah_fx.root), "--split", split,
                         "--weights-dir", str(out), "--json")  # fmt: skip
        assert code == 0 and res is not None
        expected = evaluate_scores(labels, p_live, extra["video_threshold"])
        assert res["decision"] == pytest.approx({**expected, **served}, abs=1e-6)
        if split == "val":  # tuned there, on these aggregates
            assert best_threshold(labels, p_live)[0] == pytest.approx(extra["video_threshold"])
            assert summary["val"]["decision"] == pytest.approx(expected, abs=1e-6)

    old = tmp_path / "old"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("feature-cache"))
    legacy = {k: v for k, v in extra.items() if k not in ("video_threshold", "video_method")}
    tcn.save(old / "embedding_tcn.pt", **legacy)
    with caplog.at_level(logging.WARNING, logger="ahstream"):
        assert load_full_profile(old).threshold == extra["threshold"]
        res = evaluate_full(bah_fx.root, "val", old)
    assert res["decision"]["threshold"] == extra["threshold"]
    warned = [
        r.getMessage() for r in caplog.records if "no video-level threshold" in r.getMessage()
    ]
    assert len(warned) == 2 and "frame-level threshold" in warned[0]


def _late_transcript(path: Path) -> None:
    """Rewrite a fixture transcript so that the first words start at 1.0 s (committed 1.4 s)."""
    chunks = [
        {"text": " I mean", "timestamp": (1.0, 1.4)},
        {"text": " maybe not", "timestamp": (1.5, None)},
    ]
    doc = {"text": " I mean maybe not", "chunks": chunks}
    path.write_text(yaml.dump(doc, Dumper=yaml.Dumper, sort_keys=False), encoding="utf-8")


def test_the_text_head_counts_only_on_ticks_with_text(
    full_trained: dict[str, Any],
    bah_fx: BahFixture,
    tiny_encoders: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Evaluation blends the text head in on ticks with text only: before the first words a
    tick's p is the full model's alone (val videos whose words start late; alpha 0.5)."""
    root = Path(shutil.copytree(bah_fx.root, tmp_path / "bah"))
    layout = BahLayout(root)
    videos = layout.split("val")
    for video in videos:
        _late_transcript(video.transcript_path)
    wd = tmp_path / "weights"
    wd.mkdir()
    for name in ("full_profile.json", "embedding_tcn.pt"):
        shutil.copy(full_trained["out"] / name, wd / name)
    head, extra = load_checkpoint(full_trained["out"] / "conflict_head.pt")
    alpha, stats = 0.5, extra["stats"]
    save_checkpoint(head, wd / "conflict_head.pt", **{**extra, "alpha": alpha})
    enc = load_encoders(*(str(tiny_encoders[k]) for k in ("video", "audio", "text")))
    cache, csv = FeatureCache(tmp_path / "cache"), tmp_path / "val.csv"
    evaluate_full(root, "val", wd, encoders=enc, cache_dir=cache.cache_dir, submission=csv)
    p1 = np.array([float(line.split(",")[2]) for line in csv.read_text().splitlines()])

    ex = FeatureExtractor(layout, enc, cache, TickConfig(**full_trained["summary"]["ticks"]))
    masked, unmasked, without_text = [], [], 0
    for video in videos:
        f = ex.features(video)
        x = [
            torch.from_numpy(
                (getattr(f, m) - np.asarray(stats[m]["mean"], np.float32))
                / np.asarray(stats[m]["std"], np.float32)
            )
            for m in ("video", "audio", "text")
        ]
        with torch.no_grad():
            full, text = head(*x, torch.from_numpy(f.present > 0.5))
        p_full, p_text = torch.sigmoid(full).double().numpy(), torch.sigmoid(text).double().numpy()
        has_text = f.present[:, 2] > 0.5
        without_text += int((~has_text).sum())
        both = alpha * p_text + (1 - alpha) * p_full
        masked.append(np.where(has_text, both, p_full).mean())
        unmasked.append(both.mean())
    assert without_text >= 2 * len(videos)  # the ticks at 0.5 s and 1.0 s of each video
    np.testing.assert_allclose(p1, masked, atol=1e-6)
    assert np.abs(p1 - np.array(unmasked)).max() > 1e-4  # the rule is what is tested


def test_a_profile_without_text_never_trains_its_text_head(
    full_trained: dict[str, Any],
    bah_fx: BahFixture,
    tiny_encoders: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Training tells the text loss which rows have text: none here, so it is 0 throughout."""
    text_losses: list[float] = []
    loss = ConflictAwareAH.loss

    def spy(self: ConflictAwareAH, *args: Any, **kwargs: Any) -> Any:
        out = loss(self, *args, **kwargs)
        text_losses.append(float(out.text.detach()))
        return out

    monkeypatch.setattr(ConflictAwareAH, "loss", spy)
    enc = load_encoders(*(str(tiny_encoders[k]) for k in ("video", "audio", "text")))
    cfg = FullTrainConfig(
        epochs=1, ticks=TickConfig(audio_window_s=0.5), modalities=("video", "audio")
    )
    cache = full_trained["out"] / "feature-cache"
    train_full(bah_fx.root, tmp_path / "w", encoders=enc, config=cfg, cache_dir=cache)
    assert text_losses and all(v == 0.0 for v in text_losses)


def test_speech_normalisation_is_recorded_and_enforced(
    full_trained: dict[str, Any], tiny_encoders: dict[str, Path], tmp_path: Path
) -> None:
    """Serving normalises audio as training did: the weights record it, loading uses it,
    and encoders that do otherwise are refused."""
    meta = full_trained["summary"]
    assert meta["audio_normalize"] is True  # the tiny HuBERT's preprocessor config says so
    wd = tmp_path / "weights"
    wd.mkdir()
    for name in ("conflict_head.pt", "embedding_tcn.pt"):
        shutil.copy(full_trained["out"] / name, wd / name)
    # Weights trained without normalising (the model files here say otherwise).
    (wd / "full_profile.json").write_text(json.dumps({**meta, "audio_normalize": False}))
    assert load_full_profile(wd, face_crop="centre").encoders.audio.normalize is False
    enc = load_encoders(*(str(tiny_encoders[k]) for k in ("video", "audio", "text")))
    assert enc.audio.normalize is True
    with pytest.raises(FullProfileError, match="normalize=True.*trained with normalize=False"):
        load_full_profile(wd, encoders=enc)
    assert weights_encoders(meta, enc) is enc
    # Weights written before it was recorded: nothing to check against.
    old = {k: v for k, v in meta.items() if k != "audio_normalize"}
    assert weights_encoders(old, enc) is enc


@pytest.mark.parametrize(
    ("kept", "video_level"),
    [
        (("video", "text"), "windows"),
        (("audio", "text"), "windows"),
        # Pooling each modality over the video first cancels conflicts of opposite sign.
        (("video", "audio", "text"), "pooled"),
    ],
)
def test_one_sensor_alone_cannot_learn_it(
    full_trained: dict[str, Any],
    bah_fx: BahFixture,
    tiny_encoders: dict[str, Path],
    tmp_path: Path,
    kept: tuple[str, ...],
    video_level: str,
) -> None:
    enc = load_encoders(*(str(tiny_encoders[k]) for k in ("video", "audio", "text")))
    cfg = FullTrainConfig(
        ticks=TickConfig(audio_window_s=0.5), modalities=kept, video_level=video_level
    )
    cache = full_trained["out"] / "feature-cache"
    res = train_full(bah_fx.root, tmp_path / "w", encoders=enc, config=cfg, cache_dir=cache)
    assert res["features"]["computed"] == 0
    test = evaluate_full(bah_fx.root, "test", tmp_path / "w", encoders=enc, cache_dir=cache)
    full = full_trained["summary"]["val"]
    # Measured (val, test): face only 0.73, 0.5; voice only 0.56, 0.33; pooled 0.75, 0.62;
    # all sensors, per-tick windows: 1.0, 1.0.
    assert res["val"]["video"]["macro_f1"] <= 0.8 and test["macro_f1"] <= 0.7
    if video_level == "windows":
        assert res["val"]["frame"]["ap"] < full["frame"]["ap"] - 0.1


def test_second_run_reuses_the_feature_cache(
    full_trained: dict[str, Any],
    bah_fx: BahFixture,
    tiny_encoders: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    cache = full_trained["out"] / "feature-cache"
    files = sorted(cache.rglob("*.npz"))
    # meta + video + audio + text for each train and val video (test ones came from evaluate).
    assert len(files) >= 4 * (COUNTS["train"] + COUNTS["val"])
    stamps = {p: p.stat().st_mtime_ns for p in files}
    argv = _train_argv(bah_fx, tiny_encoders, tmp_path / "again")
    argv += ["--cache-dir", str(cache)]
    code, res = _run(capsys, *argv)
    assert code == 0 and res is not None
    assert res["features"] == {"computed": 0, "cached": 4 * (COUNTS["train"] + COUNTS["val"])}
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    # Seeded: the same data and seed give the same model and metrics.
    assert res["val"] == full_trained["summary"]["val"]


def test_clear_errors(
    full_trained: dict[str, Any],
    bah_fx: BahFixture,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["train", "--profile", "full", "--bah-root", str(tmp_path / "nope"),
                 "--out-dir", str(tmp_path / "w")])  # fmt: skip
    assert code == 2 and "not a BAH dataset root" in capsys.readouterr().err
    (tmp_path / "root" / "split").mkdir(parents=True)
    (tmp_path / "root" / "split" / "train.txt").write_text(
        (bah_fx.root / "split" / "train.txt").read_text()
    )
    code = main(["train", "--profile", "full", "--bah-root", str(tmp_path / "root"),
                 "--out-dir", str(tmp_path / "w")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "split 'val'" in err and "not found" in err
    code = main(["evaluate", "--bah-root", str(bah_fx.root), "--split", "test",
                 "--weights-dir", str(tmp_path / "empty")])  # fmt: skip
    assert code == 2 and "weights directory not found" in capsys.readouterr().err
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "full_profile.json").write_text("{}")
    code = main(["evaluate", "--bah-root", str(bah_fx.root), "--weights-dir",
                 str(tmp_path / "partial")])  # fmt: skip
    assert code == 2 and "missing conflict_head.pt, embedding_tcn.pt" in capsys.readouterr().err
    # The lite commands still ask for their own inputs.
    assert main(["evaluate"]) == 2 and "--split-file" in capsys.readouterr().err
    assert main(["train"]) == 2 and "--split-dir" in capsys.readouterr().err


def test_train_and_evaluate_refuse_an_unusable_device_in_one_line(
    full_trained: dict[str, Any],
    bah_fx: BahFixture,
    tiny_encoders: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--device as serve/analyze take it: cuda without a GPU and unknown names are exit
    code 2 and a message, never a traceback; a device failure while running is one line."""
    import models.train_full

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train = _train_argv(bah_fx, tiny_encoders, tmp_path / "w")[:-1]  # (without --json)
    evaluate = ["evaluate", "--bah-root", str(bah_fx.root), "--weights-dir",
                str(full_trained["out"])]  # fmt: skip
    for argv in (train, evaluate):
        capsys.readouterr()
        assert main([*argv, "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"ahstream {argv[0]}: --device: device 'cuda': torch sees no CUDA GPU here "
            "(use --device cpu)"
        )
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--device", "gpu"])
        assert exit_info.value.code == 2
        assert "invalid choice: 'gpu'" in capsys.readouterr().err

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("CUDA error: no kernel image is available\nmore detail")

    monkeypatch.setattr(models.train_full, "train_full", fail)
    capsys.readouterr()
    assert main([*train, "--device", "auto"]) == 1
    assert capsys.readouterr().err == "ahstream train: CUDA error: no kernel image is available\n"


def test_a_weights_dir_from_another_machine_caches_its_features_beside_itself(
    full_trained: dict[str, Any],
    bah_fx: BahFixture,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`evaluate` caches features where training did: a weights directory copied from
    another machine names a path of that machine (it created it, or failed with a
    traceback where it could not). It uses its own `feature-cache` then; a --cache-dir
    that cannot be made is one line."""
    moved = tmp_path / "moved"
    shutil.copytree(full_trained["out"], moved, ignore=shutil.ignore_patterns("feature-cache"))
    meta = json.loads((moved / "full_profile.json").read_text())
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    meta["feature_cache"] = str(blocker / "elsewhere" / "cache")  # unusable here
    (moved / "full_profile.json").write_text(json.dumps(meta))
    evaluate = ["evaluate", "--bah-root", str(bah_fx.root), "--weights-dir", str(moved), "--json"]
    assert main(evaluate) == 0
    assert (moved / "feature-cache").is_dir() and not (blocker.parent / "elsewhere").exists()
    capsys.readouterr()
    assert main([*evaluate, "--cache-dir", str(blocker / "x")]) == 1
    assert capsys.readouterr().err.endswith(": Not a directory\n")


def test_an_audio_window_the_engines_cannot_take_is_refused(
    bah_fx: BahFixture,
    tiny_encoders: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The TensorRT engines take up to 30 s of audio: a longer --audio-window trained fine
    and then failed every tick under TensorRT."""
    argv = _train_argv(bah_fx, tiny_encoders, tmp_path / "w")
    i = argv.index("--audio-window")
    for value in ("40", "0"):
        argv[i + 1] = value
        assert main(argv) == 2
        assert f"--audio-window must be between 0.025 and 30 (got {value})" in (
            capsys.readouterr().err
        )
    assert not (tmp_path / "w").exists()


# --- features: what each tick sees ----------------------------------------------------------


def test_tick_timing_helpers() -> None:
    np.testing.assert_allclose(tick_times(3.0, 2.0), [0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    np.testing.assert_allclose(tick_times(1.2, 2.0), [0.5, 1.0, 1.2])
    # Frame n (at n/24 s) goes to the first tick at or after it.
    ft = frame_ticks(30, 24.0, tick_times(1.2, 2.0))
    assert list(ft[:13]) == [0] * 13 and list(ft[13:25]) == [1] * 12 and list(ft[25:]) == [2] * 5
    # Gaps: a missing position takes the nearest earlier crop in the window, else the first.
    assert clip_indices(9, 4, [0, 1, 7, 9]) == [7, 7, 7, 9]
    assert clip_indices(9, 4, [0, 1, 8]) == [8, 8, 8, 8]
    assert clip_indices(9, 4, [0, 1, 5]) is None  # no face in the window: masked


def test_features_follow_the_media_timeline(tiny_encoders: dict[str, Path], tmp_path: Path) -> None:
    fx = make_bah_fixture(tmp_path / "bah", {"test": 1}, seconds=3.0, seed=1)
    enc = load_encoders(*(str(tiny_encoders[k]) for k in ("video", "audio", "text")))
    layout = BahLayout(fx.root)
    video = layout.split("test")[0]
    truth = fx.by_split("test")[0]
    # Remove the crops of frames 10..29: the tick at 1.0 s (frames 17..24) sees no face.
    for n in range(10, 30):
        (video.faces_dir / f"frame-{n}.jpg").unlink(missing_ok=True)
    ticks = TickConfig(hz=4.0, audio_window_s=0.5)
    ex = FeatureExtractor(layout, enc, FeatureCache(tmp_path / "cache"), ticks)
    f = ex.features(video)
    assert f.n_frames == truth.n_frames and f.fps == 24.0
    np.testing.assert_allclose(f.times[:4], [0.25, 0.5, 0.75, 1.0])
    assert f.present[3, 0] == 0.0 and f.present[1, 0] == 1.0
    assert not f.video[3].any()
    # Text: the chunks ended by each tick; none at 0.25 s.
    assert f.present[0, 2] == 0.0
    said = " ".join(u[2] for u in truth.utterances if u[1] is not None and u[1] <= 1.0)
    np.testing.assert_allclose(f.text[3], enc.text.encode([said])[0], atol=1e-5)
    # Audio: the last 0.5 s at 16 kHz, pooled over real samples only.
    audio = layout.audio(video)
    window = audio[int(round(0.5 * AUDIO_RATE)) : int(round(1.0 * AUDIO_RATE))]
    np.testing.assert_allclose(f.audio[3], enc.audio.encode([window])[0], atol=1e-5)
    # Video: the 8 raw positions ending at frame 12 (the tick at 0.5 s), gaps filled.
    have = sorted(int(p.stem.split("-")[1]) for p in video.faces_dir.glob("frame-*.jpg"))
    idx = clip_indices(12, enc.video.num_frames, have)
    assert idx is not None and idx[-3:] == [9, 9, 9]
    from PIL import Image

    clip = np.stack([np.asarray(Image.open(video.faces_dir / f"frame-{n}.jpg")) for n in idx])
    np.testing.assert_allclose(f.video[1], enc.video.encode([clip])[0], atol=1e-5)
    # Labels of each tick: the A/H fraction of the frames it is the first to see.
    lab = f.tick_labels()
    assert lab is not None and lab.shape == f.times.shape
    exp = [truth.frame_labels[f.frame_ticks() == k].mean() for k in range(len(f.times))]
    np.testing.assert_allclose(lab, exp, atol=1e-6)
    # The second extractor over the same cache computes nothing.
    again = FeatureExtractor(layout, enc, FeatureCache(tmp_path / "cache"), ticks)
    g = again.features(video)
    assert again.stats.as_dict() == {"computed": 0, "cached": 4}
    assert np.array_equal(g.video, f.video) and np.array_equal(g.present, f.present)
    # A changed face folder is a new entry, not a stale one: frame 9 gone, tick 0.5 s differs.
    (video.faces_dir / "frame-9.jpg").unlink()
    third = FeatureExtractor(layout, enc, FeatureCache(tmp_path / "cache"), ticks)
    h = third.features(video)
    assert third.stats.computed == 4 and not np.allclose(h.video[1], f.video[1])
