"""The gateway's protocol rules, without Kafka: parsing client actions, numbering a session's records, result events."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.gateway.audio_input import BUS_FORMAT, AudioFormat, Encoding
from pipeline.gateway.protocol import (
    ErrorCode,
    GatewaySession,
    ProtocolError,
    StartAction,
    StopAction,
    audio_format,
    parse_action,
    result_event,
    speaker_counts,
)
from topics import AudioChunk, ReportedSpeaker, SessionReport, SessionStop, SpeakerTurn, SpeakerUpdate
from topics.messages import ReportedTurn


def start(**fields: object) -> StartAction:
    action = parse_action(json.dumps({"action": "start", **fields}))
    assert isinstance(action, StartAction)
    return action


def error_code(call) -> ErrorCode:
    with pytest.raises(ProtocolError) as caught:
        call()
    return caught.value.code


def test_session_numbers_records_and_counts_samples(pcm):
    state = GatewaySession("gw-test", max_frame_bytes=4096)
    opening = state.start(start(num_speakers=3, session_id="room-1"))
    assert (opening.session_id, opening.seq, opening.num_speakers, opening.producer) == ("room-1", 0, 3, "gw-test")
    assert not state.active  # nothing counts until the record is published
    state.commit(opening)

    first = state.audio(pcm(160))
    state.commit(first)
    second = state.audio(pcm(400))
    state.commit(second)
    stop = state.stop()
    state.commit(stop)

    assert [(first.seq, first.offset), (second.seq, second.offset)] == [(1, 0), (2, 160)]
    assert (stop.seq, stop.offset) == (3, 560)
    assert isinstance(stop, SessionStop)
    assert error_code(lambda: state.audio(pcm(10))) == ErrorCode.NOT_STARTED  # stopped, awaiting report

    state.end()
    again = state.start(start())
    state.commit(again)
    assert (again.seq, again.num_speakers, state.audio(pcm(1)).offset) == (0, None, 0)  # count estimated unless given
    assert len(again.session_id) == 32 and again.session_id != "room-1"


def test_unpublished_record_changes_nothing(pcm):
    state = GatewaySession("gw-test", max_frame_bytes=4096)
    state.commit(state.start(start(session_id="s")))
    lost = state.audio(pcm(100))  # e.g. the publish failed: not committed
    kept = state.audio(pcm(50))
    assert (kept.seq, kept.offset) == (lost.seq, lost.offset) == (1, 0)
    state.commit(kept)
    assert (state.audio(pcm(1)).seq, state.audio(pcm(1)).offset) == (2, 50)
    with pytest.raises(RuntimeError):
        state.commit(lost)  # a stale record cannot be committed out of order


def test_frame_and_order_validation(pcm):
    state = GatewaySession("gw-test", max_frame_bytes=1000)
    assert error_code(lambda: state.audio(pcm(10))) == ErrorCode.NOT_STARTED
    assert error_code(state.stop) == ErrorCode.NOT_STARTED
    state.commit(state.start(start(session_id="s")))
    assert error_code(lambda: state.start(start())) == ErrorCode.ALREADY_STARTED
    assert error_code(lambda: state.audio(b"\x00" * 11)) == ErrorCode.ODD_LENGTH_PCM
    assert error_code(lambda: state.audio(b"\x00" * 1002)) == ErrorCode.FRAME_TOO_LARGE
    assert state.audio(b"\x00" * 1000).offset == 0  # the limit itself is allowed; refusals moved nothing


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", ErrorCode.BAD_JSON),
        ("[1, 2]", ErrorCode.BAD_JSON),
        ('"start"', ErrorCode.BAD_JSON),
        ("{}", ErrorCode.UNKNOWN_ACTION),
        ('{"action": "pause"}', ErrorCode.UNKNOWN_ACTION),
        ('{"action": "start", "num_speakers": "2"}', ErrorCode.INVALID_START),
        ('{"action": "start", "numSpeakers": 2}', ErrorCode.INVALID_START),
        ('{"action": "start", "session_id": "has space"}', ErrorCode.INVALID_START),
    ],
)
def test_parse_action_refuses(text, code):
    assert error_code(lambda: parse_action(text)) == code


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"num_speakers": 0}, "num_speakers"),
        ({"num_speakers": 65}, "num_speakers"),
        ({"num_speakers": 5, "max_speakers": 4}, "num_speakers (5) is above max_speakers (4)"),
        ({"max_speakers": 0}, "max_speakers"),
        ({"min_speakers": 0}, "min_speakers"),
        ({"min_speakers": 65}, "min_speakers"),
        ({"min_speakers": 4, "max_speakers": 3}, "min_speakers must not exceed max_speakers"),
        ({"min_speakers": 21}, "min_speakers must not exceed max_speakers"),  # above the default upper bound
        ({"num_speakers": 2, "min_speakers": 3}, "num_speakers (2) is below min_speakers (3)"),
    ],
)
def test_start_out_of_bounds_is_invalid_start(fields, named):
    state = GatewaySession("gw-test", max_frame_bytes=1000)
    with pytest.raises(ProtocolError) as caught:
        state.start(start(**fields))
    assert caught.value.code == ErrorCode.INVALID_START
    assert named in caught.value.message
    assert not state.active


@pytest.mark.parametrize("field", ["num_speakers", "min_speakers", "max_speakers"])
@pytest.mark.parametrize("value", ["2", 2.5, True])
def test_counts_that_are_not_integers_are_invalid_start(field, value):
    with pytest.raises(ProtocolError) as caught:
        parse_action(json.dumps({"action": "start", field: value}))
    assert caught.value.code == ErrorCode.INVALID_START
    assert field in caught.value.message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # (num_speakers, min_speakers, max_speakers, speaker_floor, speaker_limit) of the session started
        ({}, (None, 1, 20, 1, 20)),
        ({"num_speakers": None, "max_speakers": 7}, (None, 1, 7, 1, 7)),
        ({"min_speakers": 2, "max_speakers": 4}, (None, 2, 4, 2, 4)),
        ({"min_speakers": 3}, (None, 3, 20, 3, 20)),
        ({"min_speakers": None, "max_speakers": None}, (None, 1, 20, 1, 20)),  # null: the default bounds
        # A known count is its own bounds (as in pyannote), so it may exceed the default upper bound.
        ({"num_speakers": 3}, (3, 3, 3, 3, 3)),
        ({"num_speakers": 30}, (30, 30, 30, 30, 30)),
        ({"num_speakers": 3, "max_speakers": 5}, (3, 3, 5, 3, 3)),
        ({"num_speakers": 3, "min_speakers": 1, "max_speakers": 3}, (3, 1, 3, 3, 3)),
    ],
)
def test_start_counts_follow_pyannote(fields, expected):
    state = GatewaySession("gw-test", max_frame_bytes=1000)
    opening = state.start(start(**fields))
    assert (
        opening.num_speakers,
        opening.min_speakers,
        opening.max_speakers,
        opening.speaker_floor,
        opening.speaker_limit,
    ) == expected


def test_speaker_counts_gives_only_what_was_given():
    # What the command lines check their --num/min/max-speakers with, before they start anything.
    assert speaker_counts() == {}
    assert speaker_counts(max_speakers=4) == {"max_speakers": 4}
    assert speaker_counts(num_speakers=2) == {"num_speakers": 2, "min_speakers": 2, "max_speakers": 2}
    assert speaker_counts(2, None, 6) == {"num_speakers": 2, "min_speakers": 2, "max_speakers": 6}
    assert error_code(lambda: speaker_counts(min_speakers=3, max_speakers=2)) == ErrorCode.INVALID_START
    assert error_code(lambda: speaker_counts(num_speakers=3, max_speakers=2)) == ErrorCode.INVALID_START


def started(state: GatewaySession, **fields: object) -> None:
    """A session of `state` started by a start action with `fields`, as the gateway commits it."""
    action = start(session_id="s", **fields)
    state.commit(state.start(action), action.audio_format())


def test_start_names_the_audio_format():
    assert start().audio_format() == BUS_FORMAT == AudioFormat(16000, Encoding.PCM_S16LE)
    assert start(sample_rate=None, encoding=None).audio_format() == BUS_FORMAT  # null: not given
    assert start(sample_rate=48000, encoding="pcm_f32le").audio_format() == AudioFormat(48000, Encoding.PCM_F32LE)
    assert start(sample_rate=8000).audio_format() == AudioFormat(8000, Encoding.PCM_S16LE)
    assert start(encoding="pcm_f32le").audio_format() == AudioFormat(16000, Encoding.PCM_F32LE)
    # What `speakerflow stream --sample-rate --encoding` checks its options with.
    assert audio_format(44100, "pcm_f32le") == AudioFormat(44100, Encoding.PCM_F32LE)
    assert audio_format() == BUS_FORMAT
    assert error_code(lambda: audio_format(96000)) == ErrorCode.INVALID_START


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"sample_rate": 7999}, "sample_rate: Input should be greater than or equal to 8000"),
        ({"sample_rate": 48001}, "sample_rate: Input should be less than or equal to 48000"),
        ({"sample_rate": "48000"}, "sample_rate"),
        ({"sample_rate": 44100.5}, "sample_rate"),
        ({"sample_rate": True}, "sample_rate"),
        ({"encoding": "opus"}, "encoding: Input should be 'pcm_s16le' or 'pcm_f32le'"),
        ({"encoding": "PCM_F32LE"}, "encoding"),
        ({"sampleRate": 48000}, "sampleRate"),
    ],
)
def test_an_unknown_audio_format_is_invalid_start(fields, named):
    with pytest.raises(ProtocolError) as caught:
        parse_action(json.dumps({"action": "start", **fields}))
    assert caught.value.code == ErrorCode.INVALID_START
    assert named in caught.value.message


def test_frames_are_checked_by_the_encoding_and_limited_to_the_same_audio():
    floats = GatewaySession("gw-test", max_frame_bytes=1000)
    started(floats, sample_rate=16000, encoding="pcm_f32le")
    assert error_code(lambda: floats.audio(b"\x00" * 6)) == ErrorCode.ODD_LENGTH_PCM  # 1.5 float samples
    # 1000 bus bytes are 500 samples: 2000 bytes of float at 16 kHz, 6000 at 48 kHz.
    assert error_code(lambda: floats.audio(b"\x00" * 2004)) == ErrorCode.FRAME_TOO_LARGE
    assert floats.audio(b"\x00" * 2000).num_samples == 500
    nan = np.array([0.0, np.nan], "<f4").tobytes()
    assert error_code(lambda: floats.audio(nan)) == ErrorCode.NON_FINITE_PCM
    assert floats.audio(b"\x00" * 4).offset == 0  # refusals moved nothing

    at_48k = GatewaySession("gw-test", max_frame_bytes=1000)
    started(at_48k, sample_rate=48000, encoding="pcm_f32le")
    assert error_code(lambda: at_48k.audio(b"\x00" * 6004)) == ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ProtocolError) as caught:
        at_48k.audio(b"\x00" * 6004)
    assert caught.value.message == "frame of 6004 bytes exceeds the limit of 6000 bytes for 48000 Hz pcm_f32le"
    at_48k.audio(b"\x00" * 6000)

    shorts = GatewaySession("gw-test", max_frame_bytes=1000)
    started(shorts, sample_rate=8000)
    assert error_code(lambda: shorts.audio(b"\x00" * 3)) == ErrorCode.ODD_LENGTH_PCM
    assert error_code(lambda: shorts.audio(b"\x00" * 502)) == ErrorCode.FRAME_TOO_LARGE  # 1000 bus bytes: 500 here


def test_offsets_count_16k_samples_and_the_stop_publishes_the_tail():
    state = GatewaySession("gw-test", max_frame_bytes=65536)
    started(state, sample_rate=48000, encoding="pcm_f32le")
    t = np.arange(48000 * 2 + 5) / 48000
    wire = (0.5 * np.sin(2 * np.pi * 300 * t)).astype("<f4")
    chunks: list[AudioChunk] = []
    for begin in range(0, len(wire), 1234):
        chunk = state.audio(wire[begin : begin + 1234].tobytes())
        if chunk is not None:  # the resampler may hold a short first frame back
            state.commit(chunk)
            chunks.append(chunk)
    tail = state.tail()
    assert tail is not None
    state.commit(tail)
    chunks.append(tail)
    stop = state.stop()
    state.commit(stop)

    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1)) and stop.seq == len(chunks) + 1
    offsets = np.cumsum([0] + [c.num_samples for c in chunks])
    assert [c.offset for c in chunks] == offsets[:-1].tolist()
    # 2 s and 5 samples at 48 kHz: 32000 samples and 5/3 of one, rounded, exactly as if sent at 16 kHz.
    assert stop.offset == offsets[-1] == 32002

    # A session in the bus format has no tail.
    state.end()
    started(state)
    state.commit(state.audio(b"\x00" * 320))
    assert state.tail() is None and state.stop().offset == 160
    state.end()
    assert error_code(state.tail) == ErrorCode.NOT_STARTED


def test_parse_action_accepts():
    assert isinstance(parse_action('{"action": "stop"}'), StopAction)
    state = GatewaySession("gw-test", max_frame_bytes=1000)
    unbounded = state.start(start(num_speakers=None, max_speakers=7))
    assert (unbounded.num_speakers, unbounded.speaker_limit) == (None, 7)


def test_result_events_have_the_protocol_shape():
    update = SpeakerUpdate(
        session_id="s",
        position_ms=1700,
        current_speaker=0,
        active_speakers=[0, 1],
        speaking_time_ms={1: 500, 0: 1200},
        ingest_ms=1,
    )
    silence = update.model_copy(update={"current_speaker": None, "active_speakers": []})
    turn = SpeakerTurn(session_id="s", speaker=1, start_ms=1200, end_ms=1700, final=True)
    report = SessionReport(
        session_id="s",
        duration_ms=60000,
        speakers=[ReportedSpeaker(id=0, total_time_ms=45000), ReportedSpeaker(id=1, total_time_ms=12000)],
        turns=[ReportedTurn(speaker=0, start_ms=0, end_ms=45000)],
    )
    assert result_event(update).wire() == {
        "event": "speaker",
        "currentSpeakerId": 0,
        "activeSpeakerIds": [0, 1],  # overlapped speech: both talk, 0 dominates
        "speakingTimeMs": {"0": 1200, "1": 500},
    }
    assert json.loads(result_event(silence).to_json())["currentSpeakerId"] is None
    assert result_event(turn).wire() == {"event": "turn", "speakerId": 1, "startMs": 1200, "endMs": 1700, "final": True}
    assert result_event(report).wire() == {
        "event": "report",
        "speakers": [{"id": 0, "totalTimeMs": 45000}, {"id": 1, "totalTimeMs": 12000}],
        "turns": [{"speakerId": 0, "startMs": 0, "endMs": 45000}],
    }
    assert ProtocolError(ErrorCode.BAD_JSON, "nope").event().wire() == {
        "event": "error",
        "code": "bad_json",
        "message": "nope",
    }


def test_the_protocol_doc_lists_every_error_code_and_no_other():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", doc, flags=re.MULTILINE))
    assert listed == {code.value for code in ErrorCode}
