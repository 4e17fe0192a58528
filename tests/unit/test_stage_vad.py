"""VadStage with the real Silero model on espeak-ng speech: steps, windows, replay, gaps, stop and resume."""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest

from pipeline.config import VadConfig
from pipeline.devstack.synthetic import VOICES, Conversation, script_for, speak, synthesize
from pipeline.producers.chunking import session_records
from pipeline.stages.base import StateVersionError
from pipeline.stages.fast.vad import SileroVad, VadSessionState, VadStage
from topics.messages import SAMPLE_RATE, AudioChunk, SessionStart, SessionStop, SpeechStep

SR = SAMPLE_RATE
CONFIG = VadConfig()
STEP = CONFIG.samples(CONFIG.step_s)
CONTEXT = CONFIG.samples(CONFIG.context_s)
SESSION = "vad-test"
START = SessionStart(session_id=SESSION)
# Later than every chunk of these tests; the stage goes by the audio it received, not the stop's offset.
STOP = SessionStop(session_id=SESSION, seq=1_000_000, offset=0)


@pytest.fixture(scope="module")
def model() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def stage(model) -> VadStage:
    return VadStage(CONFIG, model)


@pytest.fixture(scope="module")
def conversation() -> Conversation:
    # Four turns, two voices, ~12.7 s: 0.5 s of silence at each end, 0.3-0.8 s pauses between turns.
    return synthesize(script_for(2, turns=4, seed=0), seed=0)


@pytest.fixture(scope="module")
def pcm(conversation) -> np.ndarray:
    return np.frombuffer(conversation.pcm16(), dtype="<i2")


def make_chunks(pcm: np.ndarray, size: int, first_seq: int = 1) -> list[AudioChunk]:
    """The chunks a producer sends, without its stop."""
    start = SessionStart(session_id=SESSION, seq=first_seq - 1, producer="test")
    return list(session_records(pcm, start, size))[:-1]


def feed(
    stage: VadStage, chunks: list[AudioChunk], state: VadSessionState | None = None, ingest_ms: int = 0
) -> list[SpeechStep]:
    state = state if state is not None else stage.start(START)
    steps: list[SpeechStep] = []
    for chunk in chunks:
        steps += stage.push(state, chunk, ingest_ms=ingest_ms)
    return steps


def finish(stage: VadStage, state: VadSessionState) -> list[SpeechStep]:
    """The steps the stop flushes; the stop itself comes last, to pass downstream."""
    *steps, stop = stage.finish(state, STOP)
    assert stop == STOP
    return steps


def run_all(stage: VadStage, chunks: list[AudioChunk]) -> list[SpeechStep]:
    state = stage.start(START)
    return feed(stage, chunks, state) + finish(stage, state)


def summary(steps: list[SpeechStep]) -> list[tuple[int, int, int, int]]:
    return [(s.step, s.start, s.end, s.voiced) for s in steps]


def window(step: SpeechStep) -> np.ndarray:
    return np.frombuffer(step.pcm, dtype="<i2")


@pytest.fixture(scope="module")
def reference_steps(stage, pcm) -> list[SpeechStep]:
    return run_all(stage, make_chunks(pcm, 16000))


# ---- steps ---------------------------------------------------------------------------------


def test_voiced_time_matches_the_reference_talk_time(reference_steps, conversation):
    talk_s = sum(conversation.talk_time_ms().values()) / 1000
    voiced_s = sum(s.voiced for s in reference_steps) / SR
    assert voiced_s == pytest.approx(talk_s, rel=0.10)


def test_silence_around_the_speech_is_unvoiced(reference_steps, conversation):
    first, last = conversation.segments[0], conversation.segments[-1]
    leading = [s for s in reference_steps if s.end <= first.start_s * SR]
    trailing = [s for s in reference_steps if s.start >= (last.end_s + 0.1) * SR]
    assert leading and trailing
    assert all(s.voiced == 0 for s in leading + trailing)
    assert all(s.num_samples == 0 for s in leading + trailing)


def test_voiced_samples_stay_near_the_reference_speech(reference_steps, conversation, pcm):
    # No step is voiced for more than the reference speech within 0.1 s of it (VAD latency and hangover).
    speech = np.zeros(len(pcm), bool)
    for seg in conversation.segments:
        speech[round(seg.start_s * SR) : round(seg.end_s * SR)] = True
    slack = int(0.1 * SR)
    for s in reference_steps:
        assert s.voiced <= speech[max(0, s.start - slack) : s.end + slack].sum(), s.step
    # ...and every turn is heard: each reference segment has most of its length voiced in the steps it covers.
    for seg in conversation.segments:
        lo, hi = round(seg.start_s * SR), round(seg.end_s * SR)
        covered = sum(s.voiced for s in reference_steps if s.start >= lo - slack and s.end <= hi + slack)
        inner = sum(s.end - s.start for s in reference_steps if s.start >= lo - slack and s.end <= hi + slack)
        assert covered >= 0.75 * inner, seg


def test_steps_are_contiguous_numbered_and_step_long(reference_steps, pcm):
    assert [s.step for s in reference_steps] == list(range(len(reference_steps)))
    assert reference_steps[0].start == 0
    for a, b in zip(reference_steps, reference_steps[1:]):
        assert b.start == a.end
    assert all(s.end - s.start == STEP for s in reference_steps[:-1])
    assert 0 < reference_steps[-1].end - reference_steps[-1].start <= STEP
    assert reference_steps[-1].end == len(pcm)
    assert all(s.session_id == SESSION for s in reference_steps)
    assert all(0 <= s.voiced <= s.end - s.start for s in reference_steps)


def test_finish_emits_the_trailing_partial_step(stage, pcm):
    assert len(pcm) % STEP, "the fixture must end inside a step"
    state = stage.start(START)
    streamed = feed(stage, make_chunks(pcm, 16000), state)
    # While streaming, a step waits for its right-hand context.
    assert streamed[-1].end + CONTEXT <= len(pcm)
    assert all(s.end - s.start == STEP for s in streamed)
    tail = finish(stage, state)
    assert tail, "finish must flush the steps still waiting for context"
    assert tail[0].step == streamed[-1].step + 1
    assert tail[-1].end == len(pcm)
    assert tail[-1].end - tail[-1].start == len(pcm) % STEP
    assert stage.finish(state, STOP) == [], "a stop already applied gives nothing"


def test_finish_labels_a_partial_frame(stage, pcm):
    # 1000 samples do not fill two 512-sample frames: the last 488 are labelled only at finish.
    state = stage.start(START)
    assert feed(stage, make_chunks(pcm[:1000], 1000), state) == []
    assert len(state.unframed) == 1000 - 512
    steps = finish(stage, state)
    assert summary(steps) == [(0, 0, 1000, 0)]


def test_ingest_ms_is_the_newest_seen(stage, pcm):
    state = stage.start(START)
    chunks = make_chunks(pcm[: 4 * SR], 8000)
    steps = []
    for i, chunk in enumerate(chunks):
        steps += stage.push(state, chunk, ingest_ms=[50, 10, 70, 20][i % 4] + 100 * i)
    assert steps
    assert steps[-1].ingest_ms == max([50, 10, 70, 20][i % 4] + 100 * i for i in range(len(chunks)))


def test_silence_gives_unvoiced_steps_without_windows(stage):
    steps = run_all(stage, make_chunks(np.zeros(3 * SR + 123, np.int16), 4000))
    assert len(steps) == 7
    assert all(s.voiced == 0 and s.num_samples == 0 for s in steps)


def test_chunk_size_does_not_change_voiced_counts(stage, pcm, reference_steps):
    small = run_all(stage, make_chunks(pcm, 160))
    assert summary(small) == summary(reference_steps)


def test_chunk_size_does_not_change_the_steps(stage, pcm, reference_steps):
    small = run_all(stage, make_chunks(pcm, 160))
    assert small == reference_steps


# ---- replay, gaps, resume --------------------------------------------------------------------


def test_a_replayed_chunk_is_ignored(stage, pcm):
    chunks = make_chunks(pcm, 3200)
    state = stage.start(START)
    steps = feed(stage, chunks[:20], state)
    before = state.to_bytes()
    for replay in (chunks[19], chunks[5], chunks[19].model_copy(update={"pcm": b"\x10\x00" * 3200})):
        assert stage.push(state, replay, ingest_ms=999) == []
        assert state.to_bytes() == before
    steps += feed(stage, chunks[20:], state) + finish(stage, state)
    assert steps == run_all(stage, chunks)


def test_records_up_to_the_starts_seq_count_as_applied(stage, pcm):
    chunks = make_chunks(pcm, 3200)
    state = stage.start(SessionStart(session_id=SESSION, seq=chunks[3].seq))
    before = state.to_bytes()
    assert feed(stage, chunks[:4], state) == []
    assert state.to_bytes() == before
    stage.push(state, chunks[4], ingest_ms=0)
    assert state.last_seq == chunks[4].seq and state.next_offset == chunks[4].offset + 3200


def test_a_stop_older_than_the_last_chunk_changes_nothing(stage, pcm):
    chunks = make_chunks(pcm, 3200)
    state = stage.start(START)
    steps = feed(stage, chunks[:20], state)
    before = state.to_bytes()
    stale = SessionStop(session_id=SESSION, seq=chunks[19].seq, offset=20 * 3200)
    assert stage.finish(state, stale) == []
    assert state.to_bytes() == before
    # The session goes on as if the stale stop had never come.
    assert steps + feed(stage, chunks[20:], state) + finish(stage, state) == run_all(stage, chunks)


def test_an_overlapping_resend_keeps_only_new_samples(stage, pcm):
    chunks = make_chunks(pcm, 3200)
    # The producer resends chunk 10 with a new seq, starting 1000 samples early.
    resent = [
        AudioChunk(
            session_id=SESSION,
            seq=c.seq,
            offset=c.offset - 1000,
            producer="test",
            pcm=pcm[c.offset - 1000 : c.offset + 3200].astype("<i2").tobytes(),
        )
        if c.seq == 11
        else c
        for c in chunks
    ]
    assert run_all(stage, resent) == run_all(stage, chunks)


def test_a_gap_in_offsets_is_filled_with_silence(stage, pcm):
    size = 3200
    chunks = make_chunks(pcm, size)
    lost = range(5, 10)  # 1.0 s of speech, 1.0-2.0 s, never arrives
    assert all(c.offset == i * size for i, c in enumerate(chunks))
    with_gap = [c for i, c in enumerate(chunks) if i not in lost]
    # What the stage must treat it as: the producer sending zeros in their place.
    first_after = chunks[lost[-1] + 1]
    zeros_sent = (
        [c for i, c in enumerate(chunks) if i < lost[0]]
        + [
            first_after.model_copy(
                update={
                    "offset": lost[0] * size,
                    "pcm": np.zeros(len(lost) * size, np.int16).tobytes() + first_after.pcm,
                }
            )
        ]
        + chunks[lost[-1] + 2 :]
    )

    gapped = run_all(stage, with_gap)
    clean = run_all(stage, chunks)
    assert gapped == run_all(stage, zeros_sent)
    # Positions stay true: the same steps, ending where the stream ends.
    assert [(s.step, s.start, s.end) for s in gapped] == [(s.step, s.start, s.end) for s in clean]
    assert gapped[-1].end == len(pcm)
    # The missing speech is not heard: the steps inside the gap lose their voiced time.
    inside = [
        i
        for i, s in enumerate(clean)
        if s.start >= lost[0] * size + CONFIG.samples(0.25) and s.end <= (lost[-1] + 1) * size
    ]
    assert inside
    assert all(clean[i].voiced > 0 for i in inside)
    assert all(gapped[i].voiced == 0 for i in inside)


def test_state_bytes_round_trip(stage, pcm):
    fresh = stage.start(START)
    restored = VadSessionState.from_bytes(fresh.to_bytes())
    _assert_same_state(restored, fresh)

    state = stage.start(START)
    # 56 chunks of 1000 samples end inside a pause that has not yet proved long enough.
    feed(stage, make_chunks(pcm, 1000, first_seq=3)[:56], state, ingest_ms=1234)
    assert state.speaking and state.pause_frames and len(state.unframed) and len(state.buffer_pcm)
    assert state.last_seq == 58 and state.next_step > 0
    restored = VadSessionState.from_bytes(state.to_bytes())
    _assert_same_state(restored, state)
    assert restored.to_bytes() == state.to_bytes()
    # The restored arrays are the restored state's own (writable, not views of the bytes).
    assert restored.buffer_pcm.flags.writeable and restored.rnn_state.flags.writeable


def _assert_same_state(a: VadSessionState, b: VadSessionState) -> None:
    for f in dataclasses.fields(VadSessionState):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(y, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y and type(x) is type(y), f.name


def test_a_state_of_another_version_fails_loudly(stage, pcm, monkeypatch):
    state = stage.start(START)
    feed(stage, make_chunks(pcm[:SR], 3200), state)
    stored = state.to_bytes()
    # The format from before states carried a version: the same header without "v".
    (length,) = struct.unpack_from(">I", stored)
    header = json.loads(stored[4 : 4 + length])
    del header["v"]
    unversioned = json.dumps(header).encode()
    with pytest.raises(StateVersionError):
        VadSessionState.from_bytes(struct.pack(">I", len(unversioned)) + unversioned + stored[4 + length :])
    monkeypatch.setattr(VadSessionState, "VERSION", VadSessionState.VERSION + 1)
    with pytest.raises(StateVersionError):
        VadSessionState.from_bytes(stored)


@pytest.mark.parametrize(
    ("resume_at", "inside_a_pause"), [(9, False), (26, False), (56, True), (101, True), (190, False)]
)
def test_a_stage_resumed_from_bytes_continues_identically(stage, pcm, resume_at, inside_a_pause):
    chunks = make_chunks(pcm, 1000)  # not a multiple of the frame: the resume point falls inside a frame
    uninterrupted = run_all(stage, chunks)

    state = stage.start(START)
    before = feed(stage, chunks[:resume_at], state)
    assert len(state.unframed)
    # Some resume points fall in a pause still being timed by the hysteresis.
    assert bool(state.pause_frames) == inside_a_pause
    saved = state.to_bytes()
    # Another worker: its own model instance and the state from the changelog.
    other = VadStage(CONFIG, SileroVad())
    resumed_state = VadSessionState.from_bytes(saved)
    after = feed(other, chunks[resume_at:], resumed_state) + finish(other, resumed_state)

    assert before + after == uninterrupted
    assert after, "the resume point must leave steps to emit"


# ---- windows --------------------------------------------------------------------------------


def test_windows_only_for_voiced_steps_and_long_enough(reference_steps):
    min_window = CONFIG.samples(CONFIG.min_window_voiced_s)
    with_window = [s for s in reference_steps if s.num_samples]
    assert len(with_window) >= len(reference_steps) // 2
    for s in reference_steps:
        if s.voiced == 0:
            assert s.num_samples == 0, s.step
        if s.num_samples:
            assert min_window <= s.num_samples <= (s.end - s.start) + 2 * CONTEXT, s.step


def test_windows_are_cut_from_the_audio_around_the_step(reference_steps, pcm):
    for s in reference_steps:
        if not s.num_samples:
            continue
        w = window(s)
        around = pcm[max(0, s.start - CONTEXT) : s.end + CONTEXT]
        # The window is the voiced samples of that range, in order: a subsequence of it.
        assert len(w) <= len(around)
        assert np.count_nonzero(w) > 0.75 * len(w), "a window is speech, not silence"
        assert _is_subsequence(w, around), s.step


def _is_subsequence(needle: np.ndarray, haystack: np.ndarray) -> bool:
    j = 0
    for value in haystack:
        if j < len(needle) and value == needle[j]:
            j += 1
    return j == len(needle)


def _two_voices_with_pause(pause_s: float) -> tuple[np.ndarray, int]:
    """Voice 1 (odd samples), a pause, voice 2 (even samples); voice 2 starts 0.4 s into a step."""
    first = (
        np.round(speak("Did anyone remember to book the meeting room?", VOICES[0]) * 0.9 * 32767).astype(np.int16) | 1
    )
    second = np.round(speak("That sounds reasonable to me.", VOICES[1]) * 0.9 * 32767).astype(np.int16) & ~1
    pause = int(pause_s * SR)
    lead = SR // 2
    lead += (int(0.4 * SR) - (lead + len(first) + pause)) % STEP
    pcm = np.concatenate(
        [np.zeros(lead, np.int16), first, np.zeros(pause, np.int16), second, np.zeros(SR // 2, np.int16)]
    )
    onset = lead + len(first) + pause
    assert onset % STEP == int(0.4 * SR)
    return pcm, onset


@pytest.mark.parametrize("chunk", [160, 16000])
def test_windows_never_cross_a_pause_longer_than_run_gap(model, chunk):
    pcm, onset = _two_voices_with_pause(0.6)
    assert 0.6 > CONFIG.run_gap_s
    steps = run_all(VadStage(CONFIG, model), make_chunks(pcm, chunk))
    first_of_second = steps[onset // STEP]
    assert first_of_second.start <= onset < first_of_second.end
    # The first voice ends within this step's left context, so a careless window would include it.
    assert first_of_second.start - CONTEXT < onset - int(0.6 * SR)
    assert first_of_second.voiced > 0
    w = window(first_of_second)
    assert len(w) > 0, "the second voice alone is long enough to embed"
    assert np.count_nonzero(w % 2 == 1) == 0, "the window holds samples of the first voice"
    assert np.count_nonzero((w % 2 == 0) & (w != 0)) > 0.9 * len(w)
    # Steps of the first voice only hold the first voice.
    for s in steps[: onset // STEP]:
        assert np.count_nonzero((window(s) % 2 == 0) & (window(s) != 0)) == 0, s.step


def test_window_would_cross_the_pause_if_it_were_shorter_than_run_gap(model):
    # Guard for the test above: with run_gap_s above the pause, the same window mixes both voices.
    pcm, onset = _two_voices_with_pause(0.6)
    steps = run_all(VadStage(VadConfig(run_gap_s=1.0), model), make_chunks(pcm, 16000))
    w = window(steps[onset // STEP])
    assert np.count_nonzero(w % 2 == 1) > 0


def test_context_must_cover_the_pause_relabelling(model):
    with pytest.raises(ValueError):
        VadStage(VadConfig(min_silence_s=0.6, context_s=0.5), model)
