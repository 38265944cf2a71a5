"""`ahstream` refuses bad input with one line on stderr, before it loads any model."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from stream.cli import build_parser
from tests.conftest import ROOT


def ahstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def refusal(*args: str, env: dict[str, str] | None = None) -> str:
    """stderr of a command that must fail at once with a message and no traceback."""
    proc = ahstream(*args, env=env)
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def write_wav(path: Path, pcm: bytes) -> str:
    """A 16 kHz mono 16-bit WAV of ``pcm`` at ``path``."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return str(path)


@pytest.fixture
def wav(tmp_path: Path) -> str:
    """A tenth of a second of silence."""
    return write_wav(tmp_path / "silence.wav", b"\0\0" * 1600)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--analysis-hz", "100"], "--analysis-hz must be between 1 and 50 (got 100)"),
        (["--analysis-hz", "0"], "--analysis-hz must be between 1 and 50 (got 0)"),
        (["--idle-timeout", "0"], "--idle-timeout must be > 0 (got 0)"),
        (["--max-sessions", "0"], "--max-sessions must be > 0 (got 0)"),
        (["--max-duration", "-5"], "--max-duration must be > 0 (got -5)"),
        (["--port", "70000"], "--port must be between 1 and 65535 (got 70000)"),
        (["--weights-dir", "/missing"], "--weights-dir /missing: weights directory not found"),
        (["--max-fps", "nan"], "--max-width/--max-height must be >= 16, --max-fps > 0, "),
        # before any worker starts (they printed it once each, then "did not start", exit 1)
        (["--onnx-dir", "/tmp"], "--onnx-dir needs --backend onnxruntime"),
        (["--profile", "full"], "the full profile needs trained weights: give --weights-dir"),
    ],
)
def test_serve_checks_its_options_at_start(args: list[str], message: str) -> None:
    proc = ahstream("serve", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"ahstream serve: {message}"), proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--asr-hop", "-1"], "--asr-hop must be between 0.1 and 5 (got -1)"),
        (["--analysis-hz", "0"], "--analysis-hz must be between 1 and 50 (got 0)"),
        (["--out", "/missing/dir/x.jsonl"], "--out /missing/dir/x.jsonl: no such directory"),
        (["--weights-dir", "/missing"], "--weights-dir /missing: weights directory not found"),
    ],
)
def test_analyze_checks_its_options_before_loading_models(
    wav: str, args: list[str], message: str
) -> None:
    proc = ahstream("analyze", wav, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"ahstream analyze: {message}")
    assert len(proc.stderr.splitlines()) == 1


def test_a_weights_dir_without_weights_names_the_missing_file(wav: str, tmp_path: Path) -> None:
    empty = tmp_path / "weights"
    empty.mkdir()
    expected = f"text A/H weights not found: {empty / 'text_ah_lite.json'}"
    assert expected in refusal("analyze", wav, "--weights-dir", str(empty))
    split = tmp_path / "split.txt"
    split.write_text("v1,0,hello\n")
    stderr = refusal("evaluate", "--split-file", str(split), "--weights-dir", str(empty))
    assert expected in stderr


def test_a_text_model_from_another_training_run_is_refused(wav: str, tmp_path: Path) -> None:
    """The TCN's thresholds belong to the text model it was trained on: a weights dir whose
    text model differs (here by one threshold; a copied pair or a half-finished move of
    new weights) is refused by every command that loads the pair, in one line."""
    import json
    import shutil

    from models.profile import load_models
    from models.tcn import FusionTCN
    from models.text_ah import TextAHModel
    from models.weight_files import WEIGHTS_DIR

    mixed = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, mixed)
    load_models(weights_dir=str(mixed), asr=False, face=False)  # the shipped pair matches
    text = TextAHModel.load(mixed)
    assert TextAHModel.load(mixed).fingerprint() == text.fingerprint()  # save/load stable
    recorded = FusionTCN.load(mixed).metadata["text_model"]["fingerprint"]
    assert recorded == text.fingerprint()
    text.threshold += 0.01
    text.save(mixed)
    v = text.version
    line = (
        f"the TCN (tcn_lite) was trained on the text model text_ah_lite {v} "
        f"(fingerprint {recorded[:12]}), but the text model beside it is text_ah_lite {v} "
        f"(fingerprint {text.fingerprint()[:12]})"
    )
    for argv in (
        ["analyze", wav],
        ["evaluate", "--split-file", str(tmp_path / "split.txt")],
        ["export", "--out", str(tmp_path / "onnx")],
    ):
        (tmp_path / "split.txt").write_text("v1,0,hello there friend\n")
        proc = ahstream(*argv, "--weights-dir", str(mixed))
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert line in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    # A TCN file from before fingerprints were recorded: name and version still checked.
    meta = json.loads((mixed / "tcn_lite.json").read_text(encoding="utf-8"))
    del meta["text_model"]["fingerprint"]
    (mixed / "tcn_lite.json").write_text(json.dumps(meta), encoding="utf-8")
    load_models(weights_dir=str(mixed), asr=False, face=False)
    meta["text_model"]["version"] = "0.9.0"
    (mixed / "tcn_lite.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(
        ValueError, match=rf"text_ah_lite 0\.9\.0, but .* text_ah_lite {re.escape(v)};"
    ):
        load_models(weights_dir=str(mixed), asr=False, face=False)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_serve_on_a_port_in_use_says_so(processes: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stderr = refusal("serve", "--port", str(port), "--processes", processes)
    assert stderr.splitlines() == [
        f"ahstream serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_a_worker_that_cannot_start_is_not_retried(tmp_path: Path) -> None:
    """Two workers whose weights are missing: each says why once (a retry would fail the
    same way; only a port taken under a worker is retried), and the front exits cleanly."""
    from tests.conftest import free_port

    # The lite profile on an empty weights dir: its workers fail as soon as they load.
    stderr = refusal(
        "serve", "--port", str(free_port()), "--processes", "2", "--weights-dir", str(tmp_path)
    )
    assert stderr.count(f"text A/H weights not found: {tmp_path}/") == 2, stderr
    assert "did not start" in stderr.splitlines()[-1]
    assert "Unclosed" not in stderr


def test_a_bad_log_level_is_refused() -> None:
    assert "invalid choice: 'LOUD'" in refusal("--log-level", "loud", "serve")
    stderr = refusal("serve", env={"AHSTREAM_LOG": "loud"})
    assert stderr.splitlines() == [
        "ahstream: AHSTREAM_LOG=LOUD is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    ]


def test_bench_send_and_listen_check_their_input(wav: str) -> None:
    assert (
        refusal("bench", "asr", "/missing.wav")
        == "ahstream bench asr: no such file: /missing.wav\n"
    )
    stderr = refusal("bench", "throughput", wav, "--max-sessions", "0")
    assert stderr == "ahstream bench throughput: --max-sessions must be > 0 (got 0)\n"
    stderr = refusal("send", wav, "--url", "http://127.0.0.1:1", "--events", "/missing/e.jsonl")
    assert stderr.startswith("ahstream send: --events /missing/e.jsonl: no such directory")
    stderr = refusal("listen", "http://127.0.0.1:99999/sessions/x/events")
    assert stderr.startswith("ahstream listen: invalid URL: ")
    for command in ("send", "report"):  # a usage error, as in analyze, evaluate and score
        proc = ahstream(
            command, "/missing.mp4", *(["--out", "/tmp"] if command == "report" else [])
        )
        assert (proc.returncode, proc.stderr) == (
            2,
            f"ahstream {command}: no such file: /missing.mp4\n",
        )
        proc = ahstream(command, "/tmp", *(["--out", "/tmp"] if command == "report" else []))
        assert proc.returncode == 2 and proc.stderr.endswith("/tmp is a directory, not a file\n")


def test_analyze_never_writes_over_its_input(tmp_path: Path, wav: str) -> None:
    """--out (or an --out-dir/--report file) that is the input would be overwritten before
    the input is read: refused, and the input is left alone."""
    before = Path(wav).read_bytes()
    stderr = refusal("analyze", wav, "--out", wav)
    assert stderr == f"ahstream analyze: --out would write {wav}, which is the input {wav}\n"
    image = tmp_path / "call.png"
    image.write_bytes(b"not really a png")
    stderr = refusal("analyze", str(image), "--report", str(tmp_path))
    assert "--report would write" in stderr and image.read_bytes() == b"not really a png"
    assert Path(wav).read_bytes() == before


def test_analyze_of_media_with_nothing_to_analyse_fails(tmp_path: Path) -> None:
    """A WAV of no samples used to end with "no A/H (p=nan)" and exit 0."""
    empty = write_wav(tmp_path / "empty.wav", b"")
    proc = ahstream("analyze", empty, "--out", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 1, proc.stderr
    assert "no decision: no audio or video was analysed" in proc.stderr
    assert "no A/H" not in proc.stderr


def test_evaluate_refuses_options_of_the_other_evaluation(tmp_path: Path) -> None:
    split = tmp_path / "split.txt"
    split.write_text("v1,0,hello there friend\n")
    stderr = refusal("evaluate", "--split-file", str(split), "--submission", "s.csv")
    assert stderr == (
        "ahstream evaluate: --submission: only for the full evaluation (--bah-root DIR), "
        "not --split-file\n"
    )
    stderr = refusal("evaluate", "--bah-root", str(tmp_path), "--context-from-question")
    assert "--context-from-question: only for the lite evaluation" in stderr
    assert not (tmp_path / "s.csv").exists()


def test_send_publishes_to_where_serve_listens_by_default() -> None:
    send = build_parser().parse_args(["send", "call.mp4"])
    serve = build_parser().parse_args(["serve"])
    assert send.url == f"http://{serve.host}:{serve.port}"


def test_bench_refuses_media_without_the_stream_it_measures(wav: str, tmp_path: Path) -> None:
    import av

    video_only = tmp_path / "video-only.mp4"
    with av.open(str(video_only), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert refusal("bench", "asr", str(video_only)) == (
        f"ahstream bench asr: {video_only}: no audio stream\n"
    )
    results = tmp_path / "results" / "encoders"
    assert refusal("bench", "encoders", wav, "--out-dir", str(results)) == (
        f"ahstream bench encoders: {wav}: no video stream (face frames are read from it)\n"
    )
    assert not (tmp_path / "results").exists()  # a refused run leaves no directory behind
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "cannot be created" in refusal("bench", "encoders", wav, "--out-dir", f"{blocker}/x")


def test_train_refuses_a_tick_rate_no_session_can_run() -> None:
    stderr = refusal("train", "--profile", "full", "--tick-hz", "0.5")
    assert stderr == "ahstream train: --tick-hz must be between 1 and 50 (got 0.5)\n"


def test_train_on_a_malformed_split_says_where_and_leaves_the_weights(tmp_path: Path) -> None:
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.txt").write_text("a,1,i want to but\nb,2,no\n")
    (split / "val.txt").write_text("c,0,sure\n")
    out = tmp_path / "weights"
    out.mkdir()
    (out / "text_ah_lite.json").write_text("{}")
    stderr = refusal("train", "--split-dir", str(split), "--out-dir", str(out), "--json")
    assert stderr == f"ahstream train: {split / 'train.txt'}:2: label must be 0 or 1, got '2'\n"
    # Nothing half-written: the old file as it was, no staging directory left behind.
    assert [f.name for f in out.iterdir()] == ["text_ah_lite.json"]
    assert (out / "text_ah_lite.json").read_text() == "{}"


def _help(*command: str) -> str:
    """The help of a (sub)command, on one line."""
    parser = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return " ".join(parser.format_help().split())


def test_help_gives_the_defaults_and_says_what_flags_do() -> None:
    train = _help("train")
    assert "random seed (default 0)" in train and "(default lite)" in train
    assert "(default val)" in _help("evaluate")
    export = _help("export")
    assert "no per-model parity lines on stderr" in export and "always printed" in export
    assert "in total, across all worker processes" in _help("serve")
    assert "(default 17)" in export and "(default 60)" in train


def test_analyze_writes_nothing_it_was_not_asked_for(tmp_path: Path) -> None:
    """With a fresh HOME and TMPDIR, `analyze` of a spoken file leaves no file behind but
    the font list matplotlib caches (mediapipe imports it): ONNX Runtime wrote a device id
    and a queue of telemetry events under ~/.cache/Microsoft, and $TMPDIR/.ses. What it
    is asked for (events, report) is its owner's only, as --record's files are."""
    from tests.media import espeak_speech

    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    pcm = (espeak_speech("I want to, but I am not sure.") * 32767).astype("<i2")
    speech = write_wav(tmp_path / "speech.wav", pcm.tobytes())
    out = tmp_path / "out"
    proc = ahstream(
        "analyze",
        speech,
        *("--json", "--out-dir", str(out), "--report", str(out)),
        env={"HOME": str(home), "TMPDIR": str(tmp)},
    )
    assert proc.returncode == 0, proc.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    asked = {"speech.wav", "out/speech.jsonl", "out/speech.png", "out/speech.html"}
    assert asked <= set(written)
    assert [w for w in written if w not in asked and "/.cache/matplotlib/" not in w] == []
    assert out.stat().st_mode & 0o777 == 0o700
    assert {oct((tmp_path / w).stat().st_mode & 0o777) for w in asked - {"speech.wav"}} == {"0o600"}
