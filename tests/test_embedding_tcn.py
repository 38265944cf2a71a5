"""The full profile's embedding TCN: causal step == full forward, save/load, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.embedding_tcn import (
    ONNX_INPUTS,
    EmbeddingTCN,
    EmbeddingTCNConfig,
    TCNStream,
    export_onnx,
    load,
)
from models.runner import OrtRunner, TorchRunner, max_abs_diff

torch.set_num_threads(1)
CFG = EmbeddingTCNConfig(video_dim=12, audio_dim=10, text_dim=8, d=8, channels=16)


def _model(seed: int = 0) -> EmbeddingTCN:
    """A random model with non-trivial normalisation (the seed fixes every weight)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    m = EmbeddingTCN(CFG)
    m.set_normalization([(rng.normal(size=d), rng.uniform(0.5, 2.0, d)) for d in CFG.in_dims])
    # Perturb every parameter (LayerNorm starts at 1/0, heads near 0) so no path is trivial.
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def _inputs(rng: np.random.Generator, b: int, t: int) -> dict[str, np.ndarray]:
    x = {
        n: rng.normal(size=(b, t, d)).astype(np.float32)
        for n, d in zip(ONNX_INPUTS[:3], CFG.in_dims, strict=True)
    }
    x["present"] = (rng.random((b, t, 3)) > 0.3).astype(np.float32)
    return x


@pytest.mark.parametrize("length", [1, 7, 40])
def test_step_equals_full_forward(length: int) -> None:
    m = _model()
    x = _inputs(np.random.default_rng(length), 2, length)
    tens = {k: torch.from_numpy(v) for k, v in x.items()}
    with torch.no_grad():
        full = m(*(tens[n] for n in ONNX_INPUTS))
        state = m.init_state(2)
        steps = []
        for i in range(length):
            logit, state = m.step(*(tens[n][:, i] for n in ONNX_INPUTS), state)
            steps.append(logit)
    stepped = torch.stack(steps, dim=1)
    assert full.shape == (2, length)
    assert float((full - stepped).abs().max()) <= 1e-5
    # The model is not constant: distinct inputs give distinct logits.
    assert float(full.std()) > 1e-3 or length == 1


def test_causal_and_masked() -> None:
    m = _model(1)
    rng = np.random.default_rng(3)
    x = {k: torch.from_numpy(v) for k, v in _inputs(rng, 1, 20).items()}
    with torch.no_grad():
        base = m(*(x[n] for n in ONNX_INPUTS))
        # The future does not change the past.
        fut = {k: v.clone() for k, v in x.items()}
        fut["video"][:, 12:] += 5.0
        after = m(*(fut[n] for n in ONNX_INPUTS))
        assert torch.allclose(base[:, :12], after[:, :12], atol=1e-6)
        assert not torch.allclose(base[:, 12:], after[:, 12:], atol=1e-3)
        # A missing modality's values are ignored, NaN included.
        miss = {k: v.clone() for k, v in x.items()}
        miss["present"][..., 1] = 0.0
        ref = m(*(miss[n] for n in ONNX_INPUTS))
        miss["audio"][:] = float("nan")
        assert torch.equal(ref, m(*(miss[n] for n in ONNX_INPUTS)))


def test_stream_matches_forward_and_resets() -> None:
    m = _model(2)
    x = _inputs(np.random.default_rng(5), 1, 9)
    with torch.no_grad():
        p = torch.sigmoid(m(*(torch.from_numpy(x[n]) for n in ONNX_INPUTS)))[0].numpy()
    stream = TCNStream(m)
    for _ in range(2):  # a reset stream starts over exactly
        got = [stream.step(*(x[n][0, i] for n in ONNX_INPUTS)) for i in range(9)]
        np.testing.assert_allclose(got, p, atol=1e-5)
        stream.reset()


def test_save_load_roundtrip(tmp_path) -> None:
    m = _model(3)
    path = m.save(tmp_path / "tcn.pt", threshold=0.42, hz=2.0)
    loaded, extra = load(path)
    assert extra == {"threshold": 0.42, "hz": 2.0}
    assert loaded.cfg == CFG and not loaded.training
    x = {k: torch.from_numpy(v) for k, v in _inputs(np.random.default_rng(7), 3, 11).items()}
    with torch.no_grad():
        assert torch.equal(m(*(x[n] for n in ONNX_INPUTS)), loaded(*(x[n] for n in ONNX_INPUTS)))


def test_onnx_parity_dynamic_batch_and_time(tmp_path) -> None:
    m = _model(4)
    path = export_onnx(m, tmp_path / "tcn.onnx")
    ort = OrtRunner(path, name="embedding_tcn")
    ref = TorchRunner(m, ONNX_INPUTS, ("logit",), name="embedding_tcn")
    assert ort.input_names == ONNX_INPUTS and ort.output_names == ("logit",)
    rng = np.random.default_rng(11)
    for b, t in ((1, 1), (3, 17), (2, 64)):  # shapes other than the traced (2, 5)
        x = _inputs(rng, b, t)
        out = ort.run(x)
        assert out["logit"].shape == (b, t)
        assert max_abs_diff(out, ref.run(x)) <= 1e-4
