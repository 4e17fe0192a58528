"""Segment stage (accurate profile): segmentation-3.0 windows, runs, tracks, embedding requests, stop, resume."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import SegmentationConfig
from pipeline.devstack.synthetic import TWO_SPEAKER_SCRIPT, synthesize
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.chunking import session_records
from pipeline.stages.accurate.segmentation import (
    SegmentationModel,
    SegmentationSessionState,
    SegmentationStage,
    split_runs,
)
from pipeline.stages.base import StateVersionError
from topics import AudioChunk, SessionStart, SessionStop

CONFIG = SegmentationConfig()
SESSION = "seg-1"
CHUNK = 3200
START = SessionStart(session_id=SESSION)
# Later than every chunk; the stage goes by the audio it received, not the stop's offset.
STOP = SessionStop(session_id=SESSION, seq=1_000_000, offset=0)


def test_a_slot_is_cut_into_runs_at_its_pauses():
    slot = np.array([0.0, 0.9, 0.95, 0.6, 0.9, 0.9, 0.3, 0.1, 0.8, 0.8, 0.0])
    activity = np.stack([slot, np.zeros_like(slot)], axis=1)
    runs, slots = split_runs(activity, threshold=0.5, split_below=0.7)
    assert slots == [0, 0, 0]  # the silent slot has no run
    np.testing.assert_allclose(runs.sum(axis=1), slot)  # shared out, nothing lost or doubled
    assert [int(np.flatnonzero(r)[0]) for r in runs.T] == [1, 3, 7]  # cut at the quietest frame of each dip


@pytest.fixture(scope="module")
def stage() -> SegmentationStage:
    return SegmentationStage(CONFIG, SegmentationModel(CONFIG))


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    return float_to_pcm16(synthesize(TWO_SPEAKER_SCRIPT).audio)


def chunks(pcm: np.ndarray) -> list[AudioChunk]:
    """The chunks a producer sends, without its stop."""
    return list(session_records(pcm, SessionStart(session_id=SESSION, producer="test"), CHUNK))[:-1]


def run(stage: SegmentationStage, state: SegmentationSessionState, pieces: list[AudioChunk], finish: bool = True):
    windows = [w for chunk in pieces for w in stage.push(state, chunk, ingest_ms=0)]
    if not finish:
        return windows
    # The stop comes last, after the windows it flushes, to pass downstream.
    *flushed, stop = stage.finish(state, STOP)
    assert stop == STOP
    return windows + flushed


def test_one_window_per_step_covering_the_whole_stream(stage, pcm):
    windows = run(stage, stage.start(START), chunks(pcm))
    step = CONFIG.samples(CONFIG.step_s)
    assert [w.step for w in windows] == list(range(len(windows)))
    assert windows[-1].end >= len(pcm) > windows[-1].end - step
    assert all(w.end - w.start == CONFIG.samples(CONFIG.window_s) for w in windows)
    assert windows[0].start < 0  # the first windows reach back into zero padding


def test_tracks_follow_voices_and_ask_for_embeddings_sparingly(stage, pcm):
    windows = run(stage, stage.start(START), chunks(pcm))
    tracks = {t for w in windows for t in w.tracks}
    assert 2 <= len(tracks) < len(windows)  # tracks persist across windows
    asking = [w for w in windows if w.embed_tracks]
    assert asking and len(asking) < len(windows)
    for w in windows:
        assert len(w.tracks) == len(w.activity) == len(w.follows)
        assert set(w.embed_tracks) <= set(w.tracks)
        # The audio travels only when an embedding needs it.
        assert (w.num_samples > 0) == bool(w.embed_tracks)


def test_state_restored_from_bytes_resumes_exactly(stage, pcm):
    pieces = chunks(pcm)
    uninterrupted = run(stage, stage.start(START), pieces)
    split = len(pieces) // 2
    first = stage.start(START)
    before = run(stage, first, pieces[:split], finish=False)
    restored = SegmentationSessionState.from_bytes(first.to_bytes())
    after = run(stage, restored, pieces[split - 2 :])  # two chunks replayed after the restart change nothing
    assert before + after == uninterrupted


def test_a_replayed_chunk_is_ignored(stage, pcm):
    state = stage.start(START)
    piece = chunks(pcm)[0]
    stage.push(state, piece, ingest_ms=0)
    assert stage.push(state, piece, ingest_ms=0) == []
    assert state.next_offset == len(piece.pcm) // 2


def test_the_start_and_a_stop_already_applied_change_nothing(stage, pcm):
    pieces = chunks(pcm)[:6]
    state = stage.start(SessionStart(session_id=SESSION, seq=pieces[1].seq))
    assert run(stage, state, pieces[:2], finish=False) == [] and state.next_offset == 0
    run(stage, state, pieces[2:], finish=False)
    before = state.to_bytes()
    assert stage.finish(state, SessionStop(session_id=SESSION, seq=pieces[-1].seq, offset=0)) == []
    assert state.to_bytes() == before
    assert run(stage, state, [])[-1].end >= pieces[-1].offset + CHUNK


def test_a_state_of_another_version_fails_loudly(stage, monkeypatch):
    stored = stage.start(START).to_bytes()
    monkeypatch.setattr(SegmentationSessionState, "VERSION", SegmentationSessionState.VERSION + 1)
    with pytest.raises(StateVersionError):
        SegmentationSessionState.from_bytes(stored)


def test_sessions_pushed_together_get_the_windows_they_get_alone(stage, pcm):
    # Two sessions' chunks interleaved as a worker takes them off one partition, pushed in batches of three.
    alone = run(stage, stage.start(START), chunks(pcm), finish=False)
    other = pcm[::-1].copy()
    alone_other = run(stage, stage.start(START), chunks(other), finish=False)
    states = [stage.start(START), stage.start(START)]
    pushes = [(i, chunk) for pair in zip(chunks(pcm), chunks(other)) for i, chunk in enumerate(pair)]
    together: list[list] = [[], []]
    for lo in range(0, len(pushes), 3):
        batch = pushes[lo : lo + 3]
        results = stage.push_many([(states[i], chunk, 0) for i, chunk in batch])
        for (i, _), windows in zip(batch, results):
            together[i] += windows
    for batched, single in zip(together, [alone, alone_other]):
        assert [w.step for w in batched] == [w.step for w in single]
        assert [w.tracks for w in batched] == [w.tracks for w in single]
        assert [w.embed_tracks for w in batched] == [w.embed_tracks for w in single]
        # One forward pass of eight windows is not bit-identical to eight of one: the activity may differ in rounding.
        for b, s in zip(batched, single):
            difference = np.abs(np.asarray(b.activity, int) - np.asarray(s.activity, int))
            assert difference.size == 0 or difference.max() <= 2


def test_a_push_that_fails_in_a_batch_loses_only_its_own_windows(stage, pcm):
    good, bad = stage.start(START), stage.start(START)
    first, second, *_ = chunks(pcm)
    broken = second.model_copy(update={"pcm": b"\x01\x02\x03"})  # an odd byte count is no PCM16
    results = stage.push_many([(good, first, 0), (bad, first, 0), (bad, broken, 0), (good, second, 0)])
    assert isinstance(results[2], ValueError)
    assert all(isinstance(r, list) for i, r in enumerate(results) if i != 2)
    assert good.next_offset == len(first.pcm) // 2 + len(second.pcm) // 2
