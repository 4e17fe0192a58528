import itertools

import numpy as np
import pytest
import soundfile as sf

from pipeline.devstack.synthetic import (
    THREE_SPEAKER_SCRIPT,
    TWO_SPEAKER_SCRIPT,
    VOICES,
    Conversation,
    Segment,
    Turn,
    script_for,
    speak,
    synthesize,
)
from pipeline.rttm import speaker_label

SR = 16000


@pytest.fixture(scope="module")
def two() -> Conversation:
    return synthesize(TWO_SPEAKER_SCRIPT, sample_rate=SR, seed=0)


@pytest.fixture(scope="module")
def three() -> Conversation:
    return synthesize(THREE_SPEAKER_SCRIPT, sample_rate=SR, seed=0)


def _gaps(conv: Conversation) -> list[float]:
    return [b.start_s - a.end_s for a, b in itertools.pairwise(conv.segments)]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _median_f0(x: np.ndarray, sr: int) -> float:
    """Autocorrelation pitch over loud frames; the median shrugs off octave errors."""
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    lo, hi = int(sr / 400), int(sr / 60)
    window = np.hanning(frame)
    loud_level = 0.1 * np.max(np.abs(x))
    f0s = []
    for i in range(0, len(x) - frame, hop):
        w = x[i : i + frame] * window
        if _rms(w) < loud_level:
            continue
        ac = np.fft.irfft(np.abs(np.fft.rfft(w, 2 * frame)) ** 2)[:frame]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            f0s.append(sr / lag)
    assert len(f0s) > 50, "too few voiced frames to estimate pitch"
    return float(np.median(f0s))


def _parse_rttm(text: str) -> tuple[set[str], list[Segment]]:
    uris, segments = set(), []
    for line in text.splitlines():
        fields = line.split()
        assert len(fields) == 10 and fields[0] == "SPEAKER" and fields[2] == "1"
        assert fields[5:7] == ["<NA>", "<NA>"] and fields[8:] == ["<NA>", "<NA>"]
        uris.add(fields[1])
        start, dur = float(fields[3]), float(fields[4])
        speaker = int(fields[7].removeprefix("spk"))
        segments.append(Segment(speaker, start, start + dur))
    return uris, segments


@pytest.mark.parametrize(("script", "num_speakers"), [(TWO_SPEAKER_SCRIPT, 2), (THREE_SPEAKER_SCRIPT, 3)])
def test_builtin_scripts_have_the_promised_shape(script, num_speakers):
    conv = synthesize(script, sample_rate=SR)
    assert 30.0 <= conv.duration_s <= 45.0
    assert {s.speaker for s in conv.segments} == set(range(num_speakers))
    assert len(conv.segments) == len(script)
    for seg in conv.segments:
        assert 1.5 <= seg.duration_s <= 6.0, seg


def test_audio_format(two):
    assert two.audio.dtype == np.float32
    assert two.audio.ndim == 1
    assert two.sample_rate == SR
    assert np.max(np.abs(two.audio)) <= 1.0
    assert np.max(np.abs(two.audio)) > 0.5


def test_length_is_edges_plus_speech_plus_pauses(two):
    speech = sum(s.duration_s for s in two.segments)
    pauses = sum(_gaps(two))
    assert two.segments[0].start_s == pytest.approx(0.5, abs=1 / SR)
    assert two.duration_s - two.segments[-1].end_s == pytest.approx(0.5, abs=1 / SR)
    assert two.duration_s == pytest.approx(0.5 + speech + pauses + 0.5, abs=2 / SR)


def test_fixed_pause_gives_exact_length():
    script = script_for(2, turns=4, seed=3)
    conv = synthesize(script, sample_rate=SR, pause_s=(0.4, 0.4), edge_s=0.25)
    assert _gaps(conv) == pytest.approx([0.4] * 3, abs=1 / SR)
    expected = 0.25 + sum(s.duration_s for s in conv.segments) + 3 * 0.4 + 0.25
    assert conv.duration_s == pytest.approx(expected, abs=2 / SR)


@pytest.mark.parametrize("fixture", ["two", "three"])
def test_segments_sorted_disjoint_and_pauses_in_range(fixture, request):
    conv = request.getfixturevalue(fixture)
    for seg in conv.segments:
        assert 0.0 <= seg.start_s < seg.end_s <= conv.duration_s
    starts = [s.start_s for s in conv.segments]
    assert starts == sorted(starts)
    for gap in _gaps(conv):
        assert 0.3 - 1 / SR <= gap <= 0.8 + 1 / SR


def test_consecutive_turns_follow_the_script(three):
    assert [s.speaker for s in three.segments] == [t.speaker for t in THREE_SPEAKER_SCRIPT]


def test_talk_time_matches_segments(three):
    talk = three.talk_time_ms()
    assert set(talk) == {0, 1, 2}
    assert all(ms > 1000 for ms in talk.values())
    for spk, ms in talk.items():
        expected = sum(s.duration_s for s in three.segments if s.speaker == spk) * 1000
        assert ms == pytest.approx(expected, abs=1)


def test_rttm_round_trips(three):
    text = three.to_rttm("meeting_01")
    uris, parsed = _parse_rttm(text)
    assert uris == {"meeting_01"}
    assert len(parsed) == len(three.segments)
    for got, want in zip(parsed, three.segments):
        assert got.speaker == want.speaker
        assert got.start_s == pytest.approx(want.start_s, abs=0.0015)
        assert got.end_s == pytest.approx(want.end_s, abs=0.0015)
    assert speaker_label(2) in text


def test_reference_turns_are_the_segments_under_rttm_labels(three):
    assert [(t.speaker, t.start_s, t.end_s) for t in three.reference_turns()] == [
        (speaker_label(s.speaker), s.start_s, s.end_s) for s in three.segments
    ]


def test_rttm_rejects_uri_with_spaces(two):
    with pytest.raises(ValueError):
        two.to_rttm("my meeting")


def test_speech_inside_segments_silence_between(two):
    audio, sr = two.audio, two.sample_rate
    inside = np.zeros(audio.size, dtype=bool)
    for seg in two.segments:
        inside[round(seg.start_s * sr) : round(seg.end_s * sr)] = True
    speech_rms, gap_rms = _rms(audio[inside]), _rms(audio[~inside])
    assert speech_rms > 0.05
    assert gap_rms < speech_rms * 1e-3


def test_segment_bounds_are_tight(two):
    # espeak pads every utterance with silence; a reference that kept the
    # padding would start and end in silence.
    audio, sr = two.audio, two.sample_rate
    edge = int(0.02 * sr)
    for seg in two.segments:
        clip = audio[round(seg.start_s * sr) : round(seg.end_s * sr)]
        floor = 0.01 * _rms(clip)
        assert _rms(clip[:edge]) > floor, seg
        assert _rms(clip[-edge:]) > floor, seg


def test_deterministic_for_same_seed():
    script = script_for(2, turns=4, seed=1)
    a = synthesize(script, sample_rate=SR, seed=7)
    b = synthesize(script, sample_rate=SR, seed=7)
    c = synthesize(script, sample_rate=SR, seed=8)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.segments == b.segments
    assert _gaps(a) != pytest.approx(_gaps(c))


def test_voices_are_distinct_in_pitch():
    text = "I think we should start with the easy part, then we can talk about the rest."
    pitch = [_median_f0(speak(text, voice, SR), SR) for voice in VOICES]
    # Low male vs high female: the 2-speaker case must be unmistakable.
    assert pitch[1] / pitch[0] > 2.0
    for (i, a), (j, b) in itertools.combinations(enumerate(pitch), 2):
        assert max(a, b) / min(a, b) > 1.2, (VOICES[i].name, a, VOICES[j].name, b)


def test_other_sample_rate_keeps_timing(two):
    conv = synthesize(TWO_SPEAKER_SCRIPT, sample_rate=8000, seed=0)
    assert conv.sample_rate == 8000
    assert conv.duration_s == pytest.approx(two.duration_s, abs=0.05)
    for a, b in zip(conv.segments, two.segments):
        assert a.speaker == b.speaker
        assert a.start_s == pytest.approx(b.start_s, abs=0.03)
        assert a.end_s == pytest.approx(b.end_s, abs=0.03)


def test_pcm16_and_wav(two, tmp_path):
    pcm = two.pcm16()
    assert len(pcm) == 2 * two.audio.size
    decoded = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767
    np.testing.assert_allclose(decoded, two.audio, atol=1 / 32767)

    path = tmp_path / "two.wav"
    two.write_wav(path)
    data, sr = sf.read(path, dtype="int16")
    assert sr == SR
    assert data.tobytes() == pcm


def test_script_for_is_deterministic_and_well_formed():
    a = script_for(3, turns=10, seed=5)
    assert a == script_for(3, turns=10, seed=5)
    assert a != script_for(3, turns=10, seed=6)
    assert len(a) == 10
    assert {t.speaker for t in a} == {0, 1, 2}
    assert all(x.speaker != y.speaker for x, y in itertools.pairwise(a))
    assert len({t.text for t in a}) == 10


def test_script_for_twenty_seconds():
    conv = synthesize(script_for(2, turns=6, seed=0), sample_rate=SR)
    assert 15.0 <= conv.duration_s <= 25.0
    assert set(conv.talk_time_ms()) == {0, 1}


def test_invalid_input_is_rejected():
    with pytest.raises(ValueError):
        script_for(len(VOICES) + 1)
    with pytest.raises(ValueError):
        script_for(3, turns=2)
    with pytest.raises(ValueError):
        synthesize([])
    with pytest.raises(ValueError):
        synthesize([Turn(len(VOICES), "Hello.")])
    with pytest.raises(ValueError):
        synthesize([Turn(0, "Hello.")], pause_s=(0.8, 0.3))
    with pytest.raises(ValueError):
        speak("   ", VOICES[0])


def test_missing_espeak_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        speak("Hello.", VOICES[0])
