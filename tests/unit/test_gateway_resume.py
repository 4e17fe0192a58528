"""Resume tokens and the protocol state of a resumed session, without a socket or a broker.

On the real broker: tests/integration/test_gateway.py (the resume rules) and
tests/integration/test_resume.py (whole sessions resumed, and after a gateway SIGKILL).
"""

from __future__ import annotations

import json

import pytest

from pipeline.gateway.audio_input import AudioFormat, Encoding
from pipeline.gateway.protocol import (
    ErrorCode,
    GatewaySession,
    ProtocolError,
    ResumeAction,
    ResumedEvent,
    StartedEvent,
    parse_action,
)
from pipeline.gateway.resume import SessionPosition, resume_token, verify_resume_token

SECRET = "a secret every gateway of the deployment shares"
FLOAT_48K = AudioFormat(48_000, Encoding.PCM_F32LE)


def test_a_token_gives_back_the_clients_audio_format_on_any_gateway_with_the_secret() -> None:
    token = resume_token(SECRET, "session-1", FLOAT_48K)
    assert verify_resume_token(SECRET, "session-1", token) == FLOAT_48K
    assert verify_resume_token(SECRET, "session-1", resume_token(SECRET, "session-1", AudioFormat())) == AudioFormat()


@pytest.mark.parametrize(
    ("secret", "session_id", "token"),
    [
        ("another deployment's secret", "session-1", None),
        (SECRET, "session-2", None),  # a token of one session does not resume another
        (SECRET, "session-1", "48000.pcm_s16le.{mac}"),  # the format is signed too
        (SECRET, "session-1", "{mac}"),
        (SECRET, "session-1", "48000.pcm_f32le"),
        (SECRET, "session-1", "x.pcm_f32le.{mac}"),
        (SECRET, "session-1", "48000.pcm_f32le.{mac}0"),
    ],
)
def test_a_token_not_issued_for_the_session_is_refused(secret: str, session_id: str, token: str | None) -> None:
    issued = resume_token(SECRET, "session-1", FLOAT_48K)
    mac = issued.rsplit(".", 1)[1]
    presented = issued if token is None else token.format(mac=mac)
    with pytest.raises(ProtocolError) as refused:
        verify_resume_token(secret, session_id, presented)
    assert refused.value.code is ErrorCode.INVALID_RESUME


def test_resume_is_an_action_and_its_fields_are_checked() -> None:
    action = parse_action(json.dumps({"action": "resume", "session_id": "s-1", "token": "t"}))
    assert action == ResumeAction(action="resume", session_id="s-1", token="t")
    for body in (
        {"action": "resume", "session_id": "s-1"},
        {"action": "resume", "token": "t"},
        {"action": "resume", "session_id": "s-1", "token": "t", "offset": 0},
        {"action": "resume", "session_id": "s 1", "token": "t"},
    ):
        with pytest.raises(ProtocolError) as refused:
            parse_action(json.dumps(body))
        assert refused.value.code is ErrorCode.INVALID_RESUME, body


def test_the_events_carry_the_token_and_the_offset_to_send_from() -> None:
    started = StartedEvent(num_speakers=2, session_id="s-1", resume_token="tok")
    assert json.loads(started.to_json()) == {
        "event": "started",
        "num_speakers": 2,
        "sessionId": "s-1",
        "resumeToken": "tok",
    }
    resumed = ResumedEvent(session_id="s-1", offset=48_000, offset_ms=3_000)
    assert json.loads(resumed.to_json()) == {
        "event": "resumed",
        "sessionId": "s-1",
        "offset": 48_000,
        "offsetMs": 3_000,
    }


def test_a_resumed_session_continues_the_numbering_the_bus_holds() -> None:
    session = GatewaySession("gw-b", max_frame_bytes=65_536)
    session.resume("s-1", seq=7, offset=16_000, audio_format=AudioFormat())
    chunk = session.audio(b"\x01\x00" * 320)
    assert (chunk.session_id, chunk.seq, chunk.offset, chunk.producer) == ("s-1", 7, 16_000, "gw-b")
    session.commit(chunk)
    stop = session.stop()
    assert (stop.seq, stop.offset) == (8, 16_320)


def test_a_resumed_session_converts_the_clients_format() -> None:
    session = GatewaySession("gw-b", max_frame_bytes=65_536)
    session.resume("s-1", seq=3, offset=0, audio_format=FLOAT_48K)
    assert session.converter.format == FLOAT_48K


def test_a_connection_running_a_session_cannot_resume_another() -> None:
    session = GatewaySession("gw-b", max_frame_bytes=65_536)
    session.resume("s-1", seq=3, offset=0, audio_format=AudioFormat())
    with pytest.raises(ProtocolError) as refused:
        session.resume("s-2", seq=1, offset=0, audio_format=AudioFormat())
    assert refused.value.code is ErrorCode.ALREADY_STARTED


def test_a_position_reads_in_milliseconds() -> None:
    assert SessionPosition(seq=5, offset=24_000, producer="gw-a", stopped=False, age_s=1.0).offset_ms == 1_500
