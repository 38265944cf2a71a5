"""The full profile's hub encoders on tiny random models of the same classes, and Whisper names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.hub_encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FaceClipEncoder,
    HubModelNotFoundError,
    MaskedAttentionPool,
    SpeechEncoder,
    TextEmotionEncoder,
    masked_mean,
    source_name,
)
from models.runner import OrtRunner, TorchRunner, max_abs_diff
from models.whisper import resolve_whisper_path, whisper_source
from tests.tiny_models import GOEMOTIONS_LABELS, make_tiny_encoders, make_tiny_text_classifier

torch.set_num_threads(1)
RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_encoders(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def video(paths: dict[str, Path]) -> FaceClipEncoder:
    return FaceClipEncoder.from_pretrained(paths["video"])


@pytest.fixture(scope="module")
def speech(paths: dict[str, Path]) -> SpeechEncoder:
    return SpeechEncoder.from_pretrained(paths["audio"])


@pytest.fixture(scope="module")
def text(paths: dict[str, Path]) -> TextEmotionEncoder:
    return TextEmotionEncoder.from_pretrained(paths["text"])


def clip(t: int, h: int, w: int) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(t)]


TEXTS = ["Um, I mean, I guess I could try, but I am not sure.", "Yes.", "no, not really"]


# ---------------------------------------------------------------- factory and loading


def test_tiny_models_are_seeded(tmp_path: Path, paths: dict[str, Path]) -> None:
    again = make_tiny_encoders(tmp_path)
    for kind in ("video", "audio", "text"):
        a = (paths[kind] / "model.safetensors").read_bytes()
        assert a == (again[kind] / "model.safetensors").read_bytes()
    other = make_tiny_encoders(tmp_path / "other", seed=1)
    assert (other["text"] / "model.safetensors").read_bytes() != a


def test_missing_directory_says_what_to_download(tmp_path: Path) -> None:
    with pytest.raises(HubModelNotFoundError, match="hf download MCG-NJU/videomae-base"):
        FaceClipEncoder.from_pretrained(tmp_path / "nope")
    with pytest.raises(HubModelNotFoundError, match="does not exist"):
        SpeechEncoder.from_pretrained(str(tmp_path / "nope"))


def test_a_relative_model_directory_is_recorded_as_an_absolute_path(
    paths: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights record the encoders' names: `org/name`-shaped relative directories (as in
    `--video-model models-hub/videomae`) must load again from another working directory."""
    monkeypatch.chdir(paths["video"].parent.parent)
    relative = f"{paths['video'].parent.name}/{paths['video'].name}"  # one slash: id-shaped
    recorded = FaceClipEncoder.from_pretrained(relative).name
    assert recorded == str(paths["video"].resolve())
    monkeypatch.chdir(tmp_path)
    assert FaceClipEncoder.from_pretrained(recorded).name == recorded
    assert SpeechEncoder.from_pretrained(paths["audio"]).name == str(paths["audio"].resolve())
    assert TextEmotionEncoder.from_pretrained(paths["text"]).name == str(paths["text"].resolve())
    assert source_name("org/model") == "org/model"  # a hub id stays as given


def test_a_plain_text_encoder_is_used_for_its_embedding_with_a_warning(
    paths: dict[str, Path], tmp_path: Path
) -> None:
    """A text model without a classification head (``roberta-base`` and the like) is what a
    full-profile checkpoint may have been trained with: only its embedding is used. It loads
    (with a warning that its emotion head is untrained), and the embedding is its own."""
    import shutil

    from transformers import AutoConfig, RobertaModel

    plain = tmp_path / "roberta-plain"
    torch.manual_seed(1)
    body = RobertaModel(AutoConfig.from_pretrained(paths["text"]), add_pooling_layer=False)
    body.eval().save_pretrained(plain)
    for f in paths["text"].iterdir():  # the tokenizer files
        if "token" in f.name or f.suffix in (".txt",) or f.name in ("merges.txt", "vocab.json"):
            shutil.copy(f, plain / f.name)
    with pytest.warns(UserWarning, match="has no classifier/pre_classifier head"):
        enc = TextEmotionEncoder.from_pretrained(plain)
    texts = ["i want to but i do not know", "yes"]
    x = enc.preprocess(texts)
    with torch.no_grad():
        ids, mask = (torch.from_numpy(x[k]) for k in ("input_ids", "attention_mask"))
        want = body(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(enc.encode(texts), want, atol=1e-5)


def test_another_architectures_files_are_refused_not_randomly_initialised(
    paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wav2vec2 checkpoint as the speech model (its weights sit under ``wav2vec2.``, none
    of HuBERT's load), another encoder's files as the video or text model: a clear error
    naming the model and the architecture expected, also as the CLI's one-line message."""
    from transformers import ViTConfig, ViTModel, Wav2Vec2Config, Wav2Vec2ForCTC
    from transformers.utils import logging as hf_logging

    from stream.cli import main

    torch.manual_seed(0)
    w2v = tmp_path / "w2v"
    cfg = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        vocab_size=8,
    )
    Wav2Vec2ForCTC(cfg).save_pretrained(w2v)
    # (HubModelMismatchError is a HubModelNotFoundError: the CLI's one-line errors)
    with pytest.raises(HubModelNotFoundError, match=r"not a HuBERT.*Wav2Vec2ForCTC.*missing"):
        SpeechEncoder.from_pretrained(w2v, normalize=True)
    with pytest.raises(HubModelNotFoundError, match=r"FaceClipEncoder: .*hubert is not a VideoMAE"):
        FaceClipEncoder.from_pretrained(paths["audio"])
    vit = tmp_path / "vit"
    vit_cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)  # fmt: skip
    ViTModel(vit_cfg).save_pretrained(vit)
    with pytest.raises(HubModelNotFoundError, match=r"vit is not a VideoMAE"):
        FaceClipEncoder.from_pretrained(vit)
    with pytest.raises(HubModelNotFoundError, match=r"TextEmotionEncoder: .*not a text classif"):
        TextEmotionEncoder.from_pretrained(paths["video"])
    out = tmp_path / "export"
    argv = ["export", "--profile", "full", "--audio-model", str(w2v), "--out", str(out)]
    capsys.readouterr()
    # transformers' own log handler holds the stderr of the test that first used it (closed
    # by now: its "--- Logging error ---" traceback would land here); this test reads ours
    hf_logging.disable_default_handler()
    try:
        assert main(argv) == 1
    finally:
        hf_logging.enable_default_handler()
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (before it: transformers' progress bars)
    assert "Traceback" not in err and last.startswith("ahstream export: SpeechEncoder: ")
    assert "not a HuBERT (HubertModel) checkpoint" in last


def test_uncached_hub_id_fails_clearly_offline() -> None:
    with pytest.raises(HubModelNotFoundError, match="hf download facebook/hubert-base-ls960"):
        SpeechEncoder.from_pretrained("facebook/hubert-base-ls960", local_files_only=True)


# ---------------------------------------------------------------- video


def test_face_preprocess_resamples_resizes_and_normalises(video: FaceClipEncoder) -> None:
    s, t = video.image_size, video.num_frames
    assert (s, t) == (32, 8)
    # Three flat frames of distinct colours: resampled in order to t frames, first and last kept.
    colours = [(255, 255, 255), (0, 0, 0), (124, 116, 104)]
    frames = [np.full((50, 40, 3), c, np.uint8) for c in colours]
    x = video.preprocess(frames)
    assert x.shape == (t, 3, s, s) and x.dtype == np.float32
    white = (1.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[0].mean(axis=(1, 2)), white, atol=1e-5)
    np.testing.assert_allclose(
        x[-1].mean(axis=(1, 2)),
        (np.array(colours[2]) / 255 - IMAGENET_MEAN) / IMAGENET_STD,
        atol=1e-5,
    )
    assert np.abs(x[-1]).max() < 0.02  # ImageNet mean colour -> ~0
    # Many frames of any size, and grey frames, give the same shape.
    assert video.preprocess(clip(40, 90, 70)).shape == (t, 3, s, s)
    assert video.preprocess([np.zeros((10, 12), np.uint8)]).shape == (t, 3, s, s)
    with pytest.raises(TypeError):
        video.preprocess([np.zeros((10, 10, 3), np.float32)])


def test_face_encode_matches_videomae_mean_and_batches(
    video: FaceClipEncoder, paths: dict[str, Path]
) -> None:
    from transformers import VideoMAEModel

    clips = [clip(5, 40, 30), clip(20, 64, 64), clip(1, 32, 32)]
    emb = video.encode(clips, batch_size=2)
    assert emb.shape == (3, video.dim) and video.dim == 32
    ref_model = VideoMAEModel.from_pretrained(paths["video"]).eval()
    with torch.no_grad():
        x = torch.from_numpy(np.stack([video.preprocess(c) for c in clips]))
        ref = ref_model(pixel_values=x).last_hidden_state.mean(1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    np.testing.assert_allclose(video.encode(clips[1:2]), emb[1:2], atol=1e-5)


# ---------------------------------------------------------------- pooling


def test_masked_pooling_ignores_padding() -> None:
    torch.manual_seed(0)
    pool = MaskedAttentionPool(16).eval()
    states = torch.randn(1, 7, 16)
    padded = torch.cat([states, 1e3 * torch.randn(1, 5, 16)], dim=1)  # loud garbage in padding
    mask = torch.tensor([[1.0] * 7 + [0.0] * 5])
    ones = torch.ones(1, 7)
    torch.testing.assert_close(masked_mean(padded, mask), states.mean(1))
    torch.testing.assert_close(pool(padded, mask), pool(states, ones), atol=1e-6, rtol=0)
    # Not a plain mean: the learned query weights frames.
    assert (pool(states, ones) - states.mean(1)).abs().max() > 1e-3
    # Trainable, and padded frames get no gradient.
    padded.requires_grad_(True)
    pool.train()
    pool(padded, mask).sum().backward()
    assert pool.query.grad is not None and pool.query.grad.abs().sum() > 0
    assert padded.grad is not None and padded.grad[:, 7:].abs().max() == 0


# ---------------------------------------------------------------- speech


def test_speech_shapes_frames_and_hf_parity(speech: SpeechEncoder, paths: dict[str, Path]) -> None:
    from transformers import HubertModel

    ref_model = HubertModel.from_pretrained(paths["audio"]).eval()
    lengths = torch.tensor([85, 400, 8000, 12345])
    np.testing.assert_array_equal(
        [speech.frames_for(int(n)) for n in lengths],
        ref_model._get_feat_extract_output_lengths(lengths).numpy(),
    )
    assert speech.min_samples == 85 and speech.frames_for(85) == 1
    audio = RNG.standard_normal(6000)
    states, mask = speech.encode_frames([audio, audio[:2000]])
    assert states.shape == (2, speech.frames_for(6000), 32)
    assert mask.sum(1).tolist() == [speech.frames_for(6000), speech.frames_for(2000)]
    # Unpadded, the encoder is HuggingFace's HubertModel.
    x = speech.preprocess([audio])["input_values"]
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(x)).last_hidden_state.numpy()
    np.testing.assert_allclose(states[:1], ref, atol=1e-5)
    np.testing.assert_allclose(speech.encode([audio]), ref.mean(1), atol=1e-5)
    with pytest.raises(ValueError, match="shorter"):
        speech.encode([np.zeros(50)])


def test_speech_normalisation_comes_from_the_model_files(
    paths: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``do_normalize`` is read where the weights are (``~`` expanded); a model without a
    preprocessor config normalises, with a warning, exactly when its feature extractor uses
    LayerNorm (fairseq's convention); ``normalize=`` overrides both."""
    import shutil
    import warnings

    from transformers import Wav2Vec2FeatureExtractor

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(paths["audio"], tmp_path / "raw")
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path / "raw")
    audio = 0.3 * RNG.standard_normal(4000) + 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for ident in ("~/raw", str(tmp_path / "raw")):
            raw = SpeechEncoder.from_pretrained(ident)
            assert raw.normalize is False
            np.testing.assert_allclose(raw.preprocess([audio])["input_values"][0], audio, atol=1e-6)
        assert SpeechEncoder.from_pretrained("~/raw", normalize=True).normalize is True
        assert SpeechEncoder.from_pretrained(paths["audio"]).normalize is True  # tiny: config
    (tmp_path / "raw" / "preprocessor_config.json").unlink()
    from transformers import HubertConfig, HubertModel

    config = HubertConfig.from_pretrained(tmp_path / "raw")
    for norm, expected in (("group", False), ("layer", True)):
        # weights of that architecture: a LayerNorm extractor has a norm in every conv layer
        config.feat_extract_norm = norm
        HubertModel(config).save_pretrained(tmp_path / "raw")
        with pytest.warns(UserWarning, match=f"no preprocessor_config.json.*{norm} norm"):
            assert SpeechEncoder.from_pretrained("~/raw").normalize is expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SpeechEncoder.from_pretrained("~/raw", normalize=False).normalize is False


def test_speech_padding_does_not_change_embeddings(speech: SpeechEncoder) -> None:
    audios = [RNG.standard_normal(n) * 0.1 for n in (9000, 1500, 4000)]
    together = speech.encode(audios)
    alone = np.concatenate([speech.encode([a]) for a in audios])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    states, mask = speech.encode_frames(audios)
    s1, _ = speech.encode_frames(audios[1:2])
    np.testing.assert_allclose(states[1, : s1.shape[1]], s1[0], atol=1e-5)
    np.testing.assert_allclose(
        masked_mean(torch.from_numpy(states), torch.from_numpy(mask)), together, atol=1e-5
    )


# ---------------------------------------------------------------- text


def test_text_embedding_and_emotions(text: TextEmotionEncoder, paths: dict[str, Path]) -> None:
    from transformers import AutoModelForSequenceClassification

    assert text.labels == GOEMOTIONS_LABELS and text.dim == 32
    emb, probs = text.encode_with_emotions(TEXTS, batch_size=2)
    assert emb.shape == (3, 32) and probs.shape == (3, 28)
    assert ((probs > 0) & (probs < 1)).all()
    ref_model = AutoModelForSequenceClassification.from_pretrained(paths["text"]).eval()
    enc = text.preprocess(TEXTS)
    with torch.no_grad():
        out = ref_model(
            input_ids=torch.from_numpy(enc["input_ids"]),
            attention_mask=torch.from_numpy(enc["attention_mask"]),
            output_hidden_states=True,
        )
    np.testing.assert_allclose(emb, out.hidden_states[-1][:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(probs, torch.sigmoid(out.logits).numpy(), atol=1e-6)
    # Padding (the short texts in a batch) changes nothing.
    np.testing.assert_allclose(text.encode(TEXTS[1:2]), emb[1:2], atol=1e-5)
    np.testing.assert_allclose(text.emotions(TEXTS[2:]), probs[2:], atol=1e-6)


@pytest.mark.parametrize("kind", ["roberta", "bert", "distilbert"])
def test_text_families_give_the_hf_models_probabilities(
    kind: str, paths: dict[str, Path], tmp_path: Path
) -> None:
    """Each family's head pools its own way (RoBERTa's reads token 0 itself, BERT's the
    pooler, DistilBERT's a pre-classifier): probs are [B, labels] and equal HF's forward,
    in torch and in the ONNX export."""
    from transformers import AutoModelForSequenceClassification

    path = paths["text"] if kind == "roberta" else make_tiny_text_classifier(tmp_path, kind)
    enc = TextEmotionEncoder.from_pretrained(path)
    emb, probs = enc.encode_with_emotions(TEXTS)
    assert emb.shape == (3, 32) and probs.shape == (3, len(GOEMOTIONS_LABELS))
    ref_model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    inputs = enc.preprocess(TEXTS)
    with torch.no_grad():
        out = ref_model(
            **{k: torch.from_numpy(v) for k, v in inputs.items()}, output_hidden_states=True
        )
    np.testing.assert_allclose(probs, torch.sigmoid(out.logits).numpy(), atol=1e-5)
    np.testing.assert_allclose(emb, out.hidden_states[-1][:, 0].numpy(), atol=1e-5)
    ort = OrtRunner(enc.export_onnx(tmp_path / f"{kind}.onnx"), threads=1)
    assert max_abs_diff(enc.runner.run(inputs), ort.run(inputs)) <= 1e-4


# ---------------------------------------------------------------- ONNX and runners


def test_onnx_parity_and_use_runner(
    tmp_path: Path, video: FaceClipEncoder, speech: SpeechEncoder, text: TextEmotionEncoder
) -> None:
    clips = [clip(9, 48, 40) for _ in range(3)]
    audios = [RNG.standard_normal(n) for n in (20000, 90, 3333)]  # longer than the sample
    texts = [*TEXTS, "a much longer sentence than the export sample ever had, " * 3]
    cases = [
        (video, {"pixel_values": np.stack([video.preprocess(c) for c in clips])}, clips),
        (speech, speech.preprocess(audios), audios),
        (text, text.preprocess(texts), texts),
    ]
    for enc, inputs, items in cases:
        path = enc.export_onnx(tmp_path / f"{enc.__class__.__name__}.onnx")
        ort = OrtRunner(path, threads=1)
        assert ort.input_names == enc.input_names
        assert set(enc.output_names) <= set(ort.output_names)
        assert max_abs_diff(enc.runner.run(inputs), ort.run(inputs)) <= 1e-4
        torch_emb = enc.encode(items)
        torch_runner = enc.runner
        assert isinstance(torch_runner, TorchRunner)
        enc.use_runner(ort)
        try:
            assert np.abs(enc.encode(items) - torch_emb).max() <= 1e-4
            assert np.abs(enc.encode(items[:1]) - torch_emb[:1]).max() <= 1e-4
        finally:
            enc.use_runner(torch_runner)
    with pytest.raises(ValueError, match="expected"):
        text.use_runner(OrtRunner(tmp_path / "FaceClipEncoder.onnx"))


def test_an_encoder_served_from_its_export_frees_its_torch_weights(
    tmp_path: Path, paths: dict[str, Path]
) -> None:
    """`use_runner(release=True)` (the full profile's exported backends): the torch network
    is garbage once the encoder runs on ONNX Runtime; it encodes as before."""
    import gc
    import weakref

    enc = TextEmotionEncoder.from_pretrained(paths["text"])
    before = enc.encode(TEXTS)
    ort = OrtRunner(enc.export_onnx(tmp_path / "text.onnx"), threads=1)
    network = weakref.ref(enc.graph)
    enc.use_runner(ort, release=True)
    gc.collect()
    assert network() is None and enc.graph is None
    assert np.abs(enc.encode(TEXTS) - before).max() <= 1e-4
    with pytest.raises(ValueError, match="released"):
        enc.export_onnx(tmp_path / "again.onnx")


# ---------------------------------------------------------------- Whisper sizes


def test_whisper_names_resolve_without_download(tmp_path: Path) -> None:
    assert whisper_source(None) == ("bundled", "tiny.en")
    assert whisper_source("tiny.en") == ("bundled", "tiny.en")
    assert whisper_source("small") == ("hub", "Systran/faster-whisper-small")
    assert whisper_source("large-v3") == ("hub", "Systran/faster-whisper-large-v3")
    assert whisper_source("org/my-whisper-ct2") == ("hub", "org/my-whisper-ct2")
    assert whisper_source(str(tmp_path)) == ("dir", str(tmp_path))
    assert resolve_whisper_path(str(tmp_path)) == str(tmp_path)
    bundled = Path(resolve_whisper_path())
    assert (bundled / "model.bin").is_file()
    assert resolve_whisper_path("tiny.en") == str(bundled)
    for bad in (str(tmp_path / "missing"), "./nope", "huge-v9"):
        with pytest.raises(FileNotFoundError, match="not a directory, a model size"):
            whisper_source(bad)
    with pytest.raises(FileNotFoundError, match="hf download Systran/faster-whisper-large-v3"):
        resolve_whisper_path("large-v3", local_files_only=True, cache_dir=str(tmp_path / "hub"))


def test_session_started_names_local_models_without_the_servers_paths(tmp_path):
    """A local model directory is shown by its last component, a hub cache snapshot as
    its id and revision, a hub id as given (`session.started`, read by subscribers)."""
    from models.hub_encoders import public_name

    run = tmp_path / "runs" / "ckpt"
    run.mkdir(parents=True)
    snapshot = tmp_path / "hub" / "models--org--tiny-vit" / "snapshots" / ("ab12" * 10)
    snapshot.mkdir(parents=True)
    assert public_name(run) == public_name(str(run)) == "ckpt"
    assert public_name(snapshot) == "org/tiny-vit@" + ("ab12" * 10)[:12]
    assert public_name("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert str(tmp_path) not in public_name(run) + public_name(snapshot)
