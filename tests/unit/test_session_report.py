"""The final report on its own: the count asked for, cannot-link, live ids kept, pieces kept whole."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import OverlapClusteringConfig
from pipeline.stages.accurate.aggregation import WindowActivity
from pipeline.stages.accurate.session_report import Embedded, ReportBuilder, ReportPiece, ReportState

SESSION = "report-1"
CONFIG = OverlapClusteringConfig()


def voice(index: int, noise: float = 0.0, seed: int = 0) -> list[float]:
    vector = np.zeros(16)
    vector[index] = 1.0
    vector += noise * np.random.default_rng(seed).normal(size=16)
    return (vector / np.linalg.norm(vector)).tolist()


def material(voice_of_track: dict[int, list[float]], seconds: float = 3.0) -> ReportState:
    """Each track embedded once and talking `seconds` on its own, one after the other, live speaker = track."""
    state = ReportState()
    for k, (track, vector) in enumerate(voice_of_track.items()):
        start = k * seconds
        state.embedded.append(Embedded(track=track, time_s=start + seconds / 2, speech_s=seconds, vector=vector))
        state.pieces.append(
            ReportPiece(live=track, track=track, start_ms=int(start * 1000), end_ms=int((start + seconds) * 1000))
        )
    return state


@pytest.mark.parametrize("asked", [1, 2, 3, 4])
def test_the_report_has_exactly_the_number_of_speakers_asked_for(asked):
    state = material({t: voice(t) for t in range(4)})
    report = ReportBuilder(CONFIG).report(state, SESSION, 12.0, num_speakers=asked, max_speakers=asked)
    assert len(report.speakers) == asked
    assert sum(s.total_time_ms for s in report.speakers) == 12_000


def test_a_blip_never_takes_one_of_the_speakers_asked_for():
    state = material({0: voice(0), 1: voice(1)})
    # An embedding no settled speech is nearest to (a track heard for a moment), unlike either voice.
    state.embedded.append(Embedded(track=9, time_s=1.0, speech_s=0.3, vector=voice(7)))
    report = ReportBuilder(CONFIG).report(state, SESSION, 6.0, num_speakers=2, max_speakers=2)
    assert sorted(s.total_time_ms for s in report.speakers) == [3000, 3000]


def test_the_lower_bound_is_honoured_without_a_count():
    state = material({0: voice(0), 1: voice(0, noise=0.05), 2: voice(0, noise=0.05, seed=1)})
    estimated = ReportBuilder(CONFIG).report(state, SESSION, 9.0, num_speakers=None, max_speakers=20)
    bounded = ReportBuilder(CONFIG).report(state, SESSION, 9.0, num_speakers=None, max_speakers=20, min_speakers=2)
    assert len(estimated.speakers) == 1 and len(bounded.speakers) == 2


def test_without_a_count_the_report_estimates_it():
    state = material({0: voice(0), 1: voice(1), 2: voice(0, noise=0.05), 3: voice(2)})
    report = ReportBuilder(CONFIG).report(state, SESSION, 12.0, num_speakers=None, max_speakers=20)
    assert sorted(s.total_time_ms for s in report.speakers) == [3000, 3000, 6000]


def test_tracks_heard_together_stay_apart_in_the_report():
    state = material({0: voice(0), 1: voice(0, noise=0.05)})
    state.cannot_link = {(0, 1)}
    report = ReportBuilder(CONFIG).report(state, SESSION, 6.0, num_speakers=None, max_speakers=20)
    assert len(report.speakers) == 2


def test_the_report_keeps_the_live_ids_it_matches():
    # Live speaker 1 spoke first, live speaker 0 second: the clusters keep those ids.
    state = material({1: voice(1), 0: voice(0)})
    report = ReportBuilder(CONFIG).report(state, SESSION, 6.0, num_speakers=None, max_speakers=20)
    assert [(t.speaker, t.start_ms) for t in report.turns] == [(1, 0), (0, 3000)]


def test_embeddings_heard_together_are_kept_as_cannot_link_pairs():
    state = ReportState()
    window = WindowActivity(
        start_s=0.0, end_s=5.0, frame_offset_s=0.025, frame_step_s=0.05, tracks=[4, 7, 9], activity=[[1.0]] * 3
    )
    builder = ReportBuilder(CONFIG)
    builder.keep_embeddings(state, window, {4: voice(0), 7: voice(1)}, {4: 1.23456, 7: 2.0, 9: 0.1}, {(4, 7)})
    builder.keep_embeddings(state, window, {9: voice(2)}, {9: 0.1}, {(7, 9)})
    assert [(e.track, e.time_s, e.speech_s) for e in state.embedded] == [(4, 2.5, 1.235), (7, 2.5, 2.0), (9, 2.5, 0.1)]
    # Only pairs embedded in the same window are kept: 7 talking over 9, embedded later, is not.
    assert state.cannot_link == {(0, 1)}


def test_a_piece_continuing_the_last_one_extends_it():
    frames = 100  # 5 s at 50 ms, one voice throughout
    window = WindowActivity(
        start_s=0.0,
        end_s=5.0,
        frame_offset_s=0.025,
        frame_step_s=0.05,
        tracks=[3],
        activity=[[1.0] * frames],
        speakers=[0],
    )
    builder = ReportBuilder(CONFIG)
    state = ReportState()
    for until_s in (1.0, 2.0, 3.0, 5.0):
        builder.settle(state, [window], until_s)
    assert state.pieces == [ReportPiece(live=0, track=3, start_ms=0, end_ms=5000)]
