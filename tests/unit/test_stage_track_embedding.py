"""Embed stage (accurate profile): CAM++ with activity-weighted pooling, crops, overlap penalty."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import TrackEmbeddingConfig
from pipeline.devstack.synthetic import TWO_SPEAKER_SCRIPT, synthesize
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.stages.accurate.track_embedding import CamppEmbedder, TrackEmbeddingStage, overlap_penalised_weights
from topics import SegmentedWindow

CONFIG = TrackEmbeddingConfig()


def test_overlapped_frames_weigh_less():
    activity = np.array([[1.0, 0.0], [1.0, 1.0], [0.5, 0.0]])
    weights = overlap_penalised_weights(activity, gamma=3.0, beta=10.0)
    assert weights[0, 0] == pytest.approx(1.0, abs=1e-4)
    assert weights[1, 0] == pytest.approx(0.5)  # shared with another voice
    assert weights[2, 0] < 0.2  # uncertain activity counts little
    assert weights[0, 1] == 0.0


@pytest.mark.parametrize(
    "talk, expected",
    [
        ((0, 3), (0.0, 1.0)),
        ((97, 100), (4.0, 5.0)),
        ((40, 45), (1.6, 2.6)),
        ((10, 90), (0.35, 4.6)),
        ((20, 52), (0.775, 2.775)),  # 1.85 s of talk and margins: 2.0 s, a whole number of quanta
        ((2, 50), (0.0, 2.75)),  # 2.6 s cut by the window's start: 2.75 s reaching inwards
    ],
)
def test_crop_covers_the_talk_with_margins_in_whole_quanta_and_slides_off_the_edges(talk, expected):
    stage = TrackEmbeddingStage(CONFIG, embedder=None)
    activity = np.zeros((100, 1))
    activity[talk[0] : talk[1]] = 1.0
    lo, hi = stage._crop(activity, np.arange(100) * 0.05, 5.0)
    assert (lo, hi) == pytest.approx(expected)
    assert round((hi - lo) / CONFIG.crop_quantum_s, 6) % 1 == 0


def test_crops_of_any_talk_take_few_lengths():
    """oneDNN keeps kernels per input length: the crops' lengths must not grow without bound."""
    stage = TrackEmbeddingStage(CONFIG, embedder=None)
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(500):
        first = rng.integers(0, 99)
        activity = np.zeros((100, 1))
        activity[first : rng.integers(first + 1, 101)] = 1.0
        lo, hi = stage._crop(activity, np.arange(100) * 0.05, 5.0)
        lengths.add(int(round((hi - lo) * 16_000)))
    assert len(lengths) <= 17  # 1.0 to 5.0 s in 0.25 s steps


@pytest.fixture(scope="module")
def conversation():
    return synthesize(TWO_SPEAKER_SCRIPT)


def test_pooling_weights_pick_one_voice_out_of_a_window(conversation):
    embedder = CamppEmbedder(CONFIG)
    first, second = conversation.segments[0], conversation.segments[1]
    assert first.speaker != second.speaker
    pcm = float_to_pcm16(conversation.audio)
    rate = 16_000
    start = int(first.start_s * rate)
    end = int(second.end_s * rate)
    window = pcm[start:end]
    times = np.arange(0, (end - start) / rate, 0.02)
    in_first = (times < first.end_s - first.start_s).astype(float)
    in_second = ((times >= second.start_s - first.start_s) & (times < second.end_s - first.start_s)).astype(float)
    pooled = embedder.embed(window, np.stack([in_first, in_second], axis=1), times)
    alone_first = embedder.embed(pcm[start : int(first.end_s * rate)], np.ones((2, 1)), np.array([0.0, 99.0]))[0]
    alone_second = embedder.embed(pcm[int(second.start_s * rate) : end], np.ones((2, 1)), np.array([0.0, 99.0]))[0]
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    assert pooled[0] @ alone_first > pooled[0] @ alone_second
    assert pooled[1] @ alone_second > pooled[1] @ alone_first


def test_only_requested_tracks_are_embedded(conversation):
    stage = TrackEmbeddingStage(CONFIG, CamppEmbedder(CONFIG))
    # What the embed agent reads off the stage: its model info and its batching.
    assert (stage.model_name, stage.input_type) == ("campplus", SegmentedWindow)
    assert stage.device in ("cpu", "cuda")
    assert (stage.max_batch, stage.max_wait_s) == (CONFIG.max_batch, CONFIG.max_wait_s)
    pcm = float_to_pcm16(conversation.audio)[: 5 * 16_000]
    activity = [[100] * 150 + [0] * 143, [0] * 150 + [100] * 143]
    window = SegmentedWindow(
        session_id="s",
        step=9,
        start=0,
        end=len(pcm),
        ingest_ms=7,
        frame_offset_s=0.03,
        frame_step_s=0.017,
        tracks=[4, 5],
        activity=activity,
        embed_tracks=[5],
        pcm=pcm.astype("<i2").tobytes(),
    )
    silent = window.model_copy(update={"embed_tracks": [], "pcm": b""})
    embedded, nothing = stage.process([window, silent])
    assert set(embedded.embeddings) == {5} and len(embedded.embeddings[5]) == CamppEmbedder.dimension
    assert (embedded.step, embedded.tracks, embedded.activity, embedded.ingest_ms) == (9, [4, 5], activity, 7)
    assert nothing.embeddings == {}
