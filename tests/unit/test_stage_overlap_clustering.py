"""Cluster stage (accurate profile) on hand-made windows: identities, overlap, twins, latency, report, resume."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest

from pipeline.config import OverlapClusteringConfig
from pipeline.stages.accurate.aggregation import WindowActivity
from pipeline.stages.accurate.overlap_clustering import (
    OverlapClusteringSessionState,
    OverlapClusteringStage,
    co_active,
)
from pipeline.stages.base import ClusterStage, StateVersionError
from topics import SessionReport, SessionStart, SessionStop, SpeakerUpdate, WindowEmbeddings

SESSION = "clu-1"
RATE = 16_000
WINDOW_S, STEP_S, FRAME_S = 5.0, 0.5, 0.05
FRAMES = int(WINDOW_S / FRAME_S)


def voice(index: int, noise: float = 0.0, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    vector = np.zeros(16)
    vector[index] = 1.0
    vector += noise * rng.normal(size=16)
    return (vector / np.linalg.norm(vector)).tolist()


def script_windows(talk: dict[int, list[tuple[float, float]]], duration_s: float, voices: dict[int, list[float]]):
    """Windows every step over `duration_s`; track t talks in its intervals; each window embeds every track it hears."""
    windows = []
    for step in range(int(duration_s / STEP_S)):
        end = (step + 1) * STEP_S
        start = end - WINDOW_S
        times = start + FRAME_S / 2 + FRAME_S * np.arange(FRAMES)
        tracks, activity = [], []
        for track, spans in talk.items():
            on = np.zeros(FRAMES)
            for a, b in spans:
                on[(times >= a) & (times < b)] = 100
            if on.any():
                tracks.append(track)
                activity.append(on.astype(int).tolist())
        windows.append(
            WindowEmbeddings(
                session_id=SESSION,
                step=step,
                start=int(start * RATE),
                end=int(end * RATE),
                ingest_ms=0,
                frame_offset_s=FRAME_S / 2,
                frame_step_s=FRAME_S,
                tracks=tracks,
                activity=activity,
                embeddings={t: voices[t] for t in tracks},
            )
        )
    return windows


def run(stage, windows, duration_s, num_speakers=None):
    state = stage.start(SessionStart(session_id=SESSION, num_speakers=num_speakers))
    outputs = [o for w in windows for o in stage.push(state, w)]
    outputs += stage.finish(state, stop_at(duration_s))
    updates = [o for o in outputs if isinstance(o, SpeakerUpdate)]
    (report,) = [o for o in outputs if isinstance(o, SessionReport)]
    return state, updates, report


def stop_at(duration_s: float) -> SessionStop:
    return SessionStop(session_id=SESSION, seq=1, offset=int(duration_s * RATE))


def speech_of(spans, speaker) -> float:
    return sum(s.end_ms - s.start_ms for s in spans if s.speaker == speaker) / 1000


CONFIG = OverlapClusteringConfig(latency_s=1.0)


def test_two_voices_take_turns_and_overlap():
    talk = {0: [(0.0, 4.0)], 1: [(3.0, 7.0)], 2: [(8.0, 11.0)]}  # track 2 is voice 0 again
    voices = {0: voice(0), 1: voice(1), 2: voice(0, noise=0.1)}
    _, updates, report = run(OverlapClusteringStage(CONFIG), script_windows(talk, 12.0, voices), 12.0)
    spans = [s for u in updates for s in u.spans]
    assert {s.speaker for s in spans} == {0, 1}
    assert speech_of(spans, 0) == pytest.approx(7.0, abs=0.3)
    assert speech_of(spans, 1) == pytest.approx(4.0, abs=0.3)
    overlap = [u for u in updates if len(u.active_speakers) == 2]
    assert overlap and all(3.0 <= u.position_ms / 1000 <= 4.2 for u in overlap)
    assert {s.id: s.total_time_ms / 1000 for s in report.speakers} == pytest.approx({0: 7.0, 1: 4.0}, abs=0.3)


def test_labels_trail_the_audio_by_the_latency():
    talk = {0: [(0.0, 10.0)]}
    for latency in (0.5, 2.0):
        stage = OverlapClusteringStage(dataclasses.replace(CONFIG, latency_s=latency))
        state = stage.start(SessionStart(session_id=SESSION))
        checked = 0
        for window in script_windows(talk, 10.0, {0: voice(0)}):
            (update,) = [o for o in stage.push(state, window) if isinstance(o, SpeakerUpdate)] or [None]
            if window.end / RATE > latency:  # from then on, every window settles one more region
                assert update is not None and update.position_ms == round((window.end / RATE - latency) * 1000)
                checked += 1
        assert checked == round((10.0 - latency) / STEP_S)


def test_a_twin_speaker_is_merged_back():
    # Track 1 is voice 0 heard through noise: distant enough to open a speaker, then its
    # centroid drifts back. With merging, later tracks of that voice keep the first id.
    talk = {0: [(0.0, 4.0)], 1: [(5.0, 9.0)], 2: [(10.0, 14.0)]}
    noisy = (np.asarray(voice(0)) + 0.9 * np.asarray(voice(5))).tolist()
    voices = {0: voice(0), 1: (np.asarray(noisy) / np.linalg.norm(noisy)).tolist(), 2: voice(0)}
    windows = script_windows(talk, 15.0, voices)
    merging = OverlapClusteringStage(dataclasses.replace(CONFIG, new_speaker_distance=0.25, merge_distance=0.6))
    state, updates, _ = run(merging, windows, 15.0)
    assert state.identity.merged_into == {1: 0}
    late = [s for u in updates for s in u.spans if s.start_ms >= 10_500]
    assert late and {s.speaker for s in late} == {0}


def test_the_report_reclusters_and_honours_a_given_count():
    talk = {0: [(0.0, 3.0)], 1: [(4.0, 7.0)], 2: [(8.0, 11.0)], 3: [(12.0, 15.0)]}
    voices = {0: voice(0), 1: voice(1), 2: voice(2), 3: voice(0, noise=0.05)}
    stage = OverlapClusteringStage(dataclasses.replace(CONFIG, merge_distance=None))
    _, _, estimated = run(stage, script_windows(talk, 16.0, voices), 16.0)
    assert len(estimated.speakers) == 3
    _, _, forced = run(stage, script_windows(talk, 16.0, voices), 16.0, num_speakers=2)
    assert len(forced.speakers) == 2
    assert sum(s.total_time_ms for s in forced.speakers) == pytest.approx(12_000, abs=400)


def test_with_the_count_given_live_and_report_keep_to_it():
    # Voice 0, then voice 0 heard through noise (a twin of its own), voices 1 and 2, voice 0 again: three voices.
    talk = {0: [(0.0, 4.0)], 1: [(5.0, 7.0)], 2: [(8.0, 11.0)], 3: [(12.0, 15.0)], 4: [(16.0, 19.0)]}
    twin = np.asarray(voice(0)) + 1.7 * np.asarray(voice(5))
    voices = {0: voice(0), 1: (twin / np.linalg.norm(twin)).tolist(), 2: voice(1), 3: voice(2), 4: voice(0, 0.05)}
    stage = OverlapClusteringStage(CONFIG)
    state, updates, report = run(stage, script_windows(talk, 20.0, voices), 20.0, num_speakers=3)
    assert len(state.identity.evidence) == 4  # the twin stays a speaker of the session's own...
    spans = [s for u in updates for s in u.spans]
    assert len({s.speaker for s in spans}) == 3  # ...but clients only ever see three
    late = [s for s in spans if s.start_ms >= 16_500]
    assert late and {s.speaker for s in late} == {0}
    assert len(report.speakers) == 3 and all(s.total_time_ms > 0 for s in report.speakers)
    assert sorted(s.total_time_ms / 1000 for s in report.speakers) == pytest.approx([3.0, 3.0, 9.0], abs=0.3)


@pytest.mark.parametrize("num_speakers", [2, None], ids=["count given", "count estimated"])
def test_below_the_limit_a_voice_the_first_speaker_absorbed_is_split_off(num_speakers):
    # Voice b lies 0.3 from voice a, within the opening distance (below the floor too): its first embedding joins a.
    a = np.asarray(voice(0))
    b = 0.7 * a + np.sqrt(0.51) * np.asarray(voice(1))
    talk = {0: [(0.0, 6.0)], 1: [(6.5, 12.5)], 2: [(13.0, 18.0)]}
    windows = script_windows(talk, 18.0, {0: a.tolist(), 1: b.tolist(), 2: a.tolist()})
    never = OverlapClusteringStage(dataclasses.replace(CONFIG, split_distance=None))
    _, updates, _ = run(never, windows, 18.0, num_speakers=num_speakers)
    assert {s.speaker for u in updates for s in u.spans} == {0}
    state, updates, _ = run(OverlapClusteringStage(CONFIG), windows, 18.0, num_speakers=num_speakers)
    spans = [s for u in updates for s in u.spans]
    first = {s.speaker for s in spans if s.end_ms <= 6_000}
    late_b = {s.speaker for s in spans if 10_500 <= s.start_ms and s.end_ms <= 12_500}
    late_a = {s.speaker for s in spans if s.start_ms >= 15_000}
    assert len(first) == 1 and late_a == first
    assert len(late_b) == 1 and late_b != first
    assert len(state.identity.apart) == 0  # they never talked at once


@pytest.mark.parametrize("num_speakers", [2, None], ids=["count given", "count estimated"])
def test_one_voice_is_not_split(num_speakers):
    talk = {0: [(0.0, 6.0)], 1: [(6.5, 12.5)], 2: [(13.0, 18.0)]}
    voices = {t: voice(0, noise=0.1, seed=t) for t in talk}
    state, updates, report = run(
        OverlapClusteringStage(CONFIG), script_windows(talk, 18.0, voices), 18.0, num_speakers=num_speakers
    )
    assert {s.speaker for u in updates for s in u.spans} == {0}
    assert len([e for e in state.identity.evidence if e > 0]) == 1


def test_only_a_confident_shared_stretch_makes_two_tracks_two_voices():
    voice_a = [1.0] * 60 + [0.0] * 40  # 5 s at 50 ms
    echo = [0.0] * 10 + [0.55] * 50 + [0.0] * 40  # the segmentation's second slot for one reverberant voice
    voice_b = [0.0] * 50 + [0.9] * 50  # a second voice overlapping the first for 0.5 s
    blip = [0.0] * 58 + [0.9] * 1 + [0.0] * 41  # one frame together: not an overlap
    window = WindowActivity(
        start_s=0.0,
        end_s=5.0,
        frame_offset_s=0.025,
        frame_step_s=FRAME_S,
        tracks=[0, 1, 2, 3],
        activity=[voice_a, echo, voice_b, blip],
    )
    assert co_active(window, CONFIG.co_active_threshold, CONFIG.co_active_min_s) == {(0, 2)}


def test_state_survives_the_changelog_and_replays_change_nothing():
    talk = {0: [(0.0, 4.0)], 1: [(3.5, 8.0)]}
    windows = script_windows(talk, 9.0, {0: voice(0), 1: voice(1)})
    stage = OverlapClusteringStage(CONFIG)
    _, _, uninterrupted = run(stage, windows, 9.0)
    state = stage.start(SessionStart(session_id=SESSION))
    for window in windows[:10]:
        stage.push(state, window)
    restored = OverlapClusteringSessionState.from_bytes(state.to_bytes())
    outputs = [o for w in windows[8:] for o in stage.push(restored, w)]  # two windows replayed
    outputs += stage.finish(restored, stop_at(9.0))
    assert [o for o in outputs if isinstance(o, SessionReport)] == [uninterrupted]


def test_a_state_of_another_version_fails_loudly():
    stage = OverlapClusteringStage(CONFIG)
    state = stage.start(SessionStart(session_id=SESSION))
    for window in script_windows({0: [(0.0, 4.0)]}, 4.0, {0: voice(0)}):
        stage.push(state, window)
    # Version 1 was one flat model of every part's fields, stored as bare JSON with no version field.
    parts = state.model_dump(mode="json")
    identity, live, report = parts.pop("identity"), parts.pop("live"), parts.pop("report")
    del parts["speaker_floor"], parts["naming"]
    identity = {k: identity[k] for k in ("centroid_sums", "speaker_of_track", "merged_into")} | {"provisional": {}}
    flat = parts | identity | {"embedded": report["embedded"], "cannot_link": report["cannot_link"]}
    flat |= {"live_until_s": live["until_s"], "report_until_s": report["until_s"], "live": live["binarizer"]}
    flat |= {"report": report["binarizer"], "talk_ms": live["talk_ms"], "turns": live["turns"]}
    flat |= {"pieces": report["pieces"]}
    assert len(flat) == 20
    with pytest.raises(StateVersionError):
        OverlapClusteringSessionState.from_bytes(json.dumps(flat).encode())
    stored = json.loads(state.to_bytes())
    for older in (1, 2, 3):  # 2: the identity without evidence per track, apart pairs or shown ids; 3: no names
        stored["v"] = older
        with pytest.raises(StateVersionError):
            OverlapClusteringSessionState.from_bytes(json.dumps(stored).encode())
    assert OverlapClusteringSessionState.from_bytes(state.to_bytes()) == state


def test_the_stage_has_the_cluster_role():
    for verb in ("start", "push", "finish"):
        declared = inspect.signature(getattr(ClusterStage, verb)).parameters
        assert list(inspect.signature(getattr(OverlapClusteringStage, verb)).parameters) == list(declared)
    assert OverlapClusteringStage.state_type is OverlapClusteringSessionState
    assert OverlapClusteringStage.input_type is WindowEmbeddings
