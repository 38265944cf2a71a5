"""Cross-session micro-batching (stream.batching) on the real FER model and real sessions."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from models.expression import ExpressionModel, preprocess
from models.runner import TorchRunner, max_abs_diff
from stream.batching import (
    BatcherClosed,
    BatcherCollector,
    BatcherFull,
    MicroBatcher,
    SharedRunners,
)


@pytest.fixture(scope="module")
def fer() -> ExpressionModel:
    return ExpressionModel.load(backend="onnxruntime")


@pytest.fixture(scope="module")
def faces() -> list[dict[str, np.ndarray]]:
    """24 different FER inputs: grey 64x64 crops of a real face at shifts, scales, mirrored."""
    import cv2
    from skimage import data

    grey = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
    out = []
    for i in range(24):
        dx, dy, size = (i % 6) * 5 - 12, (i // 6) * 4 - 6, 180 + (i % 5) * 6
        crop = cv2.resize(grey[45 + dy : 45 + dy + size, 145 + dx : 145 + dx + size], (64, 64))
        if i % 2:
            crop = crop[:, ::-1]
        out.append({"x": preprocess(crop[None])})
    return out


class Recording:
    """A runner that records the shapes and thread of every call of the runner it wraps, and
    can fail on NaN inputs or wait on a gate (for the error and shutdown tests)."""

    def __init__(self, runner, gate: threading.Event | None = None) -> None:
        self.runner = runner
        self.name, self.backend = runner.name, runner.backend
        self.input_names, self.output_names = runner.input_names, runner.output_names
        self.calls: list[dict[str, tuple[int, ...]]] = []
        self.threads: list[int] = []
        self.gate = gate
        self.entered = threading.Event()

    def run(self, inputs):
        self.calls.append({k: v.shape for k, v in inputs.items()})
        self.threads.append(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if any(np.isnan(v).any() for v in inputs.values()):
            raise ValueError("NaN input")
        return self.runner.run(inputs)


def _in_threads(n: int, fn):
    """``fn(i)`` for i < n in n threads started together; their results in order."""
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(go, range(n)))


def test_concurrent_callers_get_exactly_their_own_outputs(fer, faces):
    expected = [fer.runner.run(x) for x in faces]
    assert min(max_abs_diff(expected[0], e) for e in expected[1:]) > 1e-4  # all different
    many = {"x": np.concatenate([faces[0]["x"], faces[5]["x"], faces[9]["x"]])}  # 3 in one
    with MicroBatcher(fer.runner, max_batch=8, max_wait_ms=50, wait="always") as batcher:
        got = _in_threads(8, lambda i: [batcher.run(faces[j]) for j in range(i, 24, 8)])
        got_many = batcher.run(many)
        stats = batcher.stats()
    for i, outs in enumerate(got):
        for j, out in zip(range(i, 24, 8), outs, strict=True):
            assert out["probs"].shape == (1, 7) and out["logits"].shape == (1, 7)
            assert max_abs_diff(out, expected[j]) <= 1e-6
    np.testing.assert_allclose(
        got_many["probs"], np.concatenate([expected[k]["probs"] for k in (0, 5, 9)]), atol=1e-6
    )
    assert stats.requests == 25 and stats.items == 27 and stats.failed == 0
    assert stats.batches < 24 and stats.max_batch_items > 1  # batches really formed
    assert stats.max_batch_items <= 8 and sum(n * k for n, k in stats.sizes.items()) == 27


class MaskedPool(nn.Module):
    """Masked attention pooling over a sequence, as the full profile's audio encoder ends:
    two inputs, two outputs, a time axis whose length varies between requests."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(16, 8)
        self.score = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.proj(x))
        s = self.score(h).squeeze(-1).masked_fill(mask == 0, -1e9)
        w = torch.softmax(s, dim=-1)
        return (w.unsqueeze(-1) * h).sum(dim=1), w


def test_torch_module_runner_batches_only_matching_shapes():
    runner = TorchRunner(MaskedPool(), ["x", "mask"], ["pooled", "weights"], name="pool")
    rng = np.random.default_rng(1)
    requests = []
    for i in range(12):
        t = 10 if i % 2 else 20
        mask = np.ones((1, t), np.float32)
        mask[0, t - 1 - i % 4 :] = 0  # a different padded tail each
        requests.append({"x": rng.normal(size=(1, t, 16)).astype(np.float32), "mask": mask})
    expected = [runner.run(r) for r in requests]
    recording = Recording(runner)
    with MicroBatcher(recording, max_batch=6, max_wait_ms=50, wait="always") as batcher:
        assert batcher.input_names == ("x", "mask") and batcher.backend == "torch"
        got = _in_threads(12, lambda i: batcher.run(requests[i]))
    for out, exp in zip(got, expected, strict=True):
        assert max_abs_diff(out, exp) <= 1e-6
    assert max(c["x"][0] for c in recording.calls) > 1  # batched ...
    assert all(c["x"][0] == c["mask"][0] <= 6 for c in recording.calls)
    assert {c["x"][1] for c in recording.calls} == {10, 20}  # ... never across lengths
    assert all(c["mask"][1] == c["x"][1] for c in recording.calls)


def test_shared_runners_batch_a_full_profile_encoder(tmp_path):
    """The hub encoders' runner convention (``runner`` is what they call, ``use_runner``)
    works the same: concurrent texts of one length share runs, each gets its own output."""
    from types import SimpleNamespace

    from models.hub_encoders import TextEmotionEncoder
    from tests.tiny_models import make_tiny_encoders

    encoder = TextEmotionEncoder.from_pretrained(make_tiny_encoders(tmp_path)["text"])
    own = encoder.runner
    texts = [f"well, I {w} try it, but" for w in ("might", "could", "would", "should")] * 2
    texts += ["no.", "I am not sure, honestly, I mean it is hard for me"]
    expected = [encoder.encode_with_emotions([t]) for t in texts]
    shared = SharedRunners(SimpleNamespace(text=encoder), max_batch=8, max_wait_ms=20)
    batcher = shared.batchers["text"]
    assert encoder.runner is batcher and batcher.runner is own
    gate = threading.Event()  # the first run waits until all others are queued behind it
    batcher.runner = recording = Recording(own, gate)
    with ThreadPoolExecutor(1) as ex:
        future = ex.submit(
            _in_threads, len(texts), lambda i: encoder.encode_with_emotions([texts[i]])
        )
        deadline = time.monotonic() + 10
        while batcher.stats().pending < len(texts) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        got = future.result(30)
    stats = batcher.stats()
    shared.close()
    assert encoder.runner is own
    for (emb, probs), (emb0, probs0) in zip(got, expected, strict=True):
        np.testing.assert_allclose(emb, emb0, atol=1e-5)
        np.testing.assert_allclose(probs, probs0, atol=1e-5)
    assert stats.requests == len(texts) and stats.failed == 0
    assert len({c["input_ids"][1] for c in recording.calls}) >= 2  # lengths never mixed ...
    assert max(c["input_ids"][0] for c in recording.calls) >= 2  # ... same lengths batched


def test_a_lone_request_does_not_wait_and_max_wait_is_honoured(fer, faces):
    # Upper bounds are far below the deadline they tell apart, so a loaded machine
    # cannot make them fail; the lower bounds are the behaviour.
    x = faces[0]
    recording = Recording(fer.runner)
    with MicroBatcher(recording, max_batch=8, max_wait_ms=5000) as batcher:
        started = time.monotonic()
        batcher.run(x)
        lone = time.monotonic() - started
        assert lone < 2.5  # nobody else is mid-tick: no wait for the 5 s deadline ...
        assert recording.threads == [threading.get_ident()]  # ... not even a thread hand-off

        # Another caller announced a request: the batch is held for it until it comes ...
        def late_caller() -> None:
            with batcher.expecting():
                time.sleep(0.1)
                batcher.run(faces[1])

        thread = threading.Thread(target=late_caller)
        started = time.monotonic()
        thread.start()
        time.sleep(0.02)
        batcher.run(x)
        joined = time.monotonic() - started
        thread.join()
        # ... and runs when it arrives, not at the deadline
        assert 0.09 <= joined < 2.5 and batcher.stats().sizes.get(2) == 1

    # ... or at most max_wait after the first request, if it never comes.
    with MicroBatcher(fer.runner, max_batch=8, max_wait_ms=400) as batcher:
        left = threading.Event()

        def silent_caller() -> None:
            with batcher.expecting():
                left.wait(10)

        thread = threading.Thread(target=silent_caller)
        thread.start()
        time.sleep(0.02)
        started = time.monotonic()
        batcher.run(x)
        held = time.monotonic() - started
        left.set()
        thread.join()
        assert 0.39 <= held < 5
        assert 0.39 <= batcher.stats().max_wait_s < 5

    with MicroBatcher(fer.runner, max_batch=8, max_wait_ms=200, wait="always") as batcher:
        started = time.monotonic()
        batcher.run(x)
        assert time.monotonic() - started >= 0.19  # classic micro-batching waits for company

    with MicroBatcher(fer.runner, max_batch=4, max_wait_ms=20_000, wait="always") as batcher:
        started = time.monotonic()
        _in_threads(4, lambda i: batcher.run(faces[i]))
        assert time.monotonic() - started < 10  # a full batch runs at once, not at the deadline
        assert batcher.stats().sizes == {4: 1}


def test_a_malformed_request_fails_only_its_caller(fer, faces):
    runner = TorchRunner(MaskedPool(), ["x", "mask"], ["pooled", "weights"], name="pool")
    ok = {"x": np.zeros((2, 5, 16), np.float32), "mask": np.ones((2, 5), np.float32)}
    with MicroBatcher(runner, max_batch=8, max_wait_ms=10) as batcher:
        with pytest.raises(KeyError, match="missing inputs"):
            batcher.run({"x": ok["x"]})
        with pytest.raises(KeyError, match="unknown inputs"):
            batcher.run({**ok, "extra": ok["mask"]})
        with pytest.raises(ValueError, match="disagree on the batch size"):
            batcher.run({"x": ok["x"], "mask": ok["mask"][:1]})
        with pytest.raises(ValueError, match="batch axis"):
            batcher.run({"x": ok["x"], "mask": np.float32(1)})
        with pytest.raises(ValueError, match="empty request"):
            batcher.run({"x": ok["x"][:0], "mask": ok["mask"][:0]})
        assert batcher.stats().requests == 0  # none of them reached a batch

    # Valid requests that fail in the model: a wrong crop size (its own shape group) and a
    # NaN face inside a shared batch. Everyone else gets their outputs.
    bad_shape = {"x": np.zeros((1, 1, 48, 48), np.float32)}
    poisoned = {"x": np.full_like(faces[0]["x"], np.nan)}
    requests = [faces[0], poisoned, faces[1], bad_shape, faces[2], faces[3]]
    recording = Recording(fer.runner)

    def call(i):
        try:
            return batcher.run(requests[i])
        except Exception as exc:
            return exc

    with MicroBatcher(recording, max_batch=8, max_wait_ms=300, wait="always") as batcher:
        got = _in_threads(len(requests), call)
        stats = batcher.stats()
    assert isinstance(got[1], ValueError) and "NaN" in str(got[1])
    assert isinstance(got[3], Exception) and not isinstance(got[3], ValueError)
    for i in (0, 2, 4, 5):
        assert max_abs_diff(got[i], fer.runner.run(requests[i])) <= 1e-6
    assert stats.failed == 2 and stats.requests == 6
    assert max(c["x"][0] for c in recording.calls) == 5  # the 64x64 ones shared a batch


def test_close_runs_pending_requests_and_releases_blocked_submitters(fer, faces):
    gate = threading.Event()
    recording = Recording(fer.runner, gate)
    batcher = MicroBatcher(recording, max_batch=2, max_wait_ms=1, max_pending=2)
    first = batcher.submit(faces[0])
    assert recording.entered.wait(5)  # the worker is busy with it, held at the gate
    queued = [batcher.submit(faces[1]), batcher.submit(faces[2])]
    with pytest.raises(BatcherFull):
        batcher.submit(faces[3], block=False)  # policy "block": only with block=False ...
    blocked: list[object] = []
    waiter = threading.Thread(target=lambda: blocked.append(_submit_or_error(batcher, faces[3])))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive() and not blocked  # ... else the submitter waits for room
    closer = threading.Thread(target=batcher.close)
    closer.start()
    waiter.join(5)
    assert isinstance(blocked[0], BatcherClosed)  # closing releases it
    gate.set()
    closer.join(10)
    assert not closer.is_alive() and not batcher._worker.is_alive()
    for future, face in zip([first, *queued], faces[:3], strict=True):
        assert max_abs_diff(future.result(1), fer.runner.run(face)) <= 1e-6  # drained
    with pytest.raises(BatcherClosed):
        batcher.run(faces[0])
    assert batcher.stats().requests == 3


def _submit_or_error(batcher, x):
    try:
        return batcher.submit(x)
    except Exception as exc:
        return exc


@pytest.mark.parametrize("max_batch, max_wait_ms", [(1, 2.0), (8, 0.0)])
def test_batching_off_runs_in_the_callers_thread(fer, faces, max_batch, max_wait_ms):
    recording = Recording(fer.runner)
    with MicroBatcher(recording, max_batch, max_wait_ms) as batcher:
        assert batcher._worker is None
        got = _in_threads(4, lambda i: (threading.get_ident(), batcher.run(faces[i])))
        stats = batcher.stats()
    assert sorted(recording.threads) == sorted(ident for ident, _ in got)
    for i, (_, out) in enumerate(got):
        assert max_abs_diff(out, fer.runner.run(faces[i])) <= 1e-6
    assert stats.batches == stats.requests == 4 and stats.sizes == {1: 4}


def test_run_async_and_the_prometheus_metrics(fer, faces):
    from prometheus_client import CollectorRegistry, generate_latest

    async def main(batcher):
        return await asyncio.gather(*(batcher.run_async(faces[i]) for i in range(6)))

    with MicroBatcher(fer.runner, max_batch=8, max_wait_ms=30, wait="always") as batcher:
        got = asyncio.run(main(batcher))
        registry = CollectorRegistry()
        registry.register(BatcherCollector([batcher]))
        text = generate_latest(registry).decode()
    for i, out in enumerate(got):
        assert max_abs_diff(out, fer.runner.run(faces[i])) <= 1e-6
    label = '{model="fer2013-mini-xception"}'
    assert f"ahstream_batch_requests_total{label} 6.0" in text
    assert f"ahstream_batch_items_total{label} 6.0" in text
    assert f"ahstream_batch_runs_total{label} 1.0" in text  # all six in one run
    model = 'model="fer2013-mini-xception"'
    assert f'ahstream_batch_size_bucket{{le="4.0",{model}}} 0.0' in text
    assert f'ahstream_batch_size_bucket{{le="8.0",{model}}} 1.0' in text
    assert f"ahstream_batch_wait_seconds_count{{{model}}} 6.0" in text
    assert f"ahstream_batch_pending{label} 0.0" in text


# ---------------------------------------------------------------- sessions


def _clips(tmp_path) -> list:
    """Three different short videos of a real face (different crops, sizes and motion)."""
    from tests.mediafiles import astronaut_frames, write_media

    specs = [("a", 45, 320, 240), ("b", 52, 288, 256), ("c", 60, 300, 220)]
    return [
        write_media(tmp_path / f"{name}.mp4", None, astronaut_frames(n, w, h), fps=15)
        for name, n, w, h in specs
    ]


async def _sessions(paths, models, executor) -> list[list[tuple]]:
    """Run one file session per path, all at once; per session, every tick's
    (t, p, face probabilities, face feature vector) and the frame events' p."""
    from stream.replay import replay_file
    from stream.session import Session

    records: list[list[tuple]] = []
    sessions = []
    for path in paths:
        session = Session(path.stem, models, executor=executor)
        ticks: list[tuple] = []
        frames: list[float] = []
        session.publisher.listeners.append(
            lambda e, frames=frames: frames.append(e.p) if e.type == "frame" else None
        )
        tick = session.analyzer.tick

        def record(*args, tick=tick, ticks=ticks, **kwargs):
            r = tick(*args, **kwargs)
            face = r.face
            ticks.append((r.t, r.p, None if face is None else (face.probs, face.vector())))
            return r

        session.analyzer.tick = record
        records.append(ticks)
        sessions.append((session, frames))
        session.start()
    await asyncio.gather(*(replay_file(p, s) for p, (s, _) in zip(paths, sessions, strict=True)))
    for ticks, (_, frames) in zip(records, sessions, strict=True):
        assert [t[1] for t in ticks] == frames  # the recorded ticks are the published frames
    return records


def test_concurrent_sessions_with_a_shared_batcher_match_separate_runs(tmp_path):
    """The acceptance test: three sessions on real media through the real session code,
    at once with one shared FER batcher, give every frame the numbers each gets alone."""
    from models.profile import load_models
    from stream.server import Server, ServerConfig

    paths = _clips(tmp_path)
    models = load_models("lite", asr=False)
    models.face_pool = None  # each session builds its own face graph
    with ThreadPoolExecutor(4) as executor:
        alone = [asyncio.run(_sessions([p], models, executor))[0] for p in paths]
        shared = SharedRunners(models, max_batch=8, max_wait_ms=20)
        batcher = shared.batchers["expression"]
        assert models.expression.active_runner is batcher
        together = asyncio.run(_sessions(paths, models, executor))
        stats = batcher.stats()
        shared.close()
    assert models.expression.active_runner is models.expression.runner

    faces = 0
    for solo, joint in zip(alone, together, strict=True):
        assert len(solo) >= 25 and [t for t, _, _ in solo] == [t for t, _, _ in joint]
        for (t, p_solo, f_solo), (_, p_joint, f_joint) in zip(solo, joint, strict=True):
            assert abs(p_solo - p_joint) <= 1e-5, t
            assert (f_solo is None) == (f_joint is None), t
            if f_solo is not None:
                faces += 1
                np.testing.assert_allclose(f_joint[0], f_solo[0], atol=1e-5, err_msg=str(t))
                np.testing.assert_allclose(f_joint[1], f_solo[1], atol=1e-5, err_msg=str(t))
    assert faces >= 60
    assert stats.requests == faces and stats.failed == 0
    assert stats.batches < stats.requests and stats.max_batch_items >= 2  # sessions shared runs
    # The sessions differ well beyond the tolerance: swapped outputs could not pass.
    for other in (1, 2):
        pairs = zip(together[0], together[other], strict=False)
        diff = max(np.abs(a[2][0] - b[2][0]).max() for a, b in pairs if a[2] and b[2])
        assert diff > 1e-4, f"FER probs of sessions 0 and {other} differ by {diff:.2e} only"

    # A server switches the models to its batchers, counts in /metrics, switches back.
    server = Server(models, ServerConfig(batch_max=4, batch_wait_ms=5))
    assert isinstance(models.expression.active_runner, MicroBatcher)
    assert models.expression.active_runner.max_batch == 4
    assert b"ahstream_batch_runs_total" in server.metrics.exposition()
    asyncio.run(server.shutdown())
    assert models.expression.active_runner is models.expression.runner
