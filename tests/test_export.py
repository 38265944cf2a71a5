"""`ahstream export`, the ONNX Runtime backend of the lite profile, and the TensorRT builder.

Real exports of the shipped weights, run under ONNX Runtime and compared with the numpy and
torch models they come from; the session path run with both backends on the same input.
TensorRT needs an NVIDIA GPU: what runs without one (cache keys, FP32 node choice, the
clear error) is tested here, the engine tests skip and say why.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.export import (
    ExportError,
    ParityError,
    export_lite,
    lite_source_hashes,
    read_manifest,
)
from models.runner import OrtRunner, export_onnx_module
from models.tcn import FusionTCN
from models.tcn_onnx import OnnxFusionTCN
from models.tensorrt import (
    EngineMismatch,
    TensorRTUnavailable,
    axis_profiles,
    engine_cache_key,
    fp32_node_names,
    load_or_build,
)
from models.text_ah import TextAHModel
from models.whisper import Word
from stream.cli import main
from tests.conftest import ROOT, ServeProcess

torch.set_num_threads(1)

LITE_GRAPHS = {"fer", "tcn_step", "tcn_seq", "text_head"}


def _has_gpu_trt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def _missing_for_trt() -> str:
    missing = [] if torch.cuda.is_available() else ["no NVIDIA GPU (CUDA unavailable)"]
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("tensorrt not installed")
    return ", ".join(missing)


NO_GPU = pytest.mark.skipif(
    not _has_gpu_trt(), reason=f"needs an NVIDIA GPU with TensorRT: {_missing_for_trt()}"
)


@pytest.fixture(scope="module")
def lite_export(tmp_path_factory):
    """`ahstream export --profile lite --backend onnx --out DIR --json`, in process."""
    out = tmp_path_factory.mktemp("onnx") / "lite"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(
            ["export", "--profile", "lite", "--backend", "onnx", "--out", str(out), "--json"]
        )
    assert code == 0
    summary = json.loads(buf.getvalue().strip().splitlines()[-1])
    return out, summary


def _rows(tcn, n, rng):
    """Fusion rows like a live stream's: 0/1 masks and usable flags."""
    from models.fusion import TEXT_FEATURES

    L = tcn.layout
    x = rng.normal(size=(n, L.dim))
    x[:, L.face_mask] = rng.integers(0, 2, n)
    x[:, L.voice_mask] = rng.integers(0, 2, (n, L.voice_dim))
    x[:, TEXT_FEATURES.index("usable")] = rng.integers(0, 2, n)
    return x


# ---------------------------------------------------------------------------- the export


def test_export_cli_writes_a_manifest_of_checked_graphs(lite_export):
    out, summary = lite_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["manifest"] == str(out / "manifest.json")
    assert set(summary["models"]) == LITE_GRAPHS
    assert manifest["profile"] == "lite" and manifest["format"] == 1
    assert manifest["opset"] >= 17
    assert manifest["ahstream_version"] == "0.1.0"
    sources = lite_source_hashes()
    tcn = FusionTCN.load()
    for name, m in manifest["models"].items():
        data = (out / m["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == m["sha256"]
        assert m["opset"] >= 17
        assert m["sources"] == sources[name]
        assert 0.0 <= m["parity"]["max_abs_diff"] <= 1e-4 == m["parity"]["atol"]
        for spec in m["inputs"] + m["outputs"]:
            assert spec["shape"][0] == "batch" and spec["dtype"] == "float32"
    fer = manifest["models"]["fer"]
    assert [i["name"] for i in fer["inputs"]] == ["x"]
    assert fer["inputs"][0]["shape"] == ["batch", 1, 64, 64]
    assert {o["name"] for o in fer["outputs"]} == {"logits", "probs"}
    seq = manifest["models"]["tcn_seq"]
    assert seq["inputs"] == [{"name": "seq", "shape": ["batch", "time", 103], "dtype": "float32"}]
    step = manifest["models"]["tcn_step"]
    states = step["states"]
    assert len(states) == 2 * len(tcn.config.dilations) * tcn.config.members
    ins = {i["name"]: i["shape"] for i in step["inputs"]}
    outs = {o["name"]: o["shape"] for o in step["outputs"]}
    assert ins.pop("x") == ["batch", tcn.layout.dim]
    for s in states:
        assert ins[s["input"]] == outs[s["output"]] == ["batch", s["rows"], s["channels"]]
    # Each state holds the (kernel - 1) * dilation past inputs of its convolution.
    spans = sorted({s["rows"] for s in states})
    assert spans == sorted({(tcn.config.kernel - 1) * d for d in tcn.config.dilations})
    assert "TF-IDF" in manifest["models"]["text_head"]["python"]


def test_each_graph_matches_its_source_on_new_inputs(lite_export):
    from models.expression import ExpressionModel
    from models.fer_net import ExpressionNet
    from models.text_onnx import dense_features

    out, _ = lite_export
    rng = np.random.default_rng(11)
    # FER: batch sizes other than the traced one.
    fer = OrtRunner(out / "fer.onnx")
    net = ExpressionNet(ExpressionModel.load().net).eval()
    for n in (1, 7):
        x = rng.uniform(-1, 1, (n, 1, 64, 64)).astype(np.float32)
        with torch.inference_mode():
            logits, probs = net(torch.from_numpy(x))
        got = fer.run({"x": x})
        assert np.abs(got["logits"] - logits.numpy()).max() <= 1e-4
        assert np.abs(got["probs"] - probs.numpy()).max() <= 1e-4
    # Text head: real answers through the Python featurisation.
    text = TextAHModel.load()
    head = OrtRunner(out / "text_head.onnx")
    answers = [
        "I don't know, I guess I should exercise more but I never find the time",
        "yes I quit smoking two years ago and I feel great",
        "um well maybe",
    ]
    got = head.run({"features": np.stack([dense_features(text, a) for a in answers])})
    ref = np.array([text.scores(a) for a in answers])
    assert np.abs(got["z_text"] - ref[:, 0]).max() <= 1e-4
    assert np.abs(got["z_q"] - ref[:, 1]).max() <= 1e-4
    # TCN sequence graph: a batch of several lengths (each sequence alone: no padding).
    tcn = FusionTCN.load()
    seq = OrtRunner(out / "tcn_seq.onnx")
    for T in (2, 31, 200):
        rows = [_rows(tcn, T, rng) for _ in range(3)]
        p = seq.run({"seq": np.stack(rows).astype(np.float32)})["p"]
        assert p.shape == (3, T)
        assert np.abs(p - np.stack([tcn.forward(r) for r in rows])).max() <= 1e-4


def test_tcn_twin_steps_and_forwards_like_the_numpy_tcn(lite_export):
    out, _ = lite_export
    tcn = FusionTCN.load()
    manifest, graphs = read_manifest(out, expect_sources=lite_source_hashes())
    twin = OnnxFusionTCN.from_graphs(tcn, manifest, graphs)
    assert twin.active == tcn.active and twin.decision() == tcn.decision()
    rng = np.random.default_rng(5)
    worst = 0.0
    for T in (1, 4, 37, 150):
        rows = _rows(tcn, T, rng)
        ref_stream, ort_stream = tcn.fresh(), twin.fresh()
        stepped = np.array([ort_stream.step(r) for r in rows])
        ref = np.array([ref_stream.step(r) for r in rows])
        worst = max(worst, np.abs(stepped - ref).max(), np.abs(twin.forward(rows) - ref).max())
    assert worst <= 1e-5
    # Streams are independent, and reset starts over.
    rows = _rows(tcn, 30, rng)
    a, b = twin.fresh(), twin.fresh()
    pa = [a.step(r) for r in rows]
    pb_first = b.step(rows[-1])
    a.reset()
    assert a.step(rows[-1]) == pytest.approx(pb_first, abs=1e-7)
    assert pb_first != pytest.approx(pa[-1], abs=1e-4)  # state matters: not a stateless map


def test_a_parity_failure_fails_loudly_and_writes_no_manifest(tmp_path):
    with pytest.raises(ParityError, match="differs from its source"):
        export_lite(tmp_path, atol=0.0)  # float32 graphs never match float64 to 0
    assert not (tmp_path / "manifest.json").exists()


def test_an_export_that_changed_or_comes_from_other_weights_is_refused(
    lite_export, tmp_path, short_call
):
    out, _ = lite_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    other = {**lite_source_hashes(), "tcn_step": {"tcn_lite.npz": "0" * 64}}
    with pytest.raises(ExportError, match="other weights"):
        read_manifest(copy, expect_sources=other)
    data = bytearray((copy / "text_head.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "text_head.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="changed since it was exported"):
        read_manifest(copy)
    run = _analyze(short_call, tmp_path / "x.jsonl", "--backend", "onnxruntime", "--onnx-dir", copy)
    assert run.returncode == 1
    assert "--onnx-dir" in run.stderr and "changed since it was exported" in run.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_full_profile_export_of_tiny_encoders_and_head(tmp_path, capsys):
    from models.conflict_head import ConflictAwareAH, HeadConfig, save_checkpoint
    from tests.tiny_models import make_tiny_encoders

    assert main(["export", "--profile", "full", "--out", str(tmp_path / "none")]) == 1
    assert "nothing to export" in capsys.readouterr().err
    paths = make_tiny_encoders(tmp_path / "tiny")
    torch.manual_seed(0)
    ckpt = tmp_path / "head.pt"
    save_checkpoint(ConflictAwareAH(HeadConfig(6, 5, 4, d=8, heads=2, layers=1, ff=16)), ckpt)
    out = tmp_path / "full"
    argv = ["export", "--profile", "full", "--out", str(out), "--head", str(ckpt), "--json"]
    argv += ["--video-model", str(paths["video"]), "--audio-model", str(paths["audio"])]
    assert main([*argv, "--text-model", str(paths["text"])]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"] == "full"
    models = manifest["models"]
    assert set(models) == {"head", "video_encoder", "audio_encoder", "text_encoder"}
    for m in models.values():
        assert m["opset"] >= 17 and m["parity"]["max_abs_diff"] <= 1e-4
        assert m["inputs"][0]["shape"][0] == "batch"
    assert models["head"]["sources"] == {"head.pt": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    assert [i["shape"][1] for i in models["audio_encoder"]["inputs"]] == ["samples", "samples"]
    assert models["text_encoder"]["inputs"][0]["shape"] == ["batch", "length"]
    assert "model.safetensors" in models["video_encoder"]["sources"]


# ---------------------------------------------------------------------------- the session path


def _words(text: str, t0: float = 0.2, dt: float = 0.35) -> list[Word]:
    return [Word(w, t0 + i * dt, t0 + i * dt + 0.3, 0.9) for i, w in enumerate(text.split())]


def test_analyzer_gives_the_same_numbers_with_onnxruntime():
    """The session's per-tick code (stream.analysis.Analyzer) with both backends; the
    onnxruntime one exported in memory from the shipped weights at load."""
    from models.profile import load_models
    from stream.analysis import Analyzer

    ref_models = load_models(asr=False, face=False)
    ort_models = load_models(asr=False, face=False, backend="onnxruntime")
    assert isinstance(ort_models.tcn, OnnxFusionTCN)
    assert ort_models.describe()["backend"] == "onnxruntime"
    words = _words(
        "well I mean I really want to stop smoking but it is hard and I don't know "
        "maybe next month I guess I could try again"
    )
    results = []
    for models in (ref_models, ort_models):
        analyzer = Analyzer(models, context=None)
        ticks = []
        for k in range(1, 101):
            t = k / 10
            new = [w for w in words if t - 0.1 < w.t1 <= t]
            r = analyzer.tick(t, new, False, [])
            ticks.append((r.p, r.p_text, r.p_tcn))
        results.append(np.array(ticks))
    ref, ort = results
    assert np.ptp(ref[:, 1]) > 0.05 and np.ptp(ref[:, 2]) > 0.05  # the numbers move
    assert np.abs(ref - ort).max() <= 1e-4


@pytest.fixture(scope="module")
def short_call(tmp_path_factory, speech):
    """5 s of read speech with a moving real face (mp4)."""
    from tests.mediafiles import astronaut_frames, write_media

    audio = speech[0][: 16000 * 5]
    path = tmp_path_factory.mktemp("short") / "short_call.mp4"
    return write_media(path, audio, astronaut_frames(5 * 10), fps=10)


def _analyze(clip, out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", "analyze", str(clip), "--out", str(out), "--json"]
        + [str(e) for e in extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_analyze_with_onnxruntime_gives_the_default_frame_probabilities(
    tmp_path, short_call, lite_export
):
    out_dir, _ = lite_export
    default = _analyze(short_call, tmp_path / "default.jsonl")
    onnx = _analyze(
        short_call, tmp_path / "onnx.jsonl", "--backend", "onnxruntime", "--onnx-dir", str(out_dir)
    )
    assert default.returncode == 0, default.stderr[-2000:]
    assert onnx.returncode == 0, onnx.stderr[-2000:]
    a, b = _read(tmp_path / "default.jsonl"), _read(tmp_path / "onnx.jsonl")
    assert a[0]["models"]["backend"] == "native" and b[0]["models"]["backend"] == "onnxruntime"
    fa = [e for e in a if e["type"] == "frame"]
    fb = [e for e in b if e["type"] == "frame"]
    assert len(fa) == len(fb) >= 40
    assert [e["t"] for e in fa] == [e["t"] for e in fb]
    assert any(e["evidence"] == "text" for e in fa)  # the text model scored words
    assert max(abs(x["p"] - y["p"]) for x, y in zip(fa, fb, strict=True)) <= 1e-4
    assert sum(e["modalities"]["face"] for e in fb) >= 0.8 * len(fb)  # FER ran on faces


def test_live_whip_session_against_serve_with_onnxruntime(short_call):
    from clients.send import send_file

    srv = ServeProcess("--backend", "onnxruntime")
    try:
        events = asyncio.run(send_file(short_call, srv.url))
    finally:
        srv.stop()
    assert events[0]["type"] == "session.started" and events[-1]["type"] == "session.ended"
    assert events[0]["models"]["backend"] == "onnxruntime"
    frames = [e for e in events if e["type"] == "frame"]
    assert len(frames) >= 30 and all(0.0 <= f["p"] <= 1.0 for f in frames)
    assert any(f["modalities"]["face"] for f in frames)
    assert events[-1]["decision"]["label"] in (0, 1)
    # The decision is the text model's value on the whole transcript: the ONNX graph the
    # server ran gives the native model's number on the words it committed.
    final = [e for e in events if e["type"] == "video" and e["final"]]
    assert len(final) == 1 and final[0]["evidence"] == "text"
    words = " ".join(e["text"] for e in events if e["type"] == "transcript" and e["final"])
    native = TextAHModel.load().predict_one(words)
    assert native is not None and abs(final[0]["p"] - native) <= 1e-4


# ---------------------------------------------------------------------------- TensorRT


def test_engine_cache_files_are_written_whole(tmp_path):
    """Workers of one server may build the same engine at once: a cache file appears whole
    (temporary file + rename), replaced whole, and no temporary file is left behind."""
    from models.tensorrt import _write_atomic

    path = tmp_path / "k.engine"
    _write_atomic(path, b"\x00engine")
    _write_atomic(path.with_suffix(".json"), '{"gpu": "x"}\n')
    _write_atomic(path, b"\x01again")
    assert path.read_bytes() == b"\x01again"
    assert path.with_suffix(".json").read_text() == '{"gpu": "x"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.engine", "k.json"]


def test_engine_cache_key_is_stable_and_changes_with_each_part():
    onnx = b"graph bytes"
    key = engine_cache_key(onnx, "NVIDIA GeForce RTX 4090", "10.3.0")
    assert key == engine_cache_key(onnx, "NVIDIA GeForce RTX 4090", "10.3.0")
    assert len(key) == 32 and int(key, 16) >= 0
    others = {
        engine_cache_key(b"graph bytes!", "NVIDIA GeForce RTX 4090", "10.3.0"),
        engine_cache_key(onnx, "NVIDIA GeForce RTX 3090", "10.3.0"),
        engine_cache_key(onnx, "NVIDIA GeForce RTX 4090", "10.4.0"),
    }
    assert key not in others and len(others) == 3


def test_layernorm_nodes_are_the_ones_kept_in_fp32(tmp_path):
    import onnx

    from models.conflict_head import ConflictAwareAH, HeadConfig, export_onnx

    head = ConflictAwareAH(HeadConfig(6, 5, 4, d=8, heads=2, layers=2, ff=16))
    graph = onnx.load(str(export_onnx(head, tmp_path / "head.onnx")))
    kept = fp32_node_names(graph)
    norms = [n.name for n in graph.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) >= 4 and set(norms) <= set(kept)  # two per encoder layer
    ops = {n.name: n.op_type for n in graph.graph.node}
    assert {ops[k] for k in kept} == {"LayerNormalization"}

    class ManualNorm(torch.nn.Module):  # a LayerNorm written out, then a linear layer
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 3)

        def forward(self, x):
            mean = x.mean(-1, keepdim=True)
            var = ((x - mean) ** 2).mean(-1, keepdim=True)
            return self.lin((x - mean) / torch.sqrt(var + 1e-5))

    x = {"x": np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)}
    path = export_onnx_module(ManualNorm(), x, ["y"], tmp_path / "manual.onnx")
    graph = onnx.load(str(path))
    ops = {(n.name or n.output[0]): n.op_type for n in graph.graph.node}
    kept = fp32_node_names(graph)
    assert {"ReduceMean", "Sub", "Pow", "Sqrt", "Div"} <= {ops[k] for k in kept}
    assert not {"MatMul", "Gemm"} & {ops[k] for k in kept}  # the linear layer may run in FP16


def test_hubert_masked_group_norm_is_kept_in_fp32(tmp_path):
    """The speech encoder's masked GroupNorm sums over every frame of the first conv layer
    (96,000 in 30 s, past FP16's 65,504): its reductions, square root and divisions stay in
    FP32; the shape arithmetic of its scope (int64) and the rest of the network do not. So
    do the encoders' poolings (the speech frames' masked mean, the video tokens' mean)."""
    import onnx

    from models.hub_encoders import FaceClipEncoder, SpeechEncoder
    from tests.tiny_models import make_tiny_encoders

    paths = make_tiny_encoders(tmp_path / "tiny")
    graph = onnx.load(str(SpeechEncoder.from_pretrained(paths["audio"]).export_onnx(
        tmp_path / "audio.onnx")))  # fmt: skip
    kept = set(fp32_node_names(graph))
    norm = [n for n in graph.graph.node if "group_norm" in n.name]
    ops = {}
    for n in norm:
        ops.setdefault(n.op_type, []).append(n.name)
    assert len(ops["ReduceSum"]) == 3 and len(ops["Sqrt"]) == 1  # mask count, sum, squares
    for op in ("ReduceSum", "Sqrt", "Pow", "Sub", "Mul", "Add"):
        assert set(ops[op]) <= kept, op
    divisions = set(ops["Div"]) & kept
    assert len(divisions) == 3  # mean, variance, normalisation (not the int64 c // g)
    assert not {n.name for n in norm if n.op_type in ("Shape", "Gather", "Concat")} & kept
    convs = {n.name for n in graph.graph.node if n.op_type in ("Conv", "MatMul")}
    assert convs and not convs & kept  # the heavy ops may run in FP16
    # the masked mean over the frames (up to 1,500) too, and the video encoder's token mean
    pool = {n.name for n in graph.graph.node if "/fp32_pool/" in n.name}
    assert {n.split("/")[-1].split("_")[0] for n in pool & kept} >= {"ReduceSum", "Div"}
    video = onnx.load(str(FaceClipEncoder.from_pretrained(paths["video"]).export_onnx(
        tmp_path / "video.onnx")))  # fmt: skip
    means = [n.name for n in video.graph.node if n.op_type in ("ReduceMean", "ReduceSum")]
    assert means and {n for n in means if "/fp32_pool/" in n} <= set(fp32_node_names(video))
    assert any("/fp32_pool/" in n for n in means)


def test_optimisation_profiles_come_from_the_manifest_axes(lite_export):
    out, _ = lite_export
    manifest = json.loads((out / "manifest.json").read_text())
    seq = axis_profiles(manifest["models"]["tcn_seq"]["inputs"])
    assert seq["seq"] == ((1, 1, 103), (4, 64, 103), (16, 512, 103))
    step = axis_profiles(manifest["models"]["tcn_step"]["inputs"], {"batch": (1, 8, 32)})
    assert step["x"] == ((1, 103), (8, 103), (32, 103))
    with pytest.raises(ValueError, match="no optimisation profile"):
        axis_profiles([{"name": "a", "shape": ["batch", "mystery"]}])


def test_engine_check_inputs_follow_the_profile_and_keep_modalities_present():
    from models.tensorrt import sample_feeds

    specs = [
        {"name": "input_ids", "shape": ["batch", "length"], "dtype": "int64"},
        {"name": "attention_mask", "shape": ["batch", "length"], "dtype": "int64"},
        {"name": "present", "shape": ["batch", 3], "dtype": "float32"},
        {"name": "video", "shape": ["batch", 6], "dtype": "float32"},
    ]
    feeds = sample_feeds(specs)
    assert feeds["input_ids"].shape == (4, 64) and feeds["input_ids"].dtype == np.int64
    assert (feeds["attention_mask"] == 1).all() and (feeds["present"] == 1).all()
    assert feeds["video"].shape == (4, 6) and np.ptp(feeds["video"]) > 0


class _Scaled(torch.nn.Module):
    """Hidden states in the tens (like an encoder's) and probabilities in [0, 1]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 6)

    def forward(self, x):
        h = 40.0 * self.lin(x)
        return h, torch.sigmoid(h[:, :2] / 40.0)


def test_a_tensorrt_of_another_major_version_is_refused_with_the_reason(monkeypatch):
    """TensorRT 11 removed the FP16 builder flags and layer precisions the engines are
    built with (export failed with AttributeError: FP16): any other major version is
    refused when imported, with what to install."""
    import types

    import models.tensorrt as trt_module

    for version, ok in (("10.16.1.11", True), ("11.4.0.106", False), ("9.3.0", False)):
        fake = types.SimpleNamespace(__version__=version)
        monkeypatch.setattr(trt_module.importlib.util, "find_spec", lambda name: object())
        monkeypatch.setattr(trt_module.importlib, "import_module", lambda name, m=fake: m)
        if ok:
            assert trt_module.import_tensorrt() is fake
        else:
            with pytest.raises(TensorRTUnavailable, match=f"TensorRT {version} is not supported"):
                trt_module.import_tensorrt()


def _fake_tensorrt(monkeypatch, error=None):
    """models.tensorrt without a GPU: its engine is ONNX Runtime plus ``error`` (output name
    -> what to add); building and caching run as on a GPU."""
    import types

    import models.tensorrt as trt_module

    class FakeEngineRunner:
        def __init__(self, engine, name):
            self.name, self.engine_path = name, None
            self.onnx = Path(engine.decode())

        def run(self, inputs):
            out = OrtRunner(self.onnx).run(inputs)
            return {k: v + (error or {}).get(k, 0.0) for k, v in out.items()}

    monkeypatch.setattr(trt_module, "import_tensorrt", lambda: types.SimpleNamespace(
        __version__="10.0-fake"))  # fmt: skip
    monkeypatch.setattr(trt_module, "gpu_name", lambda: "Fake GPU")
    monkeypatch.setattr(trt_module, "build_engine", lambda path, *a, **k: str(path).encode())
    monkeypatch.setattr(trt_module, "TensorRTRunner", FakeEngineRunner)


def test_the_engine_check_is_relative_to_each_outputs_scale(tmp_path, monkeypatch):
    """FP16 rounding grows with an output's scale: an error of 0.2 on hidden states of
    magnitude ~100 is sound (0.2 % of the scale), the same error on probabilities is not."""
    x = {"x": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)}
    graph = export_onnx_module(_Scaled(), x, ["hidden", "probs"], tmp_path / "scaled.onnx")
    ref = OrtRunner(graph).run(x)
    assert np.abs(ref["hidden"]).max() > 30
    _fake_tensorrt(monkeypatch, {"hidden": 0.2})
    runner = load_or_build(graph, tmp_path / "engines", x)
    assert runner.engine_path is not None and runner.engine_path.is_file()  # kept
    _fake_tensorrt(monkeypatch, {"probs": 0.2})
    with pytest.raises(EngineMismatch, match=r"scaled.onnx: .*probs: max \|diff\| 0.2 > "):
        load_or_build(graph, tmp_path / "engines2", x)
    assert not list((tmp_path / "engines2").glob("*.engine"))

    from models.tensorrt import FP16_ATOL, FP16_RTOL, tolerance_problems

    ref = {"h": np.array([100.0, -3.0]), "p": np.array([0.5, 0.1])}
    assert tolerance_problems({"h": ref["h"] + 1.5, "p": ref["p"]}, ref) == []
    assert tolerance_problems({"h": ref["h"] + 2.5, "p": ref["p"]}, ref) == [
        f"h: max |diff| 2.5 > {FP16_ATOL + FP16_RTOL * 100:.3g}"
    ]
    assert tolerance_problems({"h": ref["h"], "p": ref["p"] + 0.03}, ref)[0].startswith("p:")
    assert tolerance_problems({"h": ref["h"] * np.nan, "p": ref["p"]}, ref) == ["h: not finite"]
    assert tolerance_problems({"p": ref["p"]}, ref) == ["h: missing"]


def test_export_names_the_graph_whose_engine_fails(lite_export, tmp_path, monkeypatch, capsys):
    """`export --backend tensorrt`: an engine that does not match, or does not build, is one
    line naming its graph (the ONNX export stays complete), not a traceback."""
    import models.tensorrt as trt_module

    _fake_tensorrt(monkeypatch)

    def failing(exc):
        def load_or_build(path, *args, **kwargs):
            if Path(path).name == "tcn_step.onnx":
                raise exc
            return trt_module.TensorRTRunner(str(path).encode(), Path(path).stem)

        return load_or_build

    argv = ["export", "--backend", "tensorrt", "--out", str(tmp_path / "x"), "--json"]
    for exc, text in (
        (EngineMismatch("tcn_step.onnx: TensorRT engine differs (p: max |diff| 1 > 0.03)"),
         "graph tcn_step: tcn_step.onnx: TensorRT engine differs"),
        (RuntimeError("TensorRT could not build an engine\nlong builder log"),
         "graph tcn_step: tcn_step.onnx: TensorRT could not build an engine"),
    ):  # fmt: skip
        monkeypatch.setattr(trt_module, "load_or_build", failing(exc))
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"ahstream export: {text}"), err
        assert err.endswith("is complete)") and (tmp_path / "x" / "manifest.json").is_file()


def test_an_input_outside_the_engine_profile_is_refused_clearly():
    """TensorRT refuses a shape outside the optimisation profile by returning False (the run
    would then use stale shapes): the runner says which input, its shape and the range,
    before anything goes to the GPU."""
    import threading
    import types

    from models.tensorrt import TensorRTRunner

    runner = object.__new__(TensorRTRunner)
    runner.name, runner.input_names, runner.output_names = "tcn_step", ("x",), ("p",)
    runner._lock = threading.Lock()
    runner._torch = torch
    runner.engine = types.SimpleNamespace(
        get_tensor_profile_shape=lambda name, i: ((1, 103), (4, 103), (16, 103))
    )
    accepted = []
    runner.context = types.SimpleNamespace(set_input_shape=lambda n, s: accepted.append(s) or False)
    with pytest.raises(ValueError, match=r"tcn_step: input x of shape \(17, 103\) is outside .*"
                       r"max \(16, 103\)"):  # fmt: skip
        runner.run({"x": np.zeros((17, 103), np.float32)})
    with pytest.raises(ValueError, match=r"tcn_step: TensorRT refused input x of shape \(3, 103\)"):
        runner.run({"x": np.zeros((3, 103), np.float32)})
    assert accepted == [(3, 103)]

    from models.tensorrt import shape_problem

    assert shape_problem("x", (16, 103), (1, 103), (16, 103)) is None
    assert shape_problem("x", (17, 103), (1, 103), (16, 103)) == (
        "input x of shape (17, 103) is outside the engine's optimisation profile "
        "(min (1, 103), max (16, 103))"
    )
    assert shape_problem("x", (2,), (1, 103), (16, 103)) is not None  # another rank


def test_serve_refuses_batches_larger_than_the_engines_take(tmp_path, capsys):
    """The engines' optimisation profile takes at most 16 items per run: `serve --backend
    tensorrt --batch-max 32` would form batches they refuse."""
    from models.tensorrt import DEFAULT_PROFILE

    assert DEFAULT_PROFILE["batch"][2] == 16
    argv = ["serve", "--profile", "full", "--weights-dir", str(tmp_path), "--backend",
            "tensorrt", "--engine-dir", str(tmp_path)]  # fmt: skip
    assert main([*argv, "--batch-max", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "ahstream serve: --batch-max 32: the TensorRT engines take at most 16 items per run "
        "(their optimisation profile); use --batch-max 16 or less"
    )
    if not _has_gpu_trt():  # 16 passes that check, and fails on the missing GPU
        assert main([*argv, "--batch-max", "16"]) == 2
        assert "--batch-max" not in capsys.readouterr().err


@pytest.mark.skipif(_has_gpu_trt(), reason="TensorRT and a GPU are present here")
def test_without_tensorrt_or_a_gpu_the_error_says_which(lite_export, tmp_path, capsys):
    out, _ = lite_export
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed|no CUDA GPU"):
        load_or_build(out / "fer.onnx", tmp_path / "cache", {"x": np.zeros((1, 1, 64, 64))})
    assert not (tmp_path / "cache").exists()
    dest = tmp_path / "trt"
    assert main(["export", "--backend", "tensorrt", "--out", str(dest), "--json"]) == 1
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err or "no CUDA GPU" in err
    assert "ONNX export" in err and (dest / "manifest.json").is_file()


@NO_GPU
def test_tensorrt_engines_are_built_checked_and_cached(lite_export, tmp_path):
    from models.tensorrt import TensorRTRunner, build_export

    out, _ = lite_export
    engines = build_export(out, tmp_path / "engines")
    assert set(engines) == LITE_GRAPHS and all(Path(p).is_file() for p in engines.values())
    before = {p: Path(p).stat().st_mtime_ns for p in engines.values()}
    feeds = {"x": np.random.default_rng(0).uniform(-1, 1, (3, 1, 64, 64)).astype(np.float32)}
    runner = load_or_build(out / "fer.onnx", tmp_path / "engines", feeds)
    assert isinstance(runner, TensorRTRunner) and runner.backend == "tensorrt"
    assert {p: Path(p).stat().st_mtime_ns for p in engines.values()} == before  # cache hit
    got, ref = runner.run(feeds), OrtRunner(out / "fer.onnx").run(feeds)
    assert np.abs(got["probs"] - ref["probs"]).max() <= 1e-2


def test_full_export_fetches_hub_ids_unless_offline(tmp_path, monkeypatch, capsys):
    """`export --profile full --video-model ORG/NAME` lets transformers fetch the model (no
    local_files_only, no HF_HUB_OFFLINE set by the command); with HF_HUB_OFFLINE=1 in the
    environment only the cache is searched, and the error says so."""
    import os

    from models import hub_encoders

    calls = []

    def fake(ident, **kwargs):
        calls.append((kwargs.get("local_files_only"), os.environ.get("HF_HUB_OFFLINE")))
        raise hub_encoders.HubModelNotFoundError(f"FaceClipEncoder: could not load '{ident}'")

    monkeypatch.setattr(hub_encoders.FaceClipEncoder, "from_pretrained", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    argv = ["export", "--profile", "full", "--video-model", "someorg/videomae-x"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert calls == [(False, None)] and "HF_HUB_OFFLINE" not in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([*argv, "--out", str(tmp_path / "b")]) == 1
    assert calls[-1] == (True, "1")
    assert "HF_HUB_OFFLINE is set: only the hub cache was searched" in capsys.readouterr().err
