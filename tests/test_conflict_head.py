"""ConflictAwareAH: shapes, masks, blend and its tuning, a planted conflict it must learn,
ensembling, multi-window inference and ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.conflict_head import (
    TOKENS,
    ConflictAwareAH,
    HeadConfig,
    OnnxConflictHead,
    blend,
    ensemble_probs,
    export_onnx,
    load_checkpoint,
    multi_window_probs,
    save_checkpoint,
    token_mask,
    tune_blend,
)

DIMS = (8, 6, 10)  # video, audio, text widths: all different on purpose


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _head(seed: int = 0, dropout: float = 0.1, d: int = 32) -> ConflictAwareAH:
    torch.manual_seed(seed)
    return ConflictAwareAH(HeadConfig(*DIMS, d=d, heads=4, ff=64, dropout=dropout)).eval()


def _inputs(b: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, d, generator=g) for d in DIMS)  # type: ignore[return-value]


def test_shapes() -> None:
    head = _head()
    v, a, t = _inputs(7)
    full, text, pooled = head(v, a, t, return_embedding=True)
    assert full.shape == (7,) and text.shape == (7,) and pooled.shape == (7, 32)
    assert len(head(v, a, t)) == 2
    assert head.prototype_logits(pooled).shape == (7, 2)
    p = head.predict_proba(v, a, t)
    assert p.shape == (7,) and bool(((p > 0) & (p < 1)).all())


def test_token_mask_drops_conflicts_of_missing_modalities() -> None:
    present = torch.tensor([[True, False, True], [False, False, True], [True, True, True]])
    keep = token_mask(present)
    names = [dict(zip(TOKENS, row, strict=True)) for row in keep.tolist()]
    assert names[0] == {
        "v": True,
        "a": False,
        "t": True,
        "|v-a|": False,
        "|v-t|": True,
        "|a-t|": False,
    }
    assert [k for k, on in names[1].items() if on] == ["t"]
    assert all(names[2].values())


@pytest.mark.parametrize("missing", [(0,), (1,), (0, 1), (2,), (0, 1, 2)])
def test_missing_modality_does_not_change_output(missing: tuple[int, ...]) -> None:
    head = _head()
    v, a, t = _inputs(4)
    present = torch.ones(4, 3, dtype=torch.bool)
    present[:, list(missing)] = False
    with torch.no_grad():
        full, text, pooled = head(v, a, t, present, return_embedding=True)
        # Replace the missing modalities with garbage, NaN and inf included.
        junk = [x.clone() for x in (v, a, t)]
        for m in missing:
            junk[m] = torch.randn_like(junk[m]) * 100
            junk[m][0, 0] = float("nan")
            junk[m][1, 0] = float("inf")
        full2, text2, pooled2 = head(*junk, present, return_embedding=True)
    assert torch.isfinite(full2).all() and torch.isfinite(pooled2).all()
    torch.testing.assert_close(full2, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled2, pooled, rtol=0, atol=1e-6)
    if 2 not in missing:
        torch.testing.assert_close(text2, text, rtol=0, atol=1e-6)


def test_present_modality_does_change_output() -> None:
    head = _head()
    v, a, t = _inputs(4)
    present = torch.tensor([[False, False, True]] * 4)
    with torch.no_grad():
        full = head(v, a, t, present)[0]
        full_t = head(v, a, t + 1.0, present)[0]
        full_v = head(v, a, t, torch.ones(4, 3, dtype=torch.bool))[0]
    assert (full - full_t).abs().min() > 1e-4  # text-only rows still use text
    assert (full - full_v).abs().min() > 1e-4  # adding video changes the answer


def test_mixed_batch_rows_are_independent() -> None:
    """A row's output does not depend on the other rows' presence patterns."""
    head = _head()
    v, a, t = _inputs(5)
    present = torch.tensor(
        [[1, 1, 1], [0, 0, 1], [1, 0, 1], [0, 1, 1], [0, 0, 0]], dtype=torch.bool
    )
    with torch.no_grad():
        batch = head(v, a, t, present)[0]
        single = torch.cat(
            [
                head(v[i : i + 1], a[i : i + 1], t[i : i + 1], present[i : i + 1])[0]
                for i in range(5)
            ]
        )
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-5)


def test_blend_formula_torch_and_numpy() -> None:
    text = torch.tensor([0.0, 2.0, -1.0])
    full = torch.tensor([1.0, -3.0, 0.5])
    expect = 0.6 * torch.sigmoid(text) + 0.4 * torch.sigmoid(full)
    torch.testing.assert_close(blend(text, full, 0.6), expect)
    np.testing.assert_allclose(blend(text.numpy(), full.numpy(), 0.6), expect.numpy(), atol=1e-7)
    torch.testing.assert_close(blend(text, full, 1.0), torch.sigmoid(text))
    torch.testing.assert_close(blend(text, full, 0.0), torch.sigmoid(full))
    with pytest.raises(ValueError):
        blend(text, full, 1.5)


def test_blend_uses_the_full_model_alone_without_text() -> None:
    text = torch.tensor([0.0, 2.0, float("nan"), 40.0])  # rows 2, 3 have no text
    full = torch.tensor([1.0, -3.0, 0.5, -0.2])
    has_text = torch.tensor([True, True, False, False])
    expect = torch.where(has_text, blend(text, full, 0.6), torch.sigmoid(full))
    got = blend(text, full, 0.6, has_text)
    torch.testing.assert_close(got, expect)
    torch.testing.assert_close(got[2:], torch.sigmoid(full[2:]))  # whatever the text logit
    np.testing.assert_allclose(
        blend(text.numpy(), full.numpy(), 0.6, has_text.numpy().astype(float)),
        expect.numpy(),
        atol=1e-7,
    )
    # Callers without presence information: every row counts as having text.
    torch.testing.assert_close(blend(text[:2], full[:2], 0.6), expect[:2])


def test_predict_proba_ignores_the_text_head_where_text_is_missing() -> None:
    head = _head()
    v, a, t = _inputs(4)
    present = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        full, text = head(v, a, t, present)
    p = head.predict_proba(v, a, t, present, alpha=0.7)
    torch.testing.assert_close(p[:2], torch.sigmoid(full[:2]))
    torch.testing.assert_close(p[2:], 0.7 * torch.sigmoid(text[2:]) + 0.3 * torch.sigmoid(full[2:]))
    assert (blend(text, full, 0.7)[:2] - p[:2]).abs().min() > 1e-4  # the mask matters here


def test_text_loss_only_over_rows_with_text() -> None:
    head = _head()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    full = torch.tensor([1.0, -2.0, 0.5, 0.3])
    text = torch.tensor([0.5, -1.0, 4.0, -4.0], requires_grad=True)
    y = torch.tensor([1, 0, 0, 1])
    has_text = torch.tensor([True, True, False, False])
    out = head.loss(full, text, y, smoothing=0.1, has_text=has_text)
    target = torch.tensor([0.95, 0.05, 0.05, 0.95])
    torch.testing.assert_close(out.text, bce(text[:2], target[:2]))
    torch.testing.assert_close(out.full, bce(full, target))  # the full model sees every row
    torch.testing.assert_close(out.total, 0.5 * out.full + 0.5 * out.text)
    out.total.backward()
    assert text.grad is not None
    assert text.grad[2:].abs().max() == 0 and text.grad[:2].abs().min() > 0
    # No text in the batch: no text loss, and finite gradients.
    none = head.loss(full, text, y, has_text=torch.zeros(4, dtype=torch.bool))
    assert float(none.text.detach()) == 0.0
    torch.testing.assert_close(none.total, 0.5 * bce(full, y.float()))
    text.grad = None
    none.total.backward()
    assert text.grad is not None and torch.isfinite(text.grad).all() and not text.grad.any()


def test_tune_blend_with_rows_without_text() -> None:
    """Rows 0-1 have text that separates them (full model undecided); rows 2-3 have none:
    the full model separates them and the text head gives its constant answer to no input,
    which would tie them at any alpha near 1 if it were blended in."""
    text = np.array([3.0, -3.0, 5.0, 5.0])
    full = np.array([0.0, 0.0, 2.0, -2.0])
    y = np.array([1, 0, 1, 0])
    has_text = np.array([1, 1, 0, 0])
    choice = tune_blend(text, full, y, alphas=[1.0], has_text=has_text)
    assert choice.macro_f1 == pytest.approx(1.0)
    assert tune_blend(text, full, y, alphas=[1.0]).macro_f1 < 1.0
    grid = tune_blend(text, full, y, has_text=has_text)
    p = blend(text, full, grid.alpha, has_text)
    assert grid.macro_f1 == pytest.approx(1.0)
    assert ((p >= grid.threshold).astype(int) == y).all()


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def test_tune_blend_finds_the_only_working_alpha() -> None:
    """Two positives separable from the negative only for alpha in (0.58, 0.62).

    p(alpha) = alpha*s_text + (1-alpha)*s_full is linear in alpha: positive A rises
    through the negative's 0.3 at alpha = 0.58, positive B falls through it at 0.62, so
    on the 0.05 grid only alpha = 0.6 reaches macro F1 1, with a threshold in
    (0.3, min(pA, pB)] = (0.3, 0.3086].
    """
    s_text = np.array([0.05 + 0.25 / 0.58, 0.05, 0.3, 0.3])
    s_full = np.array([0.05, 0.269 / 0.38, 0.3, 0.3])
    y = np.array([1, 1, 0, 0])
    choice = tune_blend(_logit(s_text), _logit(s_full), y)
    assert choice.alpha == pytest.approx(0.6)
    assert choice.macro_f1 == pytest.approx(1.0)
    assert 0.3 < choice.threshold <= 0.3086
    p = blend(_logit(s_text), _logit(s_full), choice.alpha)
    assert ((p >= choice.threshold).astype(int) == y).all()
    # Off the working window nothing separates the classes.
    off = tune_blend(_logit(s_text), _logit(s_full), y, alphas=[0.5, 0.55, 0.65, 0.7])
    assert off.macro_f1 < 1.0


def test_tune_blend_ignores_a_useless_text_head() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    full = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 0.2, 200)
    text = rng.normal(0, 5.0, 200)  # confident noise
    choice = tune_blend(torch.tensor(text), torch.tensor(full), torch.tensor(y))
    assert choice.macro_f1 == pytest.approx(1.0)
    assert choice.alpha <= 0.1


def _planted(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Labels set by face/words conflict: v and t share a latent iff there is no A/H.

    t has the same distribution in both classes, so text alone is at chance; the
    audio is noise and missing for a quarter of the samples.
    """
    g = torch.Generator().manual_seed(seed)
    k = 3
    mix = torch.Generator().manual_seed(1234)  # the same "encoders" for train and val
    w_v, w_t = torch.randn(k, DIMS[0], generator=mix), torch.randn(k, DIMS[2], generator=mix)
    z = torch.randn(n, k, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    z_v = torch.where(y[:, None] == 1, torch.randn(n, k, generator=g), z)
    v = z_v @ w_v + 0.05 * torch.randn(n, DIMS[0], generator=g)
    t = z @ w_t + 0.05 * torch.randn(n, DIMS[2], generator=g)
    a = torch.randn(n, DIMS[1], generator=g)
    present = torch.ones(n, 3, dtype=torch.bool)
    present[:, 1] = torch.rand(n, generator=g) > 0.25
    return v, a, t, present, y


def test_learns_planted_conflict_that_text_cannot() -> None:
    torch.manual_seed(0)
    head = ConflictAwareAH(HeadConfig(*DIMS, d=32, heads=4, ff=64, dropout=0.0))
    v, a, t, present, y = _planted(768, seed=1)
    vv, va, vt, vp, vy = _planted(400, seed=2)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    proto_losses = []
    head.train()
    for _ in range(150):
        idx = torch.randperm(768)[:256]
        full, text, pooled = head(v[idx], a[idx], t[idx], present[idx], return_embedding=True)
        loss = head.loss(full, text, y[idx], smoothing=0.05, pooled=pooled, proto_weight=0.5)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        proto_losses.append(loss.proto.item())
    head.eval()
    with torch.no_grad():
        full, text = head(vv, va, vt, vp)
    acc_full = float(((full > 0).long() == vy).float().mean())
    acc_text = float(((text > 0).long() == vy).float().mean())
    assert np.mean(proto_losses[-10:]) < 0.7 * np.mean(proto_losses[:10])
    assert acc_full >= 0.9, (acc_full, acc_text)
    assert acc_text < 0.65, acc_text
    assert tune_blend(text, full, vy).macro_f1 >= 0.9
    assert tune_blend(text, full, vy, alphas=[1.0]).macro_f1 < 0.65  # text alone, tuned


def test_loss_parts_and_smoothing() -> None:
    head = _head()
    full = torch.tensor([3.0, -2.0])
    text = torch.tensor([0.5, 0.5])
    y = torch.tensor([1, 0])
    out = head.loss(full, text, y)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(out.total, 0.5 * bce(full, y.float()) + 0.5 * bce(text, y.float()))
    assert float(out.proto) == 0.0
    smooth = head.loss(full, text, y, smoothing=0.2)
    torch.testing.assert_close(smooth.full, bce(full, torch.tensor([0.9, 0.1])))
    with pytest.raises(ValueError):
        head.loss(full, text, y, proto_weight=1.0)  # needs the pooled embedding


def test_ensemble_is_the_mean_of_members() -> None:
    heads = [_head(seed) for seed in (0, 1, 2)]
    v, a, t = _inputs(6)
    present = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1]] * 2, dtype=torch.bool)
    members = torch.stack([h.predict_proba(v, a, t, present, 0.6) for h in heads])
    torch.testing.assert_close(ensemble_probs(heads, v, a, t, present, 0.6), members.mean(0))
    per_head = ensemble_probs(heads, v, a, t, present, [0.0, 0.5, 1.0])
    expect = torch.stack(
        [
            h.predict_proba(v, a, t, present, al)
            for h, al in zip(heads, [0.0, 0.5, 1.0], strict=True)
        ]
    ).mean(0)
    torch.testing.assert_close(per_head, expect)
    assert len({float(m[0]) for m in members}) == 3  # seeds really differ


def test_checkpoints_round_trip_into_an_ensemble(tmp_path: Path) -> None:
    heads = [_head(seed) for seed in (3, 4)]
    paths = []
    for i, h in enumerate(heads):
        paths.append(tmp_path / f"seed{i}.pt")
        save_checkpoint(h, paths[-1], alpha=0.6, threshold=0.42, seed=i)
    loaded = [load_checkpoint(p) for p in paths]
    assert loaded[1][1] == {"alpha": 0.6, "threshold": 0.42, "seed": 1}
    v, a, t = _inputs(3)
    torch.testing.assert_close(
        ensemble_probs([h for h, _ in loaded], v, a, t), ensemble_probs(heads, v, a, t)
    )


def test_multi_window_is_the_mean_over_windows() -> None:
    heads = [_head(0), _head(1)]
    b, w = 3, 4
    g = torch.Generator().manual_seed(5)
    v, a, t = (torch.randn(b, w, d, generator=g) for d in DIMS)
    present = torch.ones(b, w, 3, dtype=torch.bool)
    present[0, 1, 0] = False  # one window without a face
    window_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    v[2, 3] = float("nan")  # padding windows may hold anything
    got = multi_window_probs(heads, v, a, t, present, window_mask, alpha=0.6)
    for i in range(b):
        n = int(window_mask[i].sum())
        per_window = ensemble_probs(heads, v[i, :n], a[i, :n], t[i, :n], present[i, :n], 0.6)
        torch.testing.assert_close(got[i], per_window.mean(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        multi_window_probs(heads, v, a, t, present, torch.zeros(b, w, dtype=torch.bool))
    v[2, 3] = 0.0
    # One head, no masks, one presence pattern for all windows.
    single = multi_window_probs(heads[0], v, a, t, torch.ones(b, 3, dtype=torch.bool))
    expect = (
        heads[0]
        .predict_proba(v.reshape(b * w, -1), a.reshape(b * w, -1), t.reshape(b * w, -1))
        .reshape(b, w)
        .mean(1)
    )
    torch.testing.assert_close(single, expect)


def test_onnx_parity_dynamic_batch(tmp_path: Path) -> None:
    head = _head(7)
    path = export_onnx(head, tmp_path / "conflict_head.onnx", DIMS)
    import onnx

    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    runner = OnnxConflictHead(path)
    for b in (1, 5):
        v, a, t = _inputs(b, seed=10 + b)
        present = torch.ones(b, 3, dtype=torch.bool)
        if b == 5:
            present[1, 0] = present[2, 1] = False
            present[3, :2] = False
            present[4, :] = False
        with torch.no_grad():
            full, text = head(v, a, t, present)
        o_full, o_text = runner(v.numpy(), a.numpy(), t.numpy(), present.numpy())
        assert o_full.shape == (b,) and o_text.shape == (b,)
        np.testing.assert_allclose(o_full, full.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(o_text, text.numpy(), rtol=0, atol=1e-4)
        # The same probabilities from the exported logits, text mask included.
        np.testing.assert_allclose(
            blend(o_text, o_full, 0.6, present.numpy()[:, 2]),
            head.predict_proba(v, a, t, present, 0.6).numpy(),
            rtol=0,
            atol=1e-4,
        )
    with pytest.raises(ValueError):
        export_onnx(head, tmp_path / "x.onnx", (1, 2, 3))
