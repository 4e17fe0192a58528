"""ClusteringStage on synthetic unit vectors: speakers, speaker limit, known counts, talk time, turns, report, resume."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ClusteringConfig
from pipeline.stages.base import StateVersionError
from pipeline.stages.fast.clustering import ClusteringSessionState, ClusteringStage
from topics.messages import (
    SAMPLE_RATE,
    SessionReport,
    SessionStart,
    SessionStop,
    SpeakerTurn,
    SpeakerUpdate,
    StepEmbedding,
)

SESSION = "cluster-test"
STEP = SAMPLE_RATE // 2  # 0.5 s steps, as the VAD emits them
STEP_MS = 500
DIM = 256
CONFIG = ClusteringConfig()


def _directions(count: int, seed: int = 0) -> np.ndarray:
    """Orthonormal directions: as far apart as speakers can be."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((DIM, count)))
    return q.T


DIRECTIONS = _directions(4)


def voice(speaker: int, rng: np.random.Generator, spread: float = 0.25) -> list[float]:
    """A unit embedding near DIRECTIONS[speaker] (cosine about 0.97 to it)."""
    v = DIRECTIONS[speaker] + spread * rng.standard_normal(DIM) / np.sqrt(DIM)
    return (v / np.linalg.norm(v)).tolist()


def step(n: int, embedding: list[float] | None, voiced: int = STEP, ingest_ms: int | None = None) -> StepEmbedding:
    return StepEmbedding(
        session_id=SESSION,
        step=n,
        start=n * STEP,
        end=(n + 1) * STEP,
        voiced=voiced,
        ingest_ms=n * 10 if ingest_ms is None else ingest_ms,
        embedding=embedding,
    )


def steps_for(plan: str, seed: int = 0) -> list[StepEmbedding]:
    """One step per character: a digit is that voice speaking the whole step, '.' silence, '~' voiced without embedding."""
    rng = np.random.default_rng(seed)
    out = []
    for n, c in enumerate(plan):
        if c == ".":
            out.append(step(n, None, voiced=0))
        elif c == "~":
            out.append(step(n, None, voiced=STEP // 2))
        else:
            out.append(step(n, voice(int(c), rng)))
    return out


@pytest.fixture
def stage() -> ClusteringStage:
    return ClusteringStage(CONFIG)


def new_state(stage: ClusteringStage, num_speakers: int | None = 2, max_speakers: int = 20) -> ClusteringSessionState:
    return stage.start(SessionStart(session_id=SESSION, num_speakers=num_speakers, max_speakers=max_speakers))


def centroids(state: ClusteringSessionState) -> list[list[float]]:
    return [speaker.centroid_sum for speaker in state.speakers]


def blend(*weights: tuple[int, float]) -> list[float]:
    """A unit embedding mixing DIRECTIONS: (direction, weight) pairs."""
    v = sum(weight * DIRECTIONS[d] for d, weight in weights)
    return (v / np.linalg.norm(v)).tolist()


def stop_after(steps: int) -> SessionStop:
    """The producer's stop after `steps` steps of audio."""
    return SessionStop(session_id=SESSION, seq=steps + 1, offset=steps * STEP)


def push_all(stage, state, steps) -> list:
    outputs = []
    for s in steps:
        outputs += stage.push(state, s)
    return outputs


def updates(outputs) -> list[SpeakerUpdate]:
    return [o for o in outputs if isinstance(o, SpeakerUpdate)]


def turns(outputs) -> list[tuple[int, int, int, bool]]:
    return [(t.speaker, t.start_ms, t.end_ms, t.final) for t in outputs if isinstance(t, SpeakerTurn)]


def test_directions_are_what_the_tests_assume():
    rng = np.random.default_rng(1)
    a, b = np.array(voice(0, rng)), np.array(voice(0, rng))
    c = np.array(voice(1, rng))
    assert np.linalg.norm(a) == pytest.approx(1.0)
    assert a @ b > CONFIG.update_similarity
    assert abs(a @ c) < CONFIG.ignore_similarity


def test_start_takes_the_speaker_limit(stage):
    assert new_state(stage, num_speakers=3).speaker_limit == 3
    assert new_state(stage, num_speakers=None, max_speakers=5).speaker_limit == 5
    assert stage.start(SessionStart(session_id=SESSION)).speaker_limit == 20  # count estimated


def test_two_voices_become_two_speakers_with_their_talk_time(stage):
    state = new_state(stage)
    outputs = push_all(stage, state, steps_for("0000111000110"))
    ups = updates(outputs)
    assert len(ups) == 13
    assert [u.current_speaker for u in ups] == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0]
    assert ups[-1].speaking_time_ms == {0: 8 * STEP_MS, 1: 5 * STEP_MS}
    # Talk time is attributed step by step.
    assert ups[0].speaking_time_ms == {0: 500}
    assert ups[3].speaking_time_ms == {0: 2000}
    assert ups[4].speaking_time_ms == {0: 2000, 1: 500}
    assert ups[6].speaking_time_ms == {0: 2000, 1: 1500}
    assert [u.position_ms for u in ups] == [STEP_MS * (n + 1) for n in range(13)]
    assert [u.ingest_ms for u in ups] == [n * 10 for n in range(13)]
    assert all(u.session_id == SESSION for u in ups)
    assert len(centroids(state)) == 2


def test_partial_voicing_counts_only_voiced_samples(stage):
    state = new_state(stage)
    rng = np.random.default_rng(3)
    ups = updates(
        push_all(
            stage,
            state,
            [
                step(0, voice(0, rng), voiced=4000),
                step(1, voice(1, rng), voiced=1600),
                step(2, voice(0, rng), voiced=800),
            ],
        )
    )
    assert ups[-1].speaking_time_ms == {0: 300, 1: 100}


def test_a_third_voice_past_the_limit_is_ignored(stage):
    state = new_state(stage, num_speakers=2)
    outputs = push_all(stage, state, steps_for("00112220"))
    ups = updates(outputs)
    assert [u.current_speaker for u in ups] == [0, 0, 1, 1, None, None, None, 0]
    assert all(set(u.speaking_time_ms) <= {0, 1} for u in ups)
    assert ups[3].speaking_time_ms == ups[6].speaking_time_ms == {0: 1000, 1: 1000}
    assert ups[-1].speaking_time_ms == {0: 1500, 1: 1000}
    assert len(centroids(state)) == 2
    assert all(t[0] in (0, 1) for t in turns(outputs))


def test_a_third_voice_under_the_limit_is_a_new_speaker(stage):
    # Guard for the test above: the same steps with room for three speakers do open speaker 2.
    state = new_state(stage, num_speakers=3)
    ups = updates(push_all(stage, state, steps_for("00112220")))
    assert [u.current_speaker for u in ups] == [0, 0, 1, 1, 2, 2, 2, 0]
    assert ups[-1].speaking_time_ms == {0: 1500, 1: 1000, 2: 1500}


# A stretch of voice 0 unlike its centroid (cosine 0.6): mixed evidence that opens a twin while there is room.
ODD_VOICE_0 = blend((0, 0.6), (2, 0.8))


def test_a_twin_opened_early_does_not_hold_one_of_the_known_slots(stage):
    # Two speakers are known. Voice 0's odd stretch takes the second id before voice 1 is heard; once
    # voice 1 has talked for provisional_min_steps steps, the twin merges back into speaker 0 and
    # voice 1 takes the freed id.
    assert CONFIG.provisional_min_steps == 4
    state = new_state(stage, num_speakers=2)
    rng = np.random.default_rng(2)
    plan = [voice(0, rng) for _ in range(4)] + [ODD_VOICE_0] * 2 + [voice(0, rng)]
    plan += [voice(1, rng) for _ in range(7)] + [voice(0, rng)]
    outputs = push_all(stage, state, [step(n, e) for n, e in enumerate(plan)])
    ups = updates(outputs)
    # Until the twin is resolved, voice 1 is like no speaker: nobody is labelled, as past any limit.
    assert [u.current_speaker for u in ups] == [0, 0, 0, 0, 1, 1, 0, None, None, None, 1, 1, 1, 1, 0]
    assert ups[9].speaking_time_ms == {0: 2500, 1: 1000}
    assert ups[10].speaking_time_ms == {0: 3500, 1: 2000}  # the twin's time is speaker 0's, voice 1's its own
    assert ups[-1].speaking_time_ms == {0: 4000, 1: 3500}
    assert len(state.speakers) == 2 and not state.provisional
    (report,) = [o for o in stage.finish(state, stop_after(len(plan))) if isinstance(o, SessionReport)]
    assert {s.id: s.total_time_ms for s in report.speakers} == {0: 4000, 1: 3500}
    assert [(t.speaker, t.start_ms, t.end_ms) for t in report.turns] == [(0, 0, 3500), (1, 3500, 7000), (0, 7000, 7500)]


def test_with_room_for_it_the_twin_keeps_its_id(stage):
    # Guard for the test above: the same steps with three speakers allowed open a third one for voice 1.
    state = new_state(stage, num_speakers=3)
    rng = np.random.default_rng(2)
    plan = [voice(0, rng) for _ in range(4)] + [ODD_VOICE_0] * 2 + [voice(0, rng)]
    plan += [voice(1, rng) for _ in range(7)] + [voice(0, rng)]
    ups = updates(push_all(stage, state, [step(n, e) for n, e in enumerate(plan)]))
    assert [u.current_speaker for u in ups] == [0, 0, 0, 0, 1, 1, 0, 2, 2, 2, 2, 2, 2, 2, 0]


def test_an_odd_stretch_of_a_known_voice_past_the_limit_joins_it(stage):
    # Both ids hold distinct voices; the odd stretch is labelled with its nearest speaker, and once
    # settled its time is that speaker's. No speaker is merged: the two are unlike each other.
    state = new_state(stage, num_speakers=2)
    rng = np.random.default_rng(4)
    plan = [voice(0, rng) for _ in range(4)] + [voice(1, rng) for _ in range(4)] + [ODD_VOICE_0] * 4
    plan += [voice(0, rng)]
    ups = updates(push_all(stage, state, [step(n, e) for n, e in enumerate(plan)]))
    assert [u.current_speaker for u in ups] == [0] * 4 + [1] * 4 + [0] * 5
    assert ups[10].speaking_time_ms == {0: 2000, 1: 2000}  # provisional: counted once it is settled
    assert ups[11].speaking_time_ms == {0: 4000, 1: 2000}
    assert ups[-1].speaking_time_ms == {0: 4500, 1: 2000}
    assert len(state.speakers) == 2 and not state.provisional


def test_a_voice_like_nobody_stays_ignored_however_long_it_talks(stage):
    state = new_state(stage, num_speakers=2)
    outputs = push_all(stage, state, steps_for("000011112222222"))
    ups = updates(outputs)
    assert [u.current_speaker for u in ups] == [0] * 4 + [1] * 4 + [None] * 7
    assert ups[-1].speaking_time_ms == {0: 2000, 1: 2000}
    assert [v.steps for v in state.provisional] == [7]
    (report,) = [o for o in stage.finish(state, stop_after(15)) if isinstance(o, SessionReport)]
    assert {s.id: s.total_time_ms for s in report.speakers} == {0: 2000, 1: 2000}
    assert all(t.end_ms <= 4000 for t in report.turns)


def test_the_report_gives_a_voices_first_words_back_to_it(stage):
    # The first step of voice 1 is mixed with voice 0 (cosine 0.71 to it) and heard before speaker 1
    # exists, so it goes to speaker 0 live; with every speaker known, the report gives it to speaker 1.
    state = new_state(stage, num_speakers=None)
    first_words = blend((0, 0.71), (1, 0.70))
    voice_1 = blend((0, 0.3), (1, 0.95))
    plan = [blend((0, 1.0))] * 3 + [None, first_words] + [voice_1] * 3
    outputs = push_all(stage, state, [step(n, e, voiced=STEP if e else 0) for n, e in enumerate(plan)])
    ups = updates(outputs)
    assert [u.current_speaker for u in ups] == [0, 0, 0, None, 0, 1, 1, 1]
    assert ups[-1].speaking_time_ms == {0: 2000, 1: 1500}
    (report,) = [o for o in stage.finish(state, stop_after(len(plan))) if isinstance(o, SessionReport)]
    assert {s.id: s.total_time_ms for s in report.speakers} == {0: 1500, 1: 2000}
    assert [(t.speaker, t.start_ms, t.end_ms) for t in report.turns] == [(0, 0, 1500), (1, 2000, 4000)]


def test_without_num_speakers_max_speakers_bounds_the_count(stage):
    state = new_state(stage, num_speakers=None, max_speakers=3)
    ups = updates(push_all(stage, state, steps_for("0123")))
    assert [u.current_speaker for u in ups] == [0, 1, 2, None]


def test_a_voiced_step_without_embedding_joins_the_ongoing_speaker(stage):
    state = new_state(stage)
    outputs = push_all(stage, state, steps_for("00~11~~1"))
    ups = updates(outputs)
    assert [u.current_speaker for u in ups] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert ups[2].speaking_time_ms == {0: 1250}
    assert ups[-1].speaking_time_ms == {0: 1250, 1: 1500 + 500}
    # The joined steps extend the speaker's turn.
    assert turns(outputs) == [(0, 0, 500, False), (0, 0, 1500, True), (1, 1500, 2000, False)]


def test_voiced_steps_before_anyone_is_named_go_to_the_next_speaker(stage):
    state = new_state(stage)
    ups = updates(push_all(stage, state, steps_for("~~.~1")))
    assert [u.current_speaker for u in ups] == [None, None, None, None, 0]
    assert [u.speaking_time_ms for u in ups[:4]] == [{}, {}, {}, {}]
    assert ups[-1].speaking_time_ms == {0: 3 * 250 + 500}


def test_silence_is_nobody_and_counts_for_nobody(stage):
    state = new_state(stage)
    ups = updates(push_all(stage, state, steps_for("0..0")))
    assert [u.current_speaker for u in ups] == [0, None, None, 0]
    assert ups[-1].speaking_time_ms == {0: 1000}


def test_replayed_steps_are_ignored(stage):
    plan = steps_for("0011~.10")
    state = new_state(stage)
    push_all(stage, state, plan[:5])
    snapshot = state.model_dump()
    rng = np.random.default_rng(9)
    for replay in (plan[4], plan[0], step(2, voice(0, rng)), step(4, voice(3, rng))):
        assert stage.push(state, replay) == []
        assert state.model_dump() == snapshot
    rest = push_all(stage, state, plan[5:])
    fresh = new_state(stage)
    assert rest == push_all(stage, fresh, plan)[-len(rest) :]
    assert state == fresh


def test_turns_open_and_close_on_speaker_change(stage):
    state = new_state(stage)
    outputs = push_all(stage, state, steps_for("000110"))
    assert turns(outputs) == [
        (0, 0, 500, False),
        (0, 0, 1500, True),
        (1, 1500, 2000, False),
        (1, 1500, 2500, True),
        (0, 2500, 3000, False),
    ]
    # A turn message comes before the update of the same step.
    assert [type(o).__name__ for o in stage.push(state, steps_for("0000001")[-1])] == [
        "SpeakerTurn",
        "SpeakerTurn",
        "SpeakerUpdate",
    ]


def test_a_long_silence_closes_the_turn(stage):
    state = new_state(stage)
    assert CONFIG.max_turn_gap_s == 1.0
    outputs = []
    per_step = []
    for s in steps_for("00...0"):
        out = stage.push(state, s)
        per_step.append(turns(out))
        outputs += out
    # The silence reaches 1.5 s at step 4: longer than max_turn_gap_s, the turn closes at its last speech.
    assert per_step == [[(0, 0, 500, False)], [], [], [], [(0, 0, 1000, True)], [(0, 2500, 3000, False)]]
    (report,) = [o for o in stage.finish(state, stop_after(6)) if isinstance(o, SessionReport)]
    assert report.turns[0].end_ms == 2 * STEP_MS


def test_a_short_silence_keeps_the_turn_open(stage):
    state = new_state(stage)
    outputs = push_all(stage, state, steps_for("00..00"))
    # A 1.0 s silence is not longer than max_turn_gap_s: one turn, never closed, extended over the pause.
    assert turns(outputs) == [(0, 0, 500, False)]
    assert state.turn is not None and (state.turn.start, state.turn.end) == (0, 6 * STEP)
    report = stage.finish(state, stop_after(6))
    assert turns(report) == [(0, 0, 3000, True)]


def test_an_ignored_voice_keeps_nobody_talking_and_closes_stale_turns(stage):
    state = new_state(stage, num_speakers=1)
    outputs = push_all(stage, state, steps_for("0111"))
    assert [u.current_speaker for u in updates(outputs)] == [0, None, None, None]
    assert turns(outputs) == [(0, 0, 500, False), (0, 0, 500, True)]


def test_finish_reports_totals_and_every_turn(stage):
    state = new_state(stage)
    outputs = push_all(stage, state, steps_for("00~11...1100.~0", seed=4))
    last = updates(outputs)[-1]
    final = stage.finish(state, stop_after(15))
    assert [type(o) for o in final] == [SpeakerTurn, SessionReport]
    closing = final[0]
    assert closing.final and (closing.speaker, closing.end_ms) == (0, 7500)
    report = final[-1]
    assert report.session_id == SESSION
    assert report.duration_ms == 15 * STEP_MS
    assert {s.id: s.total_time_ms for s in report.speakers} == last.speaking_time_ms == {0: 3000, 1: 2000}
    final_turns = [t for t in turns(outputs) + turns(final) if t[3]]
    assert [(t.speaker, t.start_ms, t.end_ms) for t in report.turns] == [t[:3] for t in final_turns]
    assert [(t.speaker, t.start_ms, t.end_ms) for t in report.turns] == [
        (0, 0, 1500),
        (1, 1500, 2500),
        (1, 4000, 5000),
        (0, 5000, 7500),
    ]
    # Turns in the report do not overlap and are in time order.
    for a, b in zip(report.turns, report.turns[1:]):
        assert a.end_ms <= b.start_ms


def test_finish_with_no_speech(stage):
    state = new_state(stage)
    push_all(stage, state, steps_for("...."))
    (report,) = stage.finish(state, stop_after(4))
    assert report == SessionReport(session_id=SESSION, duration_ms=2000, speakers=[], turns=[])


def test_the_report_lasts_as_long_as_the_stream_the_producer_sent(stage):
    # Audio after the last step (shorter than a step) still counts in the session's duration.
    state = new_state(stage)
    push_all(stage, state, steps_for("00"))
    (report,) = [
        o
        for o in stage.finish(state, SessionStop(session_id=SESSION, seq=3, offset=2 * STEP + 800))
        if isinstance(o, SessionReport)
    ]
    assert report.duration_ms == 2 * STEP_MS + 50


@pytest.mark.parametrize("split", [1, 3, 6, 9, 12])
def test_state_json_round_trip_resumes_identically(split):
    plan = steps_for("0~0011..1~2210..0", seed=7)
    first = ClusteringStage(CONFIG)
    uninterrupted_state = new_state(first, num_speakers=3)
    uninterrupted = push_all(first, uninterrupted_state, plan) + first.finish(
        uninterrupted_state, stop_after(len(plan))
    )

    state = new_state(first, num_speakers=3)
    before = push_all(first, state, plan[:split])
    saved = state.to_bytes()
    # Another worker picks the session up from the changelog.
    other = ClusteringStage(CONFIG)
    restored = ClusteringSessionState.from_bytes(saved)
    assert restored == state
    after = push_all(other, restored, plan[split:]) + other.finish(restored, stop_after(len(plan)))

    assert before + after == uninterrupted
    assert restored == uninterrupted_state


def test_state_json_keeps_centroids_exactly():
    stage = ClusteringStage(CONFIG)
    state = new_state(stage)
    push_all(stage, state, steps_for("0~1.01", seed=11))
    restored = ClusteringSessionState.from_bytes(state.to_bytes())
    assert centroids(restored) == centroids(state)
    assert restored.turn == state.turn and restored.turn is not None
    assert restored.pieces == state.pieces and restored.pieces


def test_a_state_of_another_version_fails_loudly(stage, monkeypatch):
    state = new_state(stage)
    push_all(stage, state, steps_for("0~1", seed=11))
    stored = state.to_bytes()
    # The format from before states carried a version: the bare JSON of the state.
    with pytest.raises(StateVersionError):
        ClusteringSessionState.from_bytes(state.model_dump_json().encode())
    monkeypatch.setattr(ClusteringSessionState, "VERSION", ClusteringSessionState.VERSION + 1)
    with pytest.raises(StateVersionError):
        ClusteringSessionState.from_bytes(stored)


def test_centroids_only_move_on_confident_steps(stage):
    state = new_state(stage, num_speakers=1)
    rng = np.random.default_rng(5)
    first = voice(0, rng)
    stage.push(state, step(0, first))
    # Halfway between speaker 0 and an unseen voice: assigned (above ignore_similarity) but not confident.
    mixed = np.array(DIRECTIONS[0]) * 0.6 + np.array(DIRECTIONS[1]) * 0.8
    mixed /= np.linalg.norm(mixed)
    similarity = float(mixed @ np.array(first))
    assert CONFIG.ignore_similarity <= similarity < CONFIG.update_similarity
    ups = updates(stage.push(state, step(1, mixed.tolist())))
    assert ups[-1].current_speaker == 0
    assert centroids(state) == [first]
    second = voice(0, rng)
    stage.push(state, step(2, second))
    np.testing.assert_allclose(centroids(state)[0], np.array(first) + np.array(second))
