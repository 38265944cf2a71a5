"""Export a profile's neural models to ONNX, each graph checked against its source.

``export_lite(out_dir)`` writes, next to a ``manifest.json``:

- ``fer.onnx``: the FER2013 mini-Xception, `models.fer_net.ExpressionNet`'s graph
  (``x`` [batch, 1, 64, 64] in [-1, 1] -> ``logits``, ``probs`` [batch, 7]);
- ``tcn_step.onnx``: one `FusionTCN.step` for a batch of streams with explicit state
  (`models.tcn_graph`); ``tcn_seq.onnx``: `FusionTCN.forward` with dynamic batch and time;
- ``text_head.onnx``: the two linear heads of `models.text_ah.TextAHModel` over its dense
  feature vector (``features`` [batch, n] -> ``z_text``, ``z_q``). Tokenisation, the
  TF-IDF and lexical-cue featurisation and the final context/mix combination stay in
  Python (`models.text_onnx`).

``export_full(out_dir, weights_dir=CKPT)`` writes what ``serve``/``analyze --profile full
--backend onnxruntime|tensorrt --engine-dir DIR`` run, from a directory of ``ahstream train
--profile full``: the three encoders it names, its `models.embedding_tcn.EmbeddingTCN`
(``embedding_tcn.onnx``, the sequence forward, and ``embedding_tcn_step.onnx``, one tick with
explicit state) and its ConflictAwareAH head (``conflict_head.onnx``, which takes raw
embeddings: the checkpoint's standardisation is built in; its alpha and thresholds are in
the manifest). ``head=``/``video_model=``/... export single pieces. Every graph is run under
ONNX Runtime on sample inputs and compared with its source (torch or numpy) before the
manifest is written; a difference above ``atol`` (1e-4) raises `ParityError` and no
manifest is written. `read_full_export` checks an export against a weights directory.

The manifest records, per model: file, sha256, opset, input/output names, shapes (symbolic
names for dynamic axes) and dtypes, the source weights' sha256, the measured parity; and the
ahstream version. `read_manifest` checks the files' hashes again when an export is loaded.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.runner import MIN_OPSET, OrtRunner, export_onnx_module, max_abs_diff

__all__ = [
    "MANIFEST",
    "FORMAT_VERSION",
    "ATOL",
    "ParityError",
    "ExportError",
    "sha256_file",
    "ahstream_version",
    "export_lite",
    "export_full",
    "read_full_export",
    "encoder_sources",
    "FULL_SERVE_GRAPHS",
    "read_manifest",
    "lite_source_hashes",
    "export_lite_in_memory",
    "tcn_step_feeds",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ATOL = 1e-4  # largest |ONNX - source| accepted on the sample inputs

_ROOT = Path(__file__).resolve().parents[1]


class ExportError(RuntimeError):
    """An export cannot be made or read (missing weights, bad manifest, changed file)."""


class ParityError(ExportError):
    """An exported graph disagrees with its source on the sample inputs."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ahstream_version() -> str:
    """The installed distribution's version, else the one in the source tree's pyproject."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ahstream")
    except PackageNotFoundError:
        import tomllib

        try:
            with open(_ROOT / "pyproject.toml", "rb") as f:
                return str(tomllib.load(f)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def _io_spec(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Names, shapes (ints or axis names) and dtypes of a graph's inputs and outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            out.append({"name": v.name, "shape": shape, "dtype": dtype})
        return out

    return spec(model.graph.input), spec(model.graph.output)


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _entry(
    name: str,
    path: Path,
    out_dir: Path,
    sources: Mapping[str, str],
    parity: float,
    against: str,
    **extra: Any,
) -> dict[str, Any]:
    inputs, outputs = _io_spec(path)
    return {
        "name": name,
        "file": str(path.relative_to(out_dir)),
        "sha256": sha256_file(path),
        "opset": _opset(path),
        "inputs": inputs,
        "outputs": outputs,
        "sources": dict(sources),
        "parity": {"max_abs_diff": parity, "atol": None, "against": against},
        **extra,
    }


def _check(name: str, diff: float, atol: float) -> float:
    if not np.isfinite(diff) or diff > atol:
        raise ParityError(f"{name}: ONNX Runtime differs from its source by {diff:.3g} > {atol}")
    return diff


# ------------------------------------------------------------------------------------ lite


def lite_source_hashes(weights_dir: str | Path | None = None) -> dict[str, dict[str, str]]:
    """sha256 of the weight files each lite graph is exported from (None: shipped weights)."""
    from models.expression import DEFAULT_WEIGHTS
    from models.tcn import TCN_STEM
    from models.text_ah import DEFAULT_STEM
    from models.weight_files import WEIGHTS_DIR

    base = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR

    def pair(stem: str) -> dict[str, str]:
        files = [base / f"{stem}.npz", base / f"{stem}.json"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ExportError(f"weights not found: {', '.join(missing)}")
        return {f.name: sha256_file(f) for f in files}

    tcn = pair(TCN_STEM)
    return {
        "fer": {DEFAULT_WEIGHTS.name: sha256_file(DEFAULT_WEIGHTS)},
        "tcn_step": tcn,
        "tcn_seq": tcn,
        "text_head": pair(DEFAULT_STEM),
    }


def _fusion_rows(layout: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random fusion rows with 0/1 masks and usable flags, like a live stream's."""
    from models.fusion import TEXT_FEATURES

    x = rng.normal(size=(n, layout.dim))
    x[:, layout.face_mask] = rng.integers(0, 2, n)
    x[:, layout.voice_mask] = rng.integers(0, 2, (n, layout.voice_dim))
    x[:, TEXT_FEATURES.index("usable")] = rng.integers(0, 2, n)
    return x


def _export_fer(out_dir: Path, opset: int, atol: float) -> tuple[Path, float]:
    import torch

    from models.expression import INPUT_SIZE, OUTPUT_NAMES, ExpressionModel
    from models.fer_net import ExpressionNet

    model = ExpressionModel.load(backend="torch")
    path = model.export_onnx(out_dir / "fer.onnx", opset=opset)
    net = ExpressionNet(model.net).eval()
    ort = OrtRunner(path, "fer")
    rng = np.random.default_rng(0)
    diff = 0.0
    for n in (1, 5):  # two batch sizes: the batch axis is dynamic
        x = rng.uniform(-1, 1, (n, 1, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
        with torch.inference_mode():
            ref = dict(
                zip(OUTPUT_NAMES, (o.numpy() for o in net(torch.from_numpy(x))), strict=True)
            )
        diff = max(diff, max_abs_diff(ort.run({"x": x}), ref))
    return Path(path), _check("fer", diff, atol)


def tcn_step_feeds(
    specs: list[Any], batch: int, x: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Zero (fresh) states for ``batch`` streams of the step graph, plus ``x`` if given."""
    feeds = {s.input: np.zeros((batch, s.rows, s.channels), np.float32) for s in specs}
    if x is not None:
        feeds = {"x": np.asarray(x, np.float32), **feeds}
    return feeds


def _export_tcn(
    out_dir: Path, tcn: Any, opset: int, atol: float
) -> tuple[Path, float, Path, float, list[Any]]:
    from models.tcn_graph import TCNSequenceGraph, TCNStepGraph, state_specs

    specs = state_specs(tcn)
    rng = np.random.default_rng(1)
    names_out = ["p", "logits", *(s.output for s in specs)]
    sample = tcn_step_feeds(specs, 2, _fusion_rows(tcn.layout, 2, rng))
    axes = {n: {0: "batch"} for n in [*sample, *names_out]}
    step_path = export_onnx_module(
        TCNStepGraph(tcn), sample, names_out, out_dir / "tcn_step.onnx", axes, opset
    )
    seq_sample = {"seq": _fusion_rows(tcn.layout, 6, rng).reshape(2, 3, -1).astype(np.float32)}
    seq_axes = {"seq": {0: "batch", 1: "time"}, "p": {0: "batch", 1: "time"}}
    seq_axes["logits"] = {0: "batch", 1: "time"}
    seq_path = export_onnx_module(
        TCNSequenceGraph(tcn),
        seq_sample,
        ["p", "logits"],
        out_dir / "tcn_seq.onnx",
        seq_axes,
        opset,
    )
    # Step graph: 3 streams side by side over 40 ticks against 3 numpy FusionTCN.step runs.
    step = OrtRunner(step_path, "tcn_step")
    streams = [_fusion_rows(tcn.layout, 40, rng) for _ in range(3)]
    numpy_tcns = [tcn.fresh() for _ in streams]
    feeds = tcn_step_feeds(specs, len(streams))
    step_diff = 0.0
    for t in range(40):
        feeds["x"] = np.stack([s[t] for s in streams]).astype(np.float32)
        out = step.run(feeds)
        ref = np.array([n.step(s[t]) for n, s in zip(numpy_tcns, streams, strict=True)])
        step_diff = max(step_diff, float(np.max(np.abs(out["p"] - ref))))
        feeds.update({s.input: out[s.output] for s in specs})
    # Sequence graph: two lengths, batch 2, against FusionTCN.forward.
    seq = OrtRunner(seq_path, "tcn_seq")
    seq_diff = 0.0
    for T in (1, 57):
        rows = [_fusion_rows(tcn.layout, T, rng) for _ in range(2)]
        out = seq.run({"seq": np.stack(rows).astype(np.float32)})
        ref = np.stack([tcn.forward(r) for r in rows])
        seq_diff = max(seq_diff, float(np.max(np.abs(out["p"] - ref))))
    return (
        step_path,
        _check("tcn_step", step_diff, atol),
        seq_path,
        _check("tcn_seq", seq_diff, atol),
        specs,
    )


def _export_text(out_dir: Path, text: Any, opset: int, atol: float) -> tuple[Path, float]:
    from models.text_onnx import TextHeadGraph, dense_features

    texts = [
        "",
        "um I guess I should but I don't know, maybe next week",
        "I exercise every day and I love it",
        "well I mean I tried to quit smoking but it is hard, sometimes I just can't",
    ]
    feats = np.stack([dense_features(text, s) for s in texts]).astype(np.float32)
    path = export_onnx_module(
        TextHeadGraph(text),
        {"features": feats[:2]},
        ["z_text", "z_q"],
        out_dir / "text_head.onnx",
        opset=opset,
    )
    out = OrtRunner(path, "text_head").run({"features": feats})
    ref = np.array([text.scores(s) for s in texts])
    diff = max_abs_diff(out, {"z_text": ref[:, 0], "z_q": ref[:, 1]})
    return path, _check("text_head", diff, atol)


def export_lite(
    out_dir: str | Path,
    weights_dir: str | Path | None = None,
    opset: int = MIN_OPSET,
    atol: float = ATOL,
) -> dict[str, Any]:
    """Export the lite profile's FER, TCN (step and sequence) and text head to ``out_dir``,
    check each against its source and write ``manifest.json``; return the manifest."""
    import torch

    from models.tcn import FusionTCN, check_text_model
    from models.text_ah import TextAHModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a failed export must not leave an old one
    sources = lite_source_hashes(weights_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tcn = FusionTCN.load(weights_dir)
        text = TextAHModel.load(weights_dir)
        check_text_model(tcn, text, weights_dir)
        fer, fer_diff = _export_fer(out, opset, atol)
        step, step_diff, seq, seq_diff, specs = _export_tcn(out, tcn, opset, atol)
        head, head_diff = _export_text(out, text, opset, atol)
    finally:
        torch.set_num_threads(threads)
    states = [
        {"input": s.input, "output": s.output, "rows": s.rows, "channels": s.channels}
        for s in specs
    ]
    models = {
        "fer": _entry("fer", fer, out, sources["fer"], fer_diff, "torch"),
        "tcn_step": _entry(
            "tcn_step", step, out, sources["tcn_step"], step_diff, "numpy", states=states
        ),
        "tcn_seq": _entry("tcn_seq", seq, out, sources["tcn_seq"], seq_diff, "numpy"),
        "text_head": _entry(
            "text_head",
            head,
            out,
            sources["text_head"],
            head_diff,
            "numpy",
            python="tokenisation, TF-IDF and lexical cue features (models.text_ah.FeatureSpec) "
            "and the context/mix combination (TextAHModel.combine) stay in Python",
        ),
    }
    return _write_manifest(out, "lite", models, opset, atol)


def _write_manifest(
    out: Path, profile: str, models: dict[str, Any], opset: int, atol: float
) -> dict[str, Any]:
    for m in models.values():
        m["parity"]["atol"] = atol
    manifest = {
        "format": FORMAT_VERSION,
        "profile": profile,
        "ahstream_version": ahstream_version(),
        "opset": opset,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": models,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def export_lite_in_memory(
    weights_dir: str | Path | None = None, atol: float = ATOL
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Export the lite graphs to a temporary directory (deleted after) and return the
    manifest and each graph's bytes by model name (what `serve --backend onnxruntime`
    runs without ``--onnx-dir``)."""
    with tempfile.TemporaryDirectory(prefix="ahstream-onnx-") as tmp:
        manifest = export_lite(tmp, weights_dir, atol=atol)
        graphs = {k: (Path(tmp) / m["file"]).read_bytes() for k, m in manifest["models"].items()}
    return manifest, graphs


def read_manifest(
    export_dir: str | Path, expect_sources: Mapping[str, Mapping[str, str]] | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read an export: the manifest and each graph's bytes, after checking every file's
    sha256 and, with ``expect_sources``, that the graphs were exported from those weights.
    Raises ExportError on any mismatch."""
    d = Path(export_dir)
    path = d / MANIFEST
    if not path.is_file():
        raise ExportError(f"{path} not found (make one with `ahstream export --out {d}`)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_VERSION:
        raise ExportError(f"{path}: unsupported format {manifest.get('format')!r}")
    graphs = {}
    for name, m in manifest["models"].items():
        f = d / m["file"]
        if not f.is_file():
            raise ExportError(f"{path}: {f} is missing")
        data = f.read_bytes()
        if hashlib.sha256(data).hexdigest() != m["sha256"]:
            raise ExportError(f"{f} changed since it was exported (sha256 differs)")
        if expect_sources is not None and name in expect_sources:
            if dict(m["sources"]) != dict(expect_sources[name]):
                raise ExportError(
                    f"{f} was exported from other weights than the ones loaded "
                    f"({m['sources']} vs {dict(expect_sources[name])}); export them again"
                )
        graphs[name] = data
    return manifest, graphs


# ------------------------------------------------------------------------------------ full


#: The graphs of a full export that serving runs (`read_full_export`).
FULL_SERVE_GRAPHS: tuple[str, ...] = (
    "video_encoder",
    "audio_encoder",
    "text_encoder",
    "embedding_tcn_step",
)


def _hub_offline() -> bool:
    """Whether the hub is switched off for this process (``HF_HUB_OFFLINE``)."""
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def encoder_sources(ident: str) -> dict[str, str]:
    """What an encoder export records as its source: the sha256 of each file of a local
    model directory, else ``{"hub_id": ident}``."""
    src = Path(ident).expanduser()
    if src.is_dir():
        return {f.name: sha256_file(f) for f in sorted(src.iterdir()) if f.is_file()}
    return {"hub_id": ident}


def export_full(
    out_dir: str | Path,
    head: str | Path | None = None,
    video_model: str | None = None,
    audio_model: str | None = None,
    text_model: str | None = None,
    opset: int = MIN_OPSET,
    atol: float = ATOL,
    weights_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Export the full profile; each graph checked against torch on sample inputs.

    ``weights_dir`` (a directory of ``ahstream train --profile full``) exports its TCN (sequence
    and step graphs), its head and the encoders it names; ``head`` (a ConflictAwareAH
    checkpoint) and ``video_model``/``audio_model``/``text_model`` (hub id or local path)
    add or replace pieces. Raises ExportError when there is nothing to export or the weights
    directory is unusable."""
    import torch

    tcn_file: Path | None = None
    if weights_dir is not None:
        from models.train_full import HEAD_FILE, TCN_FILE, FullProfileError, read_tcn, read_weights

        try:
            meta = read_weights(weights_dir)
            read_tcn(weights_dir, meta)  # a TCN the profile would refuse is not exported
        except FullProfileError as exc:
            raise ExportError(str(exc)) from exc
        wd = Path(weights_dir)
        tcn_file = wd / TCN_FILE
        head = wd / HEAD_FILE if head is None else head
        names = meta["encoders"]
        video_model = video_model or names["video"]
        audio_model = audio_model or names["audio"]
        text_model = text_model or names["text"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a failed export must not leave an old one
    models: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if head is not None:
            models["head"] = _export_head(out, Path(head), opset, atol)
        if tcn_file is not None:
            models.update(_export_embedding_tcn(out, tcn_file, opset, atol))
        encoders = {"video": video_model, "audio": audio_model, "text": text_model}
        for kind, ident in encoders.items():
            if ident is not None:
                models[f"{kind}_encoder"] = _export_encoder(out, kind, ident, opset, atol)
    finally:
        torch.set_num_threads(threads)
    if not models:
        raise ExportError(
            "nothing to export for the full profile: give --weights-dir CKPT (a directory of "
            "`ahstream train --profile full`), --head CKPT and/or "
            "--video-model/--audio-model/--text-model"
        )
    return _write_manifest(out, "full", models, opset, atol)


def _export_head(out: Path, ckpt: Path, opset: int, atol: float) -> dict[str, Any]:
    """The head as evaluation runs it: raw embeddings standardised with the checkpoint's
    ``stats`` (built into the graph), then the head; alpha and thresholds in the entry."""
    import torch

    from models.conflict_head import ONNX_INPUTS, ONNX_OUTPUTS, export_onnx, load_checkpoint
    from models.train_full import read_checkpoint

    if not ckpt.is_file():
        raise ExportError(f"head checkpoint not found: {ckpt}")
    net, extra = read_checkpoint(ckpt, load_checkpoint)
    stats = extra.get("stats")
    try:
        path = export_onnx(net, out / "conflict_head.onnx", opset=opset, stats=stats)
    except ValueError as exc:
        raise ExportError(f"{ckpt}: {exc}") from exc
    rng = np.random.default_rng(2)
    runner = OrtRunner(path, "conflict_head")
    diff = 0.0
    names = ONNX_INPUTS[:3]
    for b in (1, 3):
        # Raw embeddings around the training statistics, as the encoders give them.
        feeds = {}
        for n, d in zip(names, net.cfg.in_dims, strict=True):
            mean = np.asarray(stats[n]["mean"], np.float32) if stats else np.zeros(d, np.float32)
            std = np.asarray(stats[n]["std"], np.float32) if stats else np.ones(d, np.float32)
            feeds[n] = (mean + std * rng.normal(size=(b, d))).astype(np.float32)
        present = np.ones((b, 3), np.float32)
        present[0, rng.integers(0, 3)] = 0.0  # a missing modality too
        feeds["present"] = present
        # The reference is `models.train_full`'s path: standardise, then the torch head.
        xs = []
        for n in names:
            x = feeds[n]
            if stats:
                mean = np.asarray(stats[n]["mean"], np.float32)
                x = (x - mean) / np.asarray(stats[n]["std"], np.float32)
            xs.append(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        with torch.inference_mode():
            full, text = net(*xs, torch.from_numpy(present > 0.5))[:2]
        ref = dict(zip(ONNX_OUTPUTS, (full.numpy(), text.numpy()), strict=True))
        diff = max(diff, max_abs_diff(runner.run(feeds), ref))
    decision = {k: extra[k] for k in ("alpha", "threshold", "video_level") if k in extra}
    return _entry(
        "head",
        path,
        out,
        {ckpt.name: sha256_file(ckpt)},
        _check("head", diff, atol),
        "torch",
        standardised=stats is not None,
        python="p = alpha*sigmoid(text_logit) + (1-alpha)*sigmoid(full_logit) on rows with "
        "text, sigmoid(full_logit) without (models.conflict_head.blend); a video's p is the "
        "mean over its rows; A/H when p >= threshold",
        **decision,
    )


def _export_embedding_tcn(
    out: Path, tcn_file: Path, opset: int, atol: float
) -> dict[str, dict[str, Any]]:
    """The frame-level TCN: its sequence forward and its step graph, each checked against
    the torch forward over random embeddings with missing modalities."""
    import torch

    from models.embedding_tcn import (
        ONNX_INPUTS,
        export_onnx,
        export_step_onnx,
        step_state_specs,
    )
    from models.embedding_tcn import load as load_tcn
    from models.train_full import read_checkpoint

    if not tcn_file.is_file():
        raise ExportError(f"TCN weights not found: {tcn_file}")
    tcn, extra = read_checkpoint(tcn_file, load_tcn)
    seq_path = export_onnx(tcn, out / "embedding_tcn.onnx", opset=opset)
    step_path = export_step_onnx(tcn, out / "embedding_tcn_step.onnx", opset=opset)
    specs = step_state_specs(tcn.cfg)
    rng = np.random.default_rng(4)
    b, t = 3, tcn.cfg.receptive_field + 9  # past the receptive field: the cache wraps
    x = {
        n: rng.normal(size=(b, t, d)).astype(np.float32)
        for n, d in zip(ONNX_INPUTS[:3], tcn.cfg.in_dims, strict=True)
    }
    x["present"] = (rng.random((b, t, 3)) < 0.8).astype(np.float32)
    with torch.inference_mode():
        ref = tcn(*(torch.from_numpy(x[n]) for n in ONNX_INPUTS)).numpy()
    seq = OrtRunner(seq_path, "embedding_tcn")
    seq_diff = max(
        max_abs_diff(seq.run(x), {"logit": ref}),
        max_abs_diff(seq.run({n: v[:1, :1] for n, v in x.items()}), {"logit": ref[:1, :1]}),
    )
    step = OrtRunner(step_path, "embedding_tcn_step")
    state = {s.input: np.zeros((b, s.channels, s.rows), np.float32) for s in specs}
    step_diff = 0.0
    for k in range(t):
        o = step.run({**{n: v[:, k] for n, v in x.items()}, **state})
        step_diff = max(step_diff, float(np.max(np.abs(o["logit"] - ref[:, k]))))
        state = {s.input: o[s.output] for s in specs}
    sources = {tcn_file.name: sha256_file(tcn_file)}
    # the frame-level threshold, the rate, and the served video decision (method, threshold)
    keep = {
        k: extra[k] for k in ("threshold", "hz", "video_threshold", "video_method") if k in extra
    }
    states = [
        {"input": s.input, "output": s.output, "channels": s.channels, "rows": s.rows}
        for s in specs
    ]
    return {
        "embedding_tcn": _entry(
            "embedding_tcn",
            seq_path,
            out,
            sources,
            _check("embedding_tcn", seq_diff, atol),
            "torch",
            **keep,
        ),
        "embedding_tcn_step": _entry(
            "embedding_tcn_step",
            step_path,
            out,
            sources,
            _check("embedding_tcn_step", step_diff, atol),
            "torch",
            states=states,
            **keep,
        ),
    }


def read_full_export(
    export_dir: str | Path, weights_dir: str | Path
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and graphs of a full-profile export made from ``weights_dir`` (its
    `FULL_SERVE_GRAPHS` must be there, exported from that TCN and the encoders it names).
    Raises ExportError (with what to run) otherwise."""
    from models.train_full import TCN_FILE, FullProfileError, read_weights

    try:
        meta = read_weights(weights_dir)
    except FullProfileError as exc:
        raise ExportError(str(exc)) from exc
    d = Path(export_dir)
    again = f"`ahstream export --profile full --weights-dir {weights_dir} --out {d}`"
    if not d.is_dir():
        raise ExportError(f"{d}: export directory not found (make it with {again})")
    tcn = {TCN_FILE: sha256_file(Path(weights_dir) / TCN_FILE)}
    expect = {"embedding_tcn_step": tcn, "embedding_tcn": tcn}
    for kind in ("video", "audio", "text"):
        expect[f"{kind}_encoder"] = encoder_sources(str(meta["encoders"][kind]))
    try:
        manifest, graphs = read_manifest(d, expect_sources=expect)
    except ExportError as exc:
        raise ExportError(f"{exc}; run {again}") from exc
    missing = [g for g in FULL_SERVE_GRAPHS if g not in graphs]
    if manifest.get("profile") != "full" or missing:
        raise ExportError(
            f"{d} is not a full-profile export of {weights_dir} (missing {', '.join(missing)}); "
            f"run {again}"
        )
    return manifest, graphs


_ENCODER_CLASSES = {
    "video": "FaceClipEncoder",
    "audio": "SpeechEncoder",
    "text": "TextEmotionEncoder",
}


def _encoder_sample(kind: str, encoder: Any) -> dict[str, np.ndarray]:
    """A batch of two inputs of different sizes, made by the encoder's own preprocessing."""
    rng = np.random.default_rng(3)
    if kind == "video":
        clips = [rng.integers(0, 256, (n, 40, 48, 3), dtype=np.uint8) for n in (5, 20)]
        return {"pixel_values": np.stack([encoder.preprocess(list(c)) for c in clips])}
    if kind == "audio":
        n = max(4 * encoder.min_samples, 8000)
        return encoder.preprocess([0.1 * rng.standard_normal(n), 0.1 * rng.standard_normal(n // 2)])
    return encoder.preprocess(["Um, I guess I could try, but I am not sure.", "Yes."])


def _export_encoder(out: Path, kind: str, ident: str, opset: int, atol: float) -> dict[str, Any]:
    """Export one encoder of `models.hub_encoders` (hub id or local directory) and check it
    against its torch runner on two inputs of different sizes."""
    try:
        from models import hub_encoders
    except ImportError as exc:
        raise ExportError(f"cannot export the {kind} encoder: {exc}") from exc
    cls = getattr(hub_encoders, _ENCODER_CLASSES[kind])
    # transformers fetches a hub id not in the cache, unless HF_HUB_OFFLINE says not to.
    offline = _hub_offline()
    kwargs: dict[str, Any] = {"local_files_only": offline}
    if kind == "audio":
        kwargs["normalize"] = False  # preprocessing outside the graph: no config needed
    try:
        encoder = cls.from_pretrained(ident, **kwargs)
    except FileNotFoundError as exc:
        note = " (HF_HUB_OFFLINE is set: only the hub cache was searched)" if offline else ""
        raise ExportError(f"{exc}{note}") from exc
    path = Path(encoder.export_onnx(out / f"{kind}_encoder.onnx", opset=opset))
    sample = _encoder_sample(kind, encoder)
    ref = encoder.runner.run(sample)
    diff = max_abs_diff(OrtRunner(path, f"{kind}_encoder").run(sample), ref)
    sources = encoder_sources(ident)
    return _entry(
        f"{kind}_encoder",
        path,
        out,
        sources,
        _check(f"{kind}_encoder", diff, atol),
        "torch",
        model=ident,
        encoder=cls.__name__,
    )
