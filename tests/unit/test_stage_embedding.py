"""ResemblyzerEmbedder (real weights, CPU) and EmbeddingStage on espeak-ng speech."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.config import EmbeddingConfig
from pipeline.devstack.synthetic import VOICES, speak
from pipeline.stages.fast.embedding import EmbeddingStage, ResemblyzerEmbedder
from topics.messages import SpeechStep, StepEmbedding

SESSION = "embed-test"
TEXTS = (
    "I think we should start with the easy part.",
    "The weather has been strange all week.",
    "Please send me the document when it is ready.",
)


@pytest.fixture(scope="module")
def embedder() -> ResemblyzerEmbedder:
    return ResemblyzerEmbedder(EmbeddingConfig(device="cpu"))


@pytest.fixture(scope="module")
def utterances() -> dict[tuple[int, int], np.ndarray]:
    """(voice, text) -> int16 speech; voices 0 and 1 are the low male and the high female."""
    return {
        (v, t): np.round(speak(text, VOICES[v]) * 0.9 * 32767).astype(np.int16)
        for v in (0, 1)
        for t, text in enumerate(TEXTS)
    }


@pytest.fixture(scope="module")
def windows(utterances) -> list[np.ndarray]:
    # Windows of the lengths the VAD cuts (0.4 s to 1.5 s), all different, from both voices.
    lengths = [6400, 24000, 9000, 17777, 12345, 20000]
    return [w[:n] for w, n in zip(utterances.values(), lengths)]


def test_embedder_runs_on_the_requested_device(embedder):
    assert embedder.device == torch.device("cpu")
    assert next(embedder.encoder.parameters()).device.type == "cpu"
    # What the embed agent reads off the stage: its model info and its batching.
    stage = EmbeddingStage(embedder)
    assert (stage.model_name, stage.device, stage.input_type) == ("resemblyzer-ge2e", "cpu", SpeechStep)
    assert (stage.max_batch, stage.max_wait_s) == (embedder.config.max_batch, embedder.config.max_wait_s)


def test_embeddings_are_unit_vectors_of_256(embedder, windows):
    vectors = embedder.embed(windows)
    assert vectors.shape == (len(windows), 256) == (len(windows), embedder.dimension)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(vectors))
    assert np.all(vectors >= 0), "GE2E embeddings come out of a ReLU"
    # Different windows give different vectors.
    assert np.min(np.linalg.norm(vectors[:, None] - vectors[None], axis=2)[~np.eye(len(windows), dtype=bool)]) > 1e-3


def test_no_windows_give_an_empty_array(embedder):
    vectors = embedder.embed([])
    assert vectors.shape == (0, 256)


def test_batching_does_not_change_the_vectors(embedder, windows):
    assert len({len(w) for w in windows}) == len(windows), "windows must differ in length so the batch is padded"
    batch = embedder.embed(windows)
    one_by_one = np.concatenate([embedder.embed([w]) for w in windows])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-4)
    # Order in, order out, whatever the lengths.
    order = [3, 0, 5, 1, 4, 2]
    np.testing.assert_allclose(embedder.embed([windows[i] for i in order]), batch[order], atol=1e-4)
    # A window's vector does not depend on what else is in the batch.
    np.testing.assert_allclose(embedder.embed([windows[0], windows[1]])[0], batch[0], atol=1e-4)


def test_padding_would_change_the_vectors_without_packing(embedder, windows):
    # Guard for the test above: running the LSTM over the zero-padded batch without packing
    # lets the padding reach the final hidden state of the shorter windows.
    from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram

    mels = [
        torch.from_numpy(
            wav_to_mel_spectrogram(normalize_volume(w.astype(np.float32) / 32768.0, -30.0, increase_only=True))
        )
        for w in windows
    ]
    padded = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True)
    with torch.inference_mode():
        _, (hidden, _) = embedder.encoder.lstm(padded)
        naive = torch.nn.functional.normalize(embedder.encoder.relu(embedder.encoder.linear(hidden[-1])), dim=1).numpy()
    one_by_one = np.concatenate([embedder.embed([w]) for w in windows])
    longest = int(np.argmax([len(w) for w in windows]))
    np.testing.assert_allclose(naive[longest], one_by_one[longest], atol=1e-4)
    shorter = [i for i in range(len(windows)) if i != longest]
    assert np.max(np.abs(naive[shorter] - one_by_one[shorter])) > 1e-2


def test_embedding_is_deterministic(embedder, windows):
    np.testing.assert_array_equal(embedder.embed(windows[:3]), embedder.embed(windows[:3]))


def test_same_voice_is_more_similar_than_different_voices(embedder, utterances):
    keys = list(utterances)
    vectors = embedder.embed([utterances[k] for k in keys])
    similarity = vectors @ vectors.T
    same, different = [], []
    for i, j in itertools.combinations(range(len(keys)), 2):
        (same if keys[i][0] == keys[j][0] else different).append(similarity[i, j])
    assert min(same) > max(different)
    assert np.mean(same) > np.mean(different) + 0.1
    # Every utterance's nearest neighbour is the same voice saying something else.
    for i, key in enumerate(keys):
        others = [j for j in range(len(keys)) if j != i]
        nearest = max(others, key=lambda j: similarity[i, j])
        assert keys[nearest][0] == key[0], key


def _step(n: int, pcm: np.ndarray | None) -> SpeechStep:
    return SpeechStep(
        session_id=f"{SESSION}-{n % 2}",
        step=n,
        start=8000 * n,
        end=8000 * (n + 1),
        voiced=0 if pcm is None else min(len(pcm), 8000),
        ingest_ms=1000 + n,
        pcm=b"" if pcm is None else pcm.astype("<i2").tobytes(),
    )


def test_stage_keeps_order_and_gives_none_without_a_window(embedder, windows):
    stage = EmbeddingStage(embedder)
    pattern = [0, None, 1, 2, None, None, 3, 4, 5, None]
    steps = [_step(n, None if w is None else windows[w]) for n, w in enumerate(pattern)]
    out = stage.process(steps)
    assert [type(o) for o in out] == [StepEmbedding] * len(steps)
    for s, e, w in zip(steps, out, pattern):
        assert (e.session_id, e.step, e.start, e.end, e.voiced, e.ingest_ms) == (
            s.session_id,
            s.step,
            s.start,
            s.end,
            s.voiced,
            s.ingest_ms,
        )
        if w is None:
            assert e.embedding is None
        else:
            assert len(e.embedding) == 256
            np.testing.assert_allclose(e.embedding, embedder.embed([windows[w]])[0], atol=1e-4)


def test_stage_with_no_windows_or_no_steps(embedder):
    stage = EmbeddingStage(embedder)
    assert stage.process([]) == []
    out = stage.process([_step(0, None), _step(1, None)])
    assert [e.embedding for e in out] == [None, None]
    assert [e.step for e in out] == [0, 1]
