"""The text A/H model's two linear heads as an ONNX graph, and the model running them.

What goes to ONNX: ``z_text = coef . f + intercept`` and the question head's
``z_q = logit(softmax(q_coef f + q_intercept) . q_rates)`` over the dense feature vector
``f`` (`TextHeadGraph`). What stays in Python: text normalisation, tokenisation, the
TF-IDF and lexical-cue features (`models.text_ah.FeatureSpec`), and the context/mix
combination into a probability (`TextAHModel.combine`), which are string work or scalars.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.text_ah import TextAHModel

__all__ = ["LOGIT_EPS", "TextHeadGraph", "dense_features", "OnnxTextAHModel"]

LOGIT_EPS = 1e-6  # models.text_ah._logit clips the prior to [eps, 1 - eps]


def dense_features(model: TextAHModel, text: str) -> np.ndarray:
    """The dense (n_features,) float32 feature vector of one text."""
    idx, val = model.spec.featurize(text)
    f = np.zeros(model.spec.n_features, np.float32)
    np.add.at(f, idx, val.astype(np.float32))
    return f


class TextHeadGraph(nn.Module):
    """features [B, n] -> (z_text [B], z_q [B]) of a `TextAHModel` (float32)."""

    def __init__(self, model: TextAHModel) -> None:
        super().__init__()

        def p(a: Any) -> nn.Parameter:
            return nn.Parameter(torch.as_tensor(np.asarray(a), dtype=torch.float32), False)

        self.coef = p(model.coef)
        self.intercept = float(model.intercept)
        self.has_q = bool(model.q_coef.size)
        if self.has_q:
            self.q_coef = p(model.q_coef)
            self.q_intercept = p(model.q_intercept)
            self.q_rates = p(model.q_rates)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """A/H logit and inferred-question prior logit per row."""
        z_text = (features @ self.coef.unsqueeze(-1)).squeeze(-1) + self.intercept
        if not self.has_q:
            return z_text, torch.zeros_like(z_text)
        q = torch.softmax(features @ self.q_coef.t() + self.q_intercept, dim=-1)
        prior = (q * self.q_rates).sum(dim=-1).clamp(LOGIT_EPS, 1.0 - LOGIT_EPS)
        return z_text, torch.log(prior / (1.0 - prior))


@dataclass
class OnnxTextAHModel(TextAHModel):
    """A `TextAHModel` whose ``scores`` run the exported heads under a `Runner`
    (features and the final combination as in the numpy model)."""

    runner: Any = None  # models.runner.Runner over text_head.onnx

    @classmethod
    def wrap(cls, model: TextAHModel, runner: Any) -> OnnxTextAHModel:
        """The same model (vocabularies, thresholds, metadata) scored by ``runner``."""
        return cls(**{f.name: getattr(model, f.name) for f in fields(model)}, runner=runner)

    def scores(self, text: str) -> tuple[float, float]:
        """(z_text, z_q) of one text, from the ONNX graph."""
        out = self.runner.run({"features": dense_features(self, text)[None]})
        return float(out["z_text"][0]), float(out["z_q"][0])
