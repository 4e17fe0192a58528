"""Live labels and turns on their own, from windows whose speakers are already known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import OverlapClusteringConfig
from pipeline.stages.accurate.aggregation import WindowActivity
from pipeline.stages.accurate.live_labels import LiveLabels, LiveLabelsState
from topics import SpeakerTurn, SpeakerUpdate

SESSION = "live-1"
FRAME_S = 0.05


def talking(speakers: dict[int, list[tuple[float, float]]], duration_s: float) -> WindowActivity:
    """One window over the whole session; each speaker talks in their intervals."""
    times = FRAME_S / 2 + FRAME_S * np.arange(int(duration_s / FRAME_S))
    activity = [
        np.any([(times >= a) & (times < b) for a, b in spans], axis=0).astype(float).tolist()
        for spans in speakers.values()
    ]
    return WindowActivity(
        start_s=0.0,
        end_s=duration_s,
        frame_offset_s=FRAME_S / 2,
        frame_step_s=FRAME_S,
        tracks=list(range(len(speakers))),
        activity=activity,
        speakers=list(speakers),
    )


def settle_every(labels, state, windows, step_s, duration_s):
    outputs = []
    for k in range(1, int(duration_s / step_s) + 1):
        outputs += labels.settle(state, SESSION, windows, k * step_s, ingest_ms=7)
    return outputs + labels.close_turns(state, SESSION)


def test_a_turn_outlasts_a_short_pause_and_closes_after_a_long_one():
    labels = LiveLabels(OverlapClusteringConfig(max_turn_gap_s=1.0))
    state = LiveLabelsState()
    windows = [talking({0: [(0.0, 2.0), (2.5, 4.0), (6.0, 7.0)]}, 8.0)]
    outputs = settle_every(labels, state, windows, 0.5, 8.0)
    final = [(t.start_ms, t.end_ms) for t in outputs if isinstance(t, SpeakerTurn) and t.final]
    assert final == [(0, pytest.approx(4000, abs=30)), (pytest.approx(6000, abs=30), pytest.approx(7000, abs=30))]
    opened = [t.start_ms for t in outputs if isinstance(t, SpeakerTurn) and not t.final]
    assert opened == [0, pytest.approx(6000, abs=30)]
    assert state.turns == {}


def test_each_settled_region_makes_one_update_with_the_talk_time_so_far():
    labels = LiveLabels(OverlapClusteringConfig())
    state = LiveLabelsState()
    windows = [talking({0: [(0.0, 3.0)], 1: [(2.0, 5.0)]}, 6.0)]
    outputs = settle_every(labels, state, windows, 1.0, 6.0)
    updates = [o for o in outputs if isinstance(o, SpeakerUpdate)]
    assert [u.position_ms for u in updates] == [1000, 2000, 3000, 4000, 5000, 6000]
    assert all(u.ingest_ms == 7 for u in updates)
    assert updates[-1].speaking_time_ms == {0: pytest.approx(3000, abs=30), 1: pytest.approx(3000, abs=30)}
    # Between 2 and 3 s both talk; the update at 3 s catches them both still on.
    assert set(updates[2].active_speakers) == {0, 1}
    # Settling a region already settled changes nothing.
    assert labels.settle(state, SESSION, windows, 6.0, ingest_ms=7) == []
