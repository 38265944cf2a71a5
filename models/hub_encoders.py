"""The full profile's pretrained encoders, loaded from a model hub id or a local directory.

Three encoders, each a network behind a ``models.runner.Runner`` (``.runner``: a
``TorchRunner`` by default; ``use_runner`` swaps in an ``OrtRunner`` or a TensorRT runner
built from ``export_onnx``) plus the numpy pre/post-processing around it:

- ``FaceClipEncoder`` — VideoMAE (default ``MCG-NJU/videomae-base``) on face clips.
  ``encode(clips) -> [B, dim]``: each clip is a list (or array) of T RGB uint8 face crops
  of any size and any T; ``preprocess(frames)`` resamples T to the model's ``num_frames``
  (16), resizes to its ``image_size`` (224, shortest edge then centre crop) and applies
  ImageNet mean/std. The embedding is the mean over all tokens of the last hidden state.
- ``SpeechEncoder`` — HuBERT (default ``facebook/hubert-base-ls960``) on 16 kHz mono float
  audio of any lengths. ``encode(audios) -> [B, dim]`` is the masked mean of the last hidden
  states over the frames that hold audio; ``encode_frames(audios) -> (states [B, F, dim],
  frame_mask [B, F])`` is for a trainable ``MaskedAttentionPool``. Clips are normalised
  (zero mean, unit variance) when ``.normalize``: the ``do_normalize`` of the model's
  ``preprocessor_config.json`` unless ``from_pretrained(normalize=...)`` says; a model
  without that config normalises exactly when its feature extractor uses LayerNorm
  (``feat_extract_norm == "layer"``, how fairseq trained the large models; the
  GroupNorm base models were trained on raw audio), with a warning. Padding changes nothing:
  the base model's GroupNorm feature layer takes its statistics over valid frames only
  (HuggingFace's forward takes them over the padding too) and attention ignores padding.
- ``TextEmotionEncoder`` — RoBERTa fine-tuned on GoEmotions (default
  ``SamLowe/roberta-base-go_emotions``; any BERT-style ``AutoModelForSequenceClassification``
  works, e.g. BERT or DistilBERT). ``encode(texts) -> [B, dim]`` is the last layer's
  state at the first token (``<s>``/``[CLS]``); ``emotions(texts) -> [B, labels]`` the
  sigmoids of the model's own logits, named by ``labels`` (``config.id2label``).

All three: ``Cls.from_pretrained(id_or_path, device="cpu", local_files_only=False)``,
``.name``, ``.dim``, ``.runner``, ``.use_runner(runner)``, ``.export_onnx(path, opset=17)``.
``from_pretrained`` refuses files of another architecture (`HubModelMismatchError`, e.g. a
wav2vec2 checkpoint for HuBERT) instead of running randomly initialised weights.
Nothing here serves a probability: these are feature extractors for heads trained on BAH.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.runner import MIN_OPSET, Runner, TorchRunner, export_onnx_module

__all__ = [
    "DEFAULT_SPEECH_ID",
    "DEFAULT_TEXT_ID",
    "DEFAULT_VIDEO_ID",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FaceClipEncoder",
    "HubModelMismatchError",
    "HubModelNotFoundError",
    "MaskedAttentionPool",
    "SpeechEncoder",
    "TextEmotionEncoder",
    "masked_mean",
    "public_name",
    "source_name",
]

DEFAULT_VIDEO_ID = "MCG-NJU/videomae-base"
DEFAULT_SPEECH_ID = "facebook/hubert-base-ls960"
DEFAULT_TEXT_ID = "SamLowe/roberta-base-go_emotions"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SAMPLE_RATE = 16000
PREPROCESSOR_CONFIG = "preprocessor_config.json"


class HubModelNotFoundError(FileNotFoundError):
    """A model directory does not exist, or a hub id is neither cached nor downloadable."""


class HubModelMismatchError(HubModelNotFoundError):
    """A model's files hold another architecture: weights the encoder needs are not there
    (transformers would silently initialise them at random)."""


#: Weights a checkpoint may leave out: the encoders never use them (HuBERT's mask embedding
#: is for masked pre-training only).
_UNUSED_WEIGHTS = ("masked_spec_embed",)


def _looks_like_path(s: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else is meant as a directory."""
    return s.startswith(("/", ".", "~")) or s.count("/") > 1 or s.endswith("/") or "\\" in s


def source_name(id_or_path: str | Path) -> str:
    """The name an encoder records (weights, cache keys, `session.started`): the absolute
    path of a local directory, so that weights trained with a relative path load from any
    working directory; a hub id as given."""
    path = Path(str(id_or_path)).expanduser()
    return str(path.resolve()) if path.exists() else str(id_or_path)


def public_name(name: str | Path) -> str:
    """How `session.started` shows a model source: a local path by its last component
    (subscribers need not learn the server's file layout; a hub cache snapshot as
    ``org/name@revision``), a hub id as given."""
    text = str(name)
    if not (isinstance(name, Path) or _looks_like_path(text) or Path(text).exists()):
        return text
    path = Path(text).expanduser().resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        # a hub cache snapshot: the model's id and revision, not a bare commit hash
        repo = path.parent.parent.name[len("models--") :].replace("--", "/")
        return f"{repo}@{path.name[:12]}"
    return path.name or text


def _load(loader: Any, id_or_path: str | Path, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` with an error that says what to download, and where."""
    src = str(id_or_path)
    path = Path(src).expanduser()
    if path.exists():
        return loader.from_pretrained(str(path), **kwargs)
    if isinstance(id_or_path, Path) or _looks_like_path(src):
        raise HubModelNotFoundError(
            f"{what}: model directory {src} does not exist. Download the model there, e.g. "
            f"`hf download {_default_id(what)} --local-dir {src}`, or pass a hub id."
        )
    try:
        return loader.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise HubModelNotFoundError(
            f"{what}: could not load '{src}' from the hub cache or the hub "
            f"({exc.__class__.__name__}: {first}). On a machine that reaches the hub run "
            f"`hf download {src} --local-dir DIR` and pass DIR here."
        ) from exc


def _load_model(
    loader: Any,
    id_or_path: str | Path,
    what: str,
    expected: str,
    head: tuple[str, ...] = (),
    **kwargs: Any,
) -> nn.Module:
    """`_load` of a model, refusing (HubModelMismatchError) files that are not an
    ``expected`` checkpoint: weights it needs missing, or a configuration of another kind.
    Missing weights of the modules named in ``head`` (e.g. a classifier the features do not
    use) are only a warning: a plain encoder's files lack them."""
    src = str(id_or_path)
    try:
        model, info = _load(loader, id_or_path, what, output_loading_info=True, **kwargs)
    except (ValueError, RuntimeError) as exc:  # a configuration an Auto class has no model
        # for, or weights of other shapes (e.g. a ViT's 2-D patch embedding for VideoMAE)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise HubModelMismatchError(f"{what}: {src} is not a {expected} model ({first})") from exc
    missing = sorted(
        k for k in info.get("missing_keys", ()) if k.rsplit(".", 1)[-1] not in _UNUSED_WEIGHTS
    )
    without_head = [k for k in missing if k.split(".", 1)[0] not in head]
    if missing and not without_head:
        warnings.warn(
            f"{what}: {src} has no {'/'.join(head)} head ({', '.join(missing[:3])} missing):"
            " its embeddings are used as they are; the head's outputs are untrained and must"
            " not be read",
            stacklevel=3,
        )
        return model
    if missing:
        declared = getattr(model.config, "architectures", None) or [model.config.model_type]
        raise HubModelMismatchError(
            f"{what}: {src} is not a {expected} checkpoint (its files declare "
            f"{', '.join(map(str, declared))}): {len(missing)} of the weights it needs are "
            f"missing, e.g. {', '.join(missing[:3])}. Pass a {expected} model such as "
            f"{_default_id(what)}."
        )
    return model


def _do_normalize(id_or_path: str | Path, local_files_only: bool) -> bool | None:
    """``do_normalize`` of a speech model's preprocessor config; None if it has none."""
    from transformers import AutoFeatureExtractor

    src = str(id_or_path)
    path = Path(src).expanduser()
    if path.exists():
        if not (path / PREPROCESSOR_CONFIG).is_file():
            return None
        # A local config that does not load is an error, not a reason to guess.
        fe = AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
    else:
        try:
            fe = AutoFeatureExtractor.from_pretrained(src, local_files_only=local_files_only)
        except OSError:  # not in the repository, or not downloadable from here
            return None
    value = getattr(fe, "do_normalize", None)
    return None if value is None else bool(value)


def _default_id(what: str) -> str:
    return {
        "FaceClipEncoder": DEFAULT_VIDEO_ID,
        "SpeechEncoder": DEFAULT_SPEECH_ID,
        "TextEmotionEncoder": DEFAULT_TEXT_ID,
    }.get(what, "<hub id>")


class _DeviceRunner(TorchRunner):
    """A ``TorchRunner`` that moves inputs to the module's device (cuda on GPUs)."""

    def __init__(
        self,
        module: nn.Module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        name: str,
        device: str,
    ) -> None:
        super().__init__(module, input_names, output_names, name)
        self.device = torch.device(device)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Forward under inference mode on the module's device; outputs as numpy arrays."""
        if self.device.type == "cpu":
            return super().run(inputs)
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"{self.name}: missing inputs {missing}")
        args = [
            torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device)
            for n in self.input_names
        ]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, tuple | list) else (out,)
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, out, strict=True)}


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` [B, F, D] over the frames where ``mask`` [B, F] is nonzero."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


class _Pool(nn.Module):
    """The encoders' pooling over frames or tokens (`masked_mean`, or a plain mean without a
    mask) as a module: named ``fp32_pool`` in a graph, its sums over up to 1,500 frames or
    1,568 tokens stay in FP32 under TensorRT (`models.tensorrt.FP32_SCOPE_PREFIX`)."""

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return states.mean(1) if mask is None else masked_mean(states, mask)


class MaskedAttentionPool(nn.Module):
    """Trainable attention pooling over frames: a learned query scores projected frames;
    padded frames (mask 0) get exactly zero weight, whatever they hold."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.key = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``states`` [B, F, D], ``mask`` [B, F] (1 = real frame) -> pooled [B, D]."""
        valid = mask.bool()
        states = states.masked_fill(~valid.unsqueeze(-1), 0.0)
        scores = torch.tanh(self.key(states)) @ self.query * self.scale
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * valid.to(scores.dtype)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
        return (weights.unsqueeze(-1) * states).sum(1)


class _HubEncoder:
    """What the three encoders share: a network behind a runner, and its ONNX export."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self, graph: nn.Module, name: str, dim: int, device: str) -> None:
        self.graph: nn.Module | None = graph.eval()
        self.name = name
        self.dim = int(dim)
        self.device = device
        self.runner: Runner = _DeviceRunner(
            self.graph, self.input_names, self.output_names, name, device
        )
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str | None:
        """SHA-256 of the network's weights (names, dtypes, shapes, values): what a weights
        directory records of the encoders it was trained on, so that other weights behind
        the same name or path are noticed. None once the network is released uncomputed."""
        if self._fingerprint is None and self.graph is not None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.graph.state_dict().items()):
                t = tensor.detach().to("cpu").contiguous()
                digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
                digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def use_runner(self, runner: Runner, release: bool = False) -> None:
        """Run the network through ``runner`` (e.g. an ``OrtRunner`` over ``export_onnx``).
        ``release``: drop the torch network for good (its weights, hundreds of MB for the
        base models, are freed; the encoder keeps its settings and pre-processing, and can
        no longer export or go back to torch)."""
        if set(runner.input_names) != set(self.input_names) or not set(self.output_names) <= set(
            runner.output_names
        ):
            raise ValueError(
                f"{self.name}: runner takes {runner.input_names} -> {runner.output_names}, "
                f"expected {self.input_names} -> {self.output_names}"
            )
        self.runner = runner
        if release:
            self.graph = None

    def _sample(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _dynamic_axes(self) -> dict[str, dict[int, str]]:
        raise NotImplementedError

    def export_onnx(self, path: str | Path, opset: int = MIN_OPSET) -> Path:
        """Export the network to ONNX at ``path`` (dynamic batch, and length where it has one)."""
        if self.graph is None:
            raise ValueError(f"{self.name}: its torch network was released (use_runner)")
        graph = self.graph.to("cpu")
        try:
            return export_onnx_module(
                graph, self._sample(), self.output_names, path, self._dynamic_axes(), opset
            )
        finally:
            self.graph.to(self.device)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.run(inputs)


# ---------------------------------------------------------------------------- video


class _VideoGraph(nn.Module):
    """pixel_values [B, T, 3, H, W] (normalised) -> embedding [B, D] (mean over tokens)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.fp32_pool = _Pool()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.fp32_pool(self.model(pixel_values=pixel_values).last_hidden_state)


class FaceClipEncoder(_HubEncoder):
    """VideoMAE over face clips -> one embedding per clip (mean of the last hidden state)."""

    input_names = ("pixel_values",)
    output_names = ("embedding",)

    def __init__(self, model: nn.Module, name: str = DEFAULT_VIDEO_ID, device: str = "cpu") -> None:
        cfg = model.config
        self.num_frames = int(cfg.num_frames)
        self.image_size = int(cfg.image_size)
        self.num_channels = int(cfg.num_channels)
        super().__init__(_VideoGraph(model), name, cfg.hidden_size, device)

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str | Path = DEFAULT_VIDEO_ID,
        device: str = "cpu",
        local_files_only: bool = False,
    ) -> FaceClipEncoder:
        """Load ``VideoMAEModel`` weights from a hub id or a local directory
        (HubModelMismatchError for another architecture's files)."""
        from transformers import VideoMAEModel

        model = _load_model(
            VideoMAEModel,
            id_or_path,
            cls.__name__,
            "VideoMAE (VideoMAEModel)",
            local_files_only=local_files_only,
        )
        return cls(model.to(device).eval(), source_name(id_or_path), device)

    def preprocess(self, frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """T RGB uint8 crops ([H, W, 3] or grey [H, W], any size) -> [num_frames, 3, S, S]
        float32: frames resampled evenly in time (repeated when T < num_frames), shortest
        edge resized to S = image_size then centre-cropped, ImageNet mean/std applied."""
        import cv2

        if len(frames) == 0:
            raise ValueError("a face clip needs at least one frame")
        idx = np.round(np.linspace(0, len(frames) - 1, self.num_frames)).astype(int)
        s = self.image_size
        out = np.empty((self.num_frames, s, s, 3), dtype=np.float32)
        for k, i in enumerate(idx):
            img = np.asarray(frames[i])
            if img.dtype != np.uint8:
                raise TypeError(f"face crops must be uint8 RGB, got {img.dtype}")
            if img.ndim == 2:
                img = np.repeat(img[:, :, None], 3, axis=2)
            if img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"face crops must be [H, W, 3] RGB, got shape {img.shape}")
            h, w = img.shape[:2]
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            img = cv2.resize(img, (nw, nh), interpolation=interp)
            top, left = (nh - s) // 2, (nw - s) // 2
            out[k] = img[top : top + s, left : left + s]
        out = (out / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)

    def encode(
        self, clips: Sequence[Sequence[np.ndarray] | np.ndarray], batch_size: int = 8
    ) -> np.ndarray:
        """Face clips (each: T RGB uint8 crops) -> embeddings [B, dim] float32."""
        outs = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(clips), batch_size):
            batch = np.stack([self.preprocess(c) for c in clips[start : start + batch_size]])
            outs.append(self._run({"pixel_values": batch})["embedding"])
        return np.concatenate(outs).astype(np.float32, copy=False)

    def _sample(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        s, t = self.image_size, self.num_frames
        return {"pixel_values": rng.standard_normal((2, t, 3, s, s)).astype(np.float32)}

    def _dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"pixel_values": {0: "batch"}, "embedding": {0: "batch"}}


# ---------------------------------------------------------------------------- audio


def _masked_group_norm(x: torch.Tensor, mask: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` over time with statistics from the valid frames only. x [B, C, T], mask [B, T]."""
    b, c = x.shape[0], x.shape[1]
    g = norm.num_groups
    xg = x.reshape(b, g, c // g, -1)
    m = mask.to(x.dtype).reshape(b, 1, 1, -1)
    n = m.sum((2, 3), keepdim=True) * (c // g)
    mean = (xg * m).sum((2, 3), keepdim=True) / n
    var = (((xg - mean) ** 2) * m).sum((2, 3), keepdim=True) / n
    y = ((xg - mean) / torch.sqrt(var + norm.eps)).reshape(b, c, -1)
    if norm.affine:
        y = y * norm.weight.reshape(1, c, 1) + norm.bias.reshape(1, c, 1)
    return y


class _MaskedGroupNorm(nn.Module):
    """`_masked_group_norm` as a module, so that its exported nodes carry its scope."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
        return _masked_group_norm(x, mask, norm)


class _SpeechGraph(nn.Module):
    """input_values [B, S], attention_mask [B, S] (int64, 1 = sample) -> embedding [B, D]
    (masked mean), last_hidden_state [B, F, D], frame_mask [B, F] (float32)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # Its sums run over every frame of the first conv layer (3,200 per second: 96,000 in
        # 30 s), far past FP16's 65,504: the ``fp32_`` name makes its ONNX nodes
        # ``/fp32_group_norm/...``, which TensorRT keeps in FP32 (`models.tensorrt`).
        self.fp32_group_norm = _MaskedGroupNorm()
        self.fp32_pool = _Pool()  # the masked mean over up to 1,500 frames, in FP32 too
        cfg = model.config
        self.kernels = [int(k) for k in cfg.conv_kernel]
        self.strides = [int(s) for s in cfg.conv_stride]

    def forward(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = attention_mask.sum(-1)
        x = input_values.unsqueeze(1)
        for layer in self.model.feature_extractor.conv_layers:
            lengths = (
                torch.div(
                    lengths - layer.conv.kernel_size[0], layer.conv.stride[0], rounding_mode="floor"
                )
                + 1
            )
            if isinstance(getattr(layer, "layer_norm", None), nn.GroupNorm):
                x = layer.conv(x)
                steps = torch.arange(x.shape[-1], device=x.device).unsqueeze(0)
                x = layer.activation(
                    self.fp32_group_norm(x, steps < lengths.unsqueeze(1), layer.layer_norm)
                )
            else:
                x = layer(x)  # per-frame norm or none: padding cannot leak into valid frames
        steps = torch.arange(x.shape[-1], device=x.device).unsqueeze(0)
        frame_mask = steps < lengths.unsqueeze(1)
        hidden = self.model.feature_projection(x.transpose(1, 2))
        hidden = hidden * frame_mask.unsqueeze(-1).to(hidden.dtype)
        states = self.model.encoder(hidden, attention_mask=frame_mask).last_hidden_state
        fm = frame_mask.to(states.dtype)
        return self.fp32_pool(states, fm), states, fm


def _frames_for(samples: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Frames the conv feature extractor makes from ``samples`` (the model's own rule)."""
    n = samples
    for k, s in zip(kernels, strides, strict=True):
        n = (n - k) // s + 1
    return n


class SpeechEncoder(_HubEncoder):
    """HuBERT over 16 kHz mono audio -> masked-mean embedding, or frame states + mask."""

    input_names = ("input_values", "attention_mask")
    output_names = ("embedding", "last_hidden_state", "frame_mask")

    def __init__(
        self,
        model: nn.Module,
        name: str = DEFAULT_SPEECH_ID,
        device: str = "cpu",
        normalize: bool = True,
    ) -> None:
        graph = _SpeechGraph(model)
        self.kernels, self.strides = graph.kernels, graph.strides
        self.normalize = normalize
        # The shortest input that yields one frame (400 samples = 25 ms for the base model).
        n = 1
        for k, s in zip(reversed(self.kernels), reversed(self.strides), strict=True):
            n = (n - 1) * s + k
        self.min_samples = n
        super().__init__(graph, name, model.config.hidden_size, device)

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str | Path = DEFAULT_SPEECH_ID,
        device: str = "cpu",
        local_files_only: bool = False,
        normalize: bool | None = None,
    ) -> SpeechEncoder:
        """Load ``HubertModel`` weights from a hub id or a local directory
        (HubModelMismatchError for another architecture's files, e.g. wav2vec2's).

        ``normalize`` (zero-mean unit-variance clips) None means the ``do_normalize`` of the
        model's preprocessor config, from the same place as the weights; a model without one
        normalises when its feature extractor uses LayerNorm (fairseq's large models) and
        not with GroupNorm (the base models), with a warning. A full-profile checkpoint
        records the value it was trained with and passes it here
        (`models.train_full.weights_encoders`).
        """
        from transformers import HubertModel

        model = _load_model(
            HubertModel,
            id_or_path,
            cls.__name__,
            "HuBERT (HubertModel)",
            local_files_only=local_files_only,
        )
        if normalize is None:
            normalize = _do_normalize(id_or_path, local_files_only)
            if normalize is None:
                norm = getattr(model.config, "feat_extract_norm", "group")
                normalize = norm == "layer"
                warnings.warn(
                    f"SpeechEncoder: {id_or_path} has no {PREPROCESSOR_CONFIG} with do_normalize;"
                    f" its feature extractor uses {norm} norm, so do_normalize={normalize} (as"
                    " fairseq trained it); pass normalize= to choose",
                    stacklevel=2,
                )
        return cls(model.to(device).eval(), source_name(id_or_path), device, normalize)

    def frames_for(self, samples: int) -> int:
        """Number of output frames for ``samples`` input samples (50 per second for base)."""
        return max(0, _frames_for(samples, self.kernels, self.strides))

    def preprocess(self, audios: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Audio clips (16 kHz mono float) -> right-padded ``input_values`` [B, S] float32
        (each clip zero-mean unit-variance when the model expects it) and ``attention_mask``
        [B, S] int64."""
        clips = [np.asarray(a, dtype=np.float32).reshape(-1) for a in audios]
        short = [i for i, a in enumerate(clips) if a.size < self.min_samples]
        if short:
            raise ValueError(
                f"audio clips {short} are shorter than {self.min_samples} samples "
                f"({self.min_samples / SAMPLE_RATE * 1000:.0f} ms), the model's receptive field"
            )
        n = max(a.size for a in clips)
        values = np.zeros((len(clips), n), np.float32)
        mask = np.zeros((len(clips), n), np.int64)
        for i, a in enumerate(clips):
            if self.normalize:
                a = (a - a.mean()) / np.sqrt(a.var() + 1e-7)
            values[i, : a.size] = a
            mask[i, : a.size] = 1
        return {"input_values": values, "attention_mask": mask}

    def encode(self, audios: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
        """Audio clips -> masked-mean embeddings [B, dim] float32."""
        outs = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(audios), batch_size):
            outs.append(self._run(self.preprocess(audios[start : start + batch_size]))["embedding"])
        return np.concatenate(outs).astype(np.float32, copy=False)

    def encode_frames(
        self, audios: Sequence[np.ndarray], batch_size: int = 8
    ) -> tuple[np.ndarray, np.ndarray]:
        """Audio clips -> (last hidden states [B, F, dim], frame mask [B, F] float32), padded
        to the longest clip; feed both to a ``MaskedAttentionPool``."""
        f = max((self.frames_for(np.asarray(a).size) for a in audios), default=0)
        states = np.zeros((len(audios), f, self.dim), np.float32)
        mask = np.zeros((len(audios), f), np.float32)
        for start in range(0, len(audios), batch_size):
            out = self._run(self.preprocess(audios[start : start + batch_size]))
            s, m = out["last_hidden_state"], out["frame_mask"]
            states[start : start + len(s), : s.shape[1]] = s
            mask[start : start + len(s), : m.shape[1]] = m
        return states, mask

    def _sample(self) -> dict[str, np.ndarray]:
        # Two lengths, so the traced graph keeps the padding path.
        rng = np.random.default_rng(0)
        n = max(4 * self.min_samples, SAMPLE_RATE // 2)
        return self.preprocess([rng.standard_normal(n), rng.standard_normal(n * 2 // 3)])

    def _dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            "input_values": {0: "batch", 1: "samples"},
            "attention_mask": {0: "batch", 1: "samples"},
            "embedding": {0: "batch"},
            "last_hidden_state": {0: "batch", 1: "frames"},
            "frame_mask": {0: "batch", 1: "frames"},
        }


# ---------------------------------------------------------------------------- text


class _TextGraph(nn.Module):
    """input_ids, attention_mask [B, L] int64 -> embedding [B, D] (last layer at the first
    token), probs [B, labels] (sigmoid of the classifier's logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The model's own forward: each family pools for its head its own way (RoBERTa's
        # head reads token 0, BERT's reads the pooler, DistilBERT's a pre-classifier).
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        return out.hidden_states[-1][:, 0], torch.sigmoid(out.logits)


class TextEmotionEncoder(_HubEncoder):
    """A sequence classifier (RoBERTa-GoEmotions) over text -> embedding (last layer at the
    first token) and emotion probabilities."""

    input_names = ("input_ids", "attention_mask")
    output_names = ("embedding", "probs")

    def __init__(
        self, model: nn.Module, tokenizer: Any, name: str = DEFAULT_TEXT_ID, device: str = "cpu"
    ) -> None:
        cfg = model.config
        self.tokenizer = tokenizer
        self.labels = tuple(str(cfg.id2label[i]) for i in range(cfg.num_labels))
        limit = int(getattr(cfg, "max_position_embeddings", 514)) - 2
        self.max_length = min(int(getattr(tokenizer, "model_max_length", limit)), limit)
        super().__init__(_TextGraph(model), name, cfg.hidden_size, device)

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str | Path = DEFAULT_TEXT_ID,
        device: str = "cpu",
        local_files_only: bool = False,
    ) -> TextEmotionEncoder:
        """Load the tokenizer and ``AutoModelForSequenceClassification`` weights
        (HubModelMismatchError when weights of the body are missing). A plain encoder
        without a classification head (e.g. ``roberta-base``) loads with a warning: its
        embedding is what the full profile uses; its ``emotions`` are untrained."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = _load_model(
            AutoModelForSequenceClassification,
            id_or_path,
            cls.__name__,
            "text classification (AutoModelForSequenceClassification)",
            head=("classifier", "pre_classifier"),
            local_files_only=local_files_only,
        )
        tok = _load(AutoTokenizer, id_or_path, cls.__name__, local_files_only=local_files_only)
        return cls(model.to(device).eval(), tok, source_name(id_or_path), device)

    def preprocess(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Texts -> right-padded ``input_ids`` and ``attention_mask`` [B, L] int64 (truncated
        to the model's maximum length)."""
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        return {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
        }

    def encode_with_emotions(
        self, texts: Sequence[str], batch_size: int = 16
    ) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (embeddings [B, dim], emotion probabilities [B, len(labels)])."""
        embs = [np.zeros((0, self.dim), np.float32)]
        probs = [np.zeros((0, len(self.labels)), np.float32)]
        for start in range(0, len(texts), batch_size):
            out = self._run(self.preprocess(texts[start : start + batch_size]))
            embs.append(out["embedding"])
            probs.append(out["probs"])
        return np.concatenate(embs).astype(np.float32), np.concatenate(probs).astype(np.float32)

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Texts -> embeddings [B, dim] float32."""
        return self.encode_with_emotions(texts, batch_size)[0]

    def emotions(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Texts -> emotion probabilities [B, len(labels)] (independent sigmoids)."""
        return self.encode_with_emotions(texts, batch_size)[1]

    def _sample(self) -> dict[str, np.ndarray]:
        return self.preprocess(["I mean, maybe, but I am not sure it is for me.", "Yes."])

    def _dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            "input_ids": {0: "batch", 1: "length"},
            "attention_mask": {0: "batch", 1: "length"},
            "embedding": {0: "batch"},
            "probs": {0: "batch"},
        }
