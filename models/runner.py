"""The runner interface: one way to call a model, whatever executes it.

A runner maps named float/int arrays to named arrays, axis 0 being the batch. The same
model can run under torch (``TorchRunner``), ONNX Runtime (``OrtRunner``) or TensorRT
(``models.tensorrt.TensorRTRunner``), and the streaming path, the benchmarks and the
cross-session batcher (``stream.batching``) only see ``Runner``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Runner",
    "TorchRunner",
    "OrtRunner",
    "RUNNER_BACKENDS",
    "ort_has_cuda",
    "ort_providers",
    "graph_runner",
    "export_onnx_module",
    "max_abs_diff",
    "MIN_OPSET",
]

#: The lowest ONNX opset we export to (LayerNormalization is a single op from 17 on).
MIN_OPSET = 17


@runtime_checkable
class Runner(Protocol):
    """What every backend offers: named batched arrays in, named batched arrays out."""

    name: str
    backend: str  # "torch" | "onnxruntime" | "tensorrt"
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; every input and output has the batch on axis 0."""
        ...


class TorchRunner:
    """Runs an ``nn.Module`` whose forward takes the inputs positionally, in ``input_names``
    order, and returns one tensor or a tuple in ``output_names`` order."""

    backend = "torch"

    def __init__(
        self,
        module: Any,
        input_names: Sequence[str],
        output_names: Sequence[str],
        name: str = "model",
    ) -> None:
        self.module = module.eval()
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.name = name

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Forward under inference mode; outputs as numpy arrays."""
        import torch

        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"{self.name}: missing inputs {missing}")
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        if not isinstance(out, tuple | list):
            out = (out,)
        return {n: o.detach().cpu().numpy() for n, o in zip(self.output_names, out, strict=True)}


class OrtRunner:
    """ONNX Runtime session over an exported graph (a path or the serialized bytes)."""

    backend = "onnxruntime"

    def __init__(
        self,
        model: str | Path | bytes,
        name: str | None = None,
        threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        src = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(src, opts, providers=list(providers))
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.name = name or (Path(model).stem if not isinstance(model, bytes) else "model")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session on the graph's inputs (extra keys are an error)."""
        extra = set(inputs) - set(self.input_names)
        if extra:
            raise KeyError(f"{self.name}: unknown inputs {sorted(extra)}")
        outs = self.session.run(list(self.output_names), {k: inputs[k] for k in self.input_names})
        return dict(zip(self.output_names, outs, strict=True))


#: Backends that run an exported graph (`graph_runner`).
RUNNER_BACKENDS: tuple[str, ...] = ("onnxruntime", "tensorrt")


def ort_has_cuda() -> bool:
    """Whether the installed onnxruntime has the CUDA provider (onnxruntime-gpu)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def ort_providers(device: str) -> tuple[str, ...]:
    """ONNX Runtime execution providers for ``device`` ("cpu" or "cuda"): CUDA first when
    asked for and this onnxruntime build has it (onnxruntime-gpu); else the CPU. ValueError
    for ``device="cuda"`` when the installed onnxruntime has no CUDA provider."""
    if device == "cpu":
        return ("CPUExecutionProvider",)
    if device != "cuda":
        raise ValueError(f"unknown device {device!r}; available: cpu, cuda")
    if not ort_has_cuda():
        raise ValueError(
            "onnxruntime has no CUDA provider here (install onnxruntime-gpu, or use "
            "--device cpu or --backend tensorrt)"
        )
    return ("CUDAExecutionProvider", "CPUExecutionProvider")


def graph_runner(
    backend: str,
    onnx_path: str | Path,
    name: str,
    device: str = "cpu",
    inputs: Sequence[Mapping[str, Any]] | None = None,
    cache_dir: str | Path | None = None,
    threads: int = 1,
) -> Runner:
    """A runner of the exported graph at ``onnx_path``: ``"onnxruntime"`` on ``device``'s
    providers (`ort_providers`), or ``"tensorrt"``: the FP16 engine from ``cache_dir``
    (default ``<graph dir>/engines``, what ``ahstream export --backend tensorrt`` fills),
    built if absent, and checked against ONNX Runtime before use
    (`models.tensorrt.load_or_build`; ``inputs`` are manifest-style input specs).
    Raises `models.tensorrt.TensorRTUnavailable` without TensorRT or a GPU."""
    if backend == "onnxruntime":
        return OrtRunner(onnx_path, name, threads=threads, providers=ort_providers(device))
    if backend == "tensorrt":
        from models.tensorrt import FP16_ATOL, load_or_build, sample_feeds

        path = Path(onnx_path)
        if inputs is None:
            from models.export import _io_spec

            inputs = _io_spec(path)[0]
        cache = Path(cache_dir) if cache_dir is not None else path.parent / "engines"
        runner = load_or_build(path, cache, sample_feeds(inputs), FP16_ATOL, inputs)
        runner.name = name
        return runner
    raise ValueError(f"unknown backend {backend!r}; available: {', '.join(RUNNER_BACKENDS)}")


def export_onnx_module(
    module: Any,
    sample: Mapping[str, np.ndarray],
    output_names: Sequence[str],
    path: str | Path,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = MIN_OPSET,
) -> Path:
    """Export ``module`` (inputs positional, in ``sample``'s key order) to ONNX at ``path``.

    ``dynamic_axes`` defaults to a dynamic batch (axis 0) on every input and output.
    Tracing runs with grad enabled: under no_grad, eval-mode transformer layers take
    PyTorch's fused fast path, which has no ONNX symbolic."""
    import torch

    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    names = list(sample)
    if dynamic_axes is None:
        dynamic_axes = {n: {0: "batch"} for n in [*names, *output_names]}
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = getattr(module, "training", False)
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                input_names=names,
                output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                opset_version=opset,
            )
    finally:
        module.train(was_training)
    return path


def max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Largest absolute difference over the outputs both mappings hold (shapes must match)."""
    common = [k for k in a if k in b]
    if not common:
        raise ValueError("no common outputs to compare")
    worst = 0.0
    for k in common:
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        if x.shape != y.shape:
            raise ValueError(f"{k}: shapes differ, {x.shape} vs {y.shape}")
        if x.size:
            worst = max(worst, float(np.max(np.abs(x - y))))
    return worst
