"""TensorRT engines for exported ONNX graphs, behind the `models.runner.Runner` interface.

``tensorrt`` is imported lazily (only on NVIDIA machines with ``pip install '.[gpu]'``);
without it, or without a CUDA GPU, every entry point raises `TensorRTUnavailable` saying
which is missing.

- Engines are built with FP16 on, and every LayerNormalization node, the reductions,
  ``Pow``/``Sqrt``/``Div`` of a LayerNorm written out as primitive ops, and the float ops of
  any module whose attribute name starts with ``fp32_`` (e.g. HuBERT's masked GroupNorm,
  `models.hub_encoders`: sums over 96,000 frames; the encoders' poolings) kept in FP32
  with layer precision constraints (`fp32_node_names` finds them in the ONNX graph).
- Optimisation profiles come from the graph's dynamic axes: min/opt/max per axis name
  (`DEFAULT_PROFILE`: batch 1/4/16, time 1/64/512, and so on).
- Engines are cached as ``<cache_dir>/<key>.engine`` where the key hashes the ONNX bytes,
  the GPU name and the TensorRT version (`engine_cache_key`): a new driver stack, another
  card or another export builds a new engine.
- `load_or_build` runs the engine and ONNX Runtime on sample inputs and refuses an engine
  an output of which differs by more than ``atol + rtol * max |reference|`` of that output
  (`EngineMismatch`, `tolerance_problems`; `FP16_ATOL`, `FP16_RTOL`).
- An input outside the engine's optimisation profile is a ValueError naming its shape and
  the profile's range, before anything runs.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.runner import OrtRunner, max_abs_diff

__all__ = [
    "TensorRTUnavailable",
    "EngineMismatch",
    "EngineBuildError",
    "DEFAULT_PROFILE",
    "FP16_ATOL",
    "FP16_RTOL",
    "FP32_SCOPE_PREFIX",
    "import_tensorrt",
    "gpu_name",
    "engine_cache_key",
    "fp32_node_names",
    "tolerance_problems",
    "shape_problem",
    "axis_profiles",
    "build_engine",
    "TensorRTRunner",
    "load_or_build",
    "build_export",
]

#: (min, opt, max) of each named dynamic axis in the optimisation profile.
DEFAULT_PROFILE: dict[str, tuple[int, int, int]] = {
    "batch": (1, 4, 16),
    "time": (1, 64, 512),
    "samples": (400, 16000 * 4, 16000 * 30),  # HuBERT input (25 ms .. 30 s at 16 kHz)
    "length": (1, 64, 512),  # text tokens
}
#: Engine vs ONNX Runtime on the sample inputs, per output: max |diff| <= FP16_ATOL +
#: FP16_RTOL * max |reference|. FP16 keeps 11 significant bits (relative step 2^-11, about
#: 5e-4); rounding through a 12-layer encoder (norms in FP32) leaves errors of about 1e-3 of
#: an output's scale, so 2 % of the scale passes sound engines with room while still catching
#: broken ones (overflow, a wrong layout or precision: errors of the order of the scale
#: itself). The absolute part covers outputs that are all near zero (e.g. probabilities).
#: A bound on the absolute error alone would refuse sound engines whose hidden states run
#: into the tens.
FP16_ATOL = 1e-2
FP16_RTOL = 2e-2

# Ops that make up a LayerNorm written out as primitives (older exports, opset < 17 style):
# mean/variance reductions, the square, the epsilon add's square root and the division.
_LN_PRIMITIVES = ("ReduceMean", "Pow", "Sqrt", "Div", "Sub", "Add", "Mul")
#: A module attribute named ``fp32_<name>`` exports its nodes as ``.../fp32_<name>/<Op>``
#: (torch's module scopes): its float ops are kept in FP32.
FP32_SCOPE_PREFIX = "fp32_"
_FLOAT_OPS = ("ReduceSum", "ReduceMean", "Pow", "Sqrt")


class TensorRTUnavailable(RuntimeError):
    """TensorRT or an NVIDIA GPU is missing on this machine."""


class EngineMismatch(RuntimeError):
    """A built or cached engine disagrees with ONNX Runtime on the sample inputs."""


class EngineBuildError(RuntimeError):
    """The engine of a graph of an export could not be built, loaded or checked (the message
    names the graph)."""


def tolerance_problems(
    got: Mapping[str, np.ndarray],
    ref: Mapping[str, np.ndarray],
    atol: float = FP16_ATOL,
    rtol: float = FP16_RTOL,
) -> list[str]:
    """The outputs of ``got`` (an engine) that differ from ``ref`` (ONNX Runtime) by more
    than ``atol + rtol * max |ref|`` of that output, or are not finite, each described;
    empty when all agree. Outputs missing from ``got`` count as problems."""
    problems = []
    for name, r in ref.items():
        if name not in got:
            problems.append(f"{name}: missing")
            continue
        g = np.asarray(got[name], np.float64)
        r = np.asarray(r, np.float64)
        if g.shape != r.shape:
            problems.append(f"{name}: shape {g.shape} != {r.shape}")
            continue
        if g.size == 0:
            continue
        if not np.isfinite(g).all():
            problems.append(f"{name}: not finite")
            continue
        diff = float(np.abs(g - r).max())
        bound = atol + rtol * float(np.abs(r).max())
        if not diff <= bound:
            problems.append(f"{name}: max |diff| {diff:.3g} > {bound:.3g}")
    return problems


def shape_problem(
    name: str, shape: Sequence[int], low: Sequence[int], high: Sequence[int]
) -> str | None:
    """Why input ``name`` of ``shape`` is outside an optimisation profile's range
    [``low``, ``high``] (None: inside)."""
    shape = tuple(int(d) for d in shape)
    low, high = tuple(int(d) for d in low), tuple(int(d) for d in high)
    if len(shape) == len(low) == len(high) and all(
        a <= d <= b for d, a, b in zip(shape, low, high, strict=True)
    ):
        return None
    return (
        f"input {name} of shape {shape} is outside the engine's optimisation profile "
        f"(min {low}, max {high})"
    )


#: The TensorRT major version the engine builder is written for (pyproject's `gpu` extra).
SUPPORTED_MAJOR = 10


def import_tensorrt() -> Any:
    """The ``tensorrt`` module; TensorRTUnavailable (with the reason) when absent."""
    if importlib.util.find_spec("tensorrt") is None:
        raise TensorRTUnavailable(
            "TensorRT is not installed (pip install '.[gpu]' on a machine with an NVIDIA GPU)"
        )
    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:  # e.g. libnvinfer or the CUDA driver missing
        raise TensorRTUnavailable(f"TensorRT does not load here: {exc}") from exc
    version = str(getattr(trt, "__version__", "0"))
    if version.split(".")[0] != str(SUPPORTED_MAJOR):
        raise TensorRTUnavailable(
            f"TensorRT {version} is not supported: the engines are built with TensorRT "
            f"{SUPPORTED_MAJOR}'s FP16 flags and per-layer precisions (TensorRT 11 removed "
            f"them); pip install 'tensorrt>={SUPPORTED_MAJOR},<{SUPPORTED_MAJOR + 1}'"
        )
    return trt


def gpu_name() -> str:
    """Name of CUDA device 0 (via torch); TensorRTUnavailable when there is no CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is available (TensorRT engines need one)")
    return str(torch.cuda.get_device_name(0))


def engine_cache_key(onnx_bytes: bytes, gpu: str, trt_version: str) -> str:
    """Cache key of the engine of ``onnx_bytes`` built on ``gpu`` by TensorRT ``trt_version``:
    hex sha256 over the three (an engine only runs on the GPU model and TensorRT release it
    was built with)."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(onnx_bytes).digest())
    h.update(b"\0gpu\0" + gpu.strip().encode("utf-8"))
    h.update(b"\0trt\0" + trt_version.strip().encode("utf-8"))
    return h.hexdigest()[:32]


def _float_outputs(model: Any) -> set[str] | None:
    """Names of the float (FP32/FP16) tensors of an ONNX model by shape inference; None
    when inference fails."""
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - any failure: fall back to the op types
        return None
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    values = [*graph.value_info, *graph.input, *graph.output]
    return {v.name for v in values if v.type.tensor_type.elem_type in floats}


def fp32_node_names(onnx_model: Any) -> list[str]:
    """Names of the nodes of an ONNX model (``onnx.ModelProto`` or path) to keep in FP32:
    every LayerNormalization, the primitive ops of a decomposed LayerNorm (a ReduceMean
    over a ``x - mean`` whose square is averaged again, with the Pow/Sqrt/Div/Add/Mul/Sub
    that take part), and the float-valued ops (no Cast or Constant) in a scope named
    ``fp32_*`` (`FP32_SCOPE_PREFIX`). Unnamed nodes get their ONNX output name."""
    import onnx

    model = onnx.load(str(onnx_model)) if isinstance(onnx_model, str | Path) else onnx_model
    nodes = list(model.graph.node)
    keep: list[str] = []
    scoped = [
        n
        for n in nodes
        if any(part.startswith(FP32_SCOPE_PREFIX) for part in n.name.split("/")[:-1])
        and n.op_type not in ("Cast", "Constant")
    ]
    if scoped:
        # only float ops: the scope's shape arithmetic (int64) has no precision to keep;
        # without types, the ops that are float in any norm (sums, squares, roots)
        floats = _float_outputs(model)
        for n in scoped:
            if n.output[0] in floats if floats is not None else n.op_type in _FLOAT_OPS:
                keep.append(n.name)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def name(n: Any) -> str:
        return n.name or n.output[0]

    for n in nodes:
        if n.op_type == "LayerNormalization":
            keep.append(name(n))
    # Decomposed LayerNorm: ReduceMean(x) -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt
    # -> Div. Walk forward from each Sub whose second input is a ReduceMean of its first.
    for sub in nodes:
        if sub.op_type != "Sub" or len(sub.input) != 2:
            continue
        mean = producer.get(sub.input[1])
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
            continue
        group = [mean, sub]
        frontier = [sub]
        seen = {id(mean), id(sub)}
        while frontier:
            node = frontier.pop()
            for c in consumers.get(node.output[0], []):
                if id(c) in seen or c.op_type not in _LN_PRIMITIVES:
                    continue
                seen.add(id(c))
                group.append(c)
                if c.op_type != "Div":  # the normalised value: the LayerNorm ends there
                    frontier.append(c)
        if any(n.op_type == "Sqrt" for n in group):
            keep.extend(name(n) for n in group)
    return list(dict.fromkeys(keep))


def axis_profiles(
    inputs: Sequence[Mapping[str, Any]],
    profile: Mapping[str, tuple[int, int, int]] | None = None,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes per input from manifest-style specs (``name``, ``shape`` with
    ints or axis names); unknown axis names raise ValueError."""
    table = {**DEFAULT_PROFILE, **(profile or {})}
    out = {}
    for spec in inputs:
        dims: list[tuple[int, int, int]] = []
        for d in spec["shape"]:
            if isinstance(d, int) and d > 0:
                dims.append((d, d, d))
            elif isinstance(d, str) and d in table:
                dims.append(tuple(table[d]))  # type: ignore[arg-type]
            else:
                raise ValueError(
                    f"{spec['name']}: no optimisation profile for axis {d!r}; give one"
                )
        out[spec["name"]] = tuple(tuple(x[i] for x in dims) for i in range(3))  # type: ignore[misc]
    return out


def build_engine(
    onnx_path: str | Path,
    inputs: Sequence[Mapping[str, Any]],
    profile: Mapping[str, tuple[int, int, int]] | None = None,
    workspace_mb: int = 2048,
) -> bytes:
    """Build a serialized FP16 engine of ``onnx_path`` (norms in FP32: `fp32_node_names`)
    with one optimisation profile over the inputs' dynamic axes."""
    trt = import_tensorrt()
    gpu_name()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    data = Path(onnx_path).read_bytes()
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    import onnx

    keep = set(fp32_node_names(onnx.load_from_string(data)))
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        # TensorRT names parsed layers after the ONNX node (or its output), sometimes with a
        # suffix; normalisation layers are kept in FP32 whatever their name.
        base = layer.name.split(" ")[0]
        is_norm = "NORMALIZATION" in str(layer.type)
        floats = (trt.float32, trt.float16)
        if not all(layer.get_output(j).dtype in floats for j in range(layer.num_outputs)):
            continue  # shape arithmetic (int) has no precision to keep
        if is_norm or base in keep or any(layer.name.startswith(k + "_") for k in keep):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype in (trt.float32, trt.float16):
                    layer.set_output_type(j, trt.float32)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in axis_profiles(inputs, profile).items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT could not build an engine for {onnx_path}")
    return bytes(engine)


class TensorRTRunner:
    """A deserialized engine run on CUDA device 0 through torch tensors (`Runner`)."""

    backend = "tensorrt"

    def __init__(self, engine: bytes, name: str = "model") -> None:
        import torch

        trt = import_tensorrt()
        gpu_name()
        self.name = name
        self.engine_path: Path | None = None  # the cache file, when loaded by load_or_build
        self._trt = trt
        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise RuntimeError(f"{name}: the engine does not deserialize on this GPU/TensorRT")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.output_names = tuple(n for n in names if self.engine.get_tensor_mode(n) != mode)
        self._lock = threading.Lock()  # one execution context: one run at a time

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch (inputs copied to the GPU, outputs back as numpy arrays)."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"{self.name}: missing inputs {missing}")
        with self._lock:
            return self._run(inputs)

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        for n in self.input_names:
            shape = tuple(int(d) for d in np.shape(inputs[n]))
            low, _, high = self.engine.get_tensor_profile_shape(n, 0)
            problem = shape_problem(n, shape, low, high)
            if problem is None and not self.context.set_input_shape(n, shape):
                problem = f"TensorRT refused input {n} of shape {shape}"
            if problem is not None:
                raise ValueError(f"{self.name}: {problem}")
        keep = []
        for n in self.input_names:
            t = torch.from_numpy(np.ascontiguousarray(inputs[n])).cuda()
            keep.append(t)
            self.context.set_tensor_address(n, t.data_ptr())
        outs = {}
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            dtype = torch.from_numpy(np.zeros(0, self._trt.nptype(self.engine.get_tensor_dtype(n))))
            outs[n] = torch.empty(shape, dtype=dtype.dtype, device="cuda")
            self.context.set_tensor_address(n, outs[n].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT execution failed")
        stream.synchronize()
        return {n: t.cpu().numpy() for n, t in outs.items()}


def load_or_build(
    onnx_path: str | Path,
    cache_dir: str | Path,
    sample_inputs: Mapping[str, np.ndarray],
    atol: float = FP16_ATOL,
    inputs: Sequence[Mapping[str, Any]] | None = None,
    profile: Mapping[str, tuple[int, int, int]] | None = None,
    rtol: float = FP16_RTOL,
) -> TensorRTRunner:
    """The engine of ``onnx_path`` from ``cache_dir`` (built and cached when absent), after
    checking it against ONNX Runtime on ``sample_inputs``; EngineMismatch (and no cached
    file kept) when an output differs by more than ``atol + rtol * max |reference|``
    (`tolerance_problems`). ``inputs`` are manifest-style input specs (default: read from
    the graph)."""
    trt = import_tensorrt()
    gpu = gpu_name()
    onnx_path = Path(onnx_path)
    data = onnx_path.read_bytes()
    key = engine_cache_key(data, gpu, str(trt.__version__))
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{key}.engine"
    if inputs is None:
        from models.export import _io_spec

        inputs = _io_spec(onnx_path)[0]
    built = not path.is_file()
    engine = build_engine(onnx_path, inputs, profile) if built else path.read_bytes()
    runner = TensorRTRunner(engine, onnx_path.stem)
    runner.engine_path = path
    got = runner.run(sample_inputs)
    ref = OrtRunner(data, onnx_path.stem).run(sample_inputs)
    problems = tolerance_problems(got, ref, atol, rtol)
    if problems:
        if not built:
            path.unlink(missing_ok=True)  # a stale or corrupt cache entry: rebuild next time
        raise EngineMismatch(
            f"{onnx_path.name}: TensorRT engine differs from ONNX Runtime on the sample inputs "
            f"(allowed: {atol:g} + {rtol:g} x the output's largest |value|): "
            f"{'; '.join(problems)}; refusing it"
        )
    diff = max_abs_diff(got, ref)
    if built:
        # atomically: the workers of one server may build the same engine at once, and a
        # reader must never see a half-written file
        _write_atomic(path, engine)
        _write_atomic(
            path.with_suffix(".json"),
            json.dumps(
                {
                    "onnx": onnx_path.name,
                    "gpu": gpu,
                    "tensorrt": str(trt.__version__),
                    "max_abs_diff_vs_onnxruntime": diff,
                },
                indent=2,
            )
            + "\n",
        )
    return runner


def _write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary file in its directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sample_feeds(inputs: Sequence[Mapping[str, Any]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs at the profile's opt shapes (float inputs in [-1, 1], ints 0)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (_, opt, _) in axis_profiles(inputs).items():
        spec = next(s for s in inputs if s["name"] == name)
        dtype = np.dtype(spec.get("dtype", "float32"))
        if name in ("present", "mask") or name.endswith("_mask"):
            feeds[name] = np.ones(opt, dtype)  # presence flags: every modality there
        elif dtype.kind == "f":
            feeds[name] = rng.uniform(-1, 1, opt).astype(dtype)
        else:
            feeds[name] = np.zeros(opt, dtype)
    return feeds


def build_export(
    export_dir: str | Path,
    cache_dir: str | Path | None = None,
    atol: float = FP16_ATOL,
    rtol: float = FP16_RTOL,
) -> dict[str, str]:
    """Build (or take from the cache) and check an engine for every graph of an
    `ahstream export` directory; engine path by model name. A graph whose engine does not
    build, load or match raises EngineBuildError naming it."""
    import_tensorrt()
    gpu_name()
    from models.export import read_manifest

    d = Path(export_dir)
    manifest, _ = read_manifest(d)
    cache = Path(cache_dir) if cache_dir else d / "engines"
    out = {}
    for name, m in manifest["models"].items():
        feeds = sample_feeds(m["inputs"])
        try:
            runner = load_or_build(d / m["file"], cache, feeds, atol, m["inputs"], rtol=rtol)
        except TensorRTUnavailable:
            raise
        except RuntimeError as exc:  # EngineMismatch, a parse/build/deserialise failure
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = "" if m["file"] in text else f"{m['file']}: "
            raise EngineBuildError(f"graph {name}: {where}{text}") from exc
        out[name] = str(runner.engine_path)
    return out
