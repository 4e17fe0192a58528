"""Fuzzing the gateway protocol: any text frame or binary frame either parses or raises ProtocolError, never more.

The budget per test comes from the hypothesis profile (tests/unit/conftest.py): bounded in `make test`,
long in `make fuzz`.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from pipeline.gateway.protocol import (
    ClientAction,
    GatewaySession,
    ProtocolError,
    ResumeAction,
    StartAction,
    StopAction,
    parse_action,
)

# JSON values of every kind, so fields get the wrong types as often as the right ones.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
START_FIELDS = ("session_id", "num_speakers", "min_speakers", "max_speakers", "sample_rate", "encoding")
# Actions that look like the real ones, with any values in their fields: the parser's validation is reached.
action_bodies = st.fixed_dictionaries(
    {"action": st.sampled_from(["start", "stop", "resume", "pause", ""]) | json_values},
    optional={field: json_values | st.integers(min_value=-10, max_value=50_000) for field in START_FIELDS},
)


def parses_or_refuses(text: str) -> ClientAction | None:
    try:
        action = parse_action(text)
    except ProtocolError as exc:
        assert exc.event().code == exc.code  # every refusal can be sent to the client as an error event
        return None
    assert isinstance(action, StartAction | StopAction | ResumeAction)
    return action


@given(st.text(max_size=200))
def test_any_text_frame_parses_or_is_refused(text):
    parses_or_refuses(text)


@given(action_bodies)
def test_any_action_shaped_frame_parses_or_is_refused(body):
    action = parses_or_refuses(json.dumps(body))
    if isinstance(action, StartAction):
        # A start that parsed either opens a session or is refused with a clear error, as the gateway does.
        try:
            GatewaySession("gw-fuzz", max_frame_bytes=4096).start(action)
        except ProtocolError:
            pass


@given(
    st.sampled_from([None, {}, {"sample_rate": 8000}, {"sample_rate": 44100, "encoding": "pcm_f32le"}]),
    st.lists(st.binary(max_size=6000), max_size=6),
    st.booleans(),
)
def test_any_binary_frames_become_chunks_or_are_refused(start_fields, frames, stop_first):
    """Frames of any length and content, before a start, during a session or after its stop."""
    session = GatewaySession("gw-fuzz", max_frame_bytes=4096)
    if start_fields is not None:
        action = parse_action(json.dumps({"action": "start", **start_fields}))
        assert isinstance(action, StartAction)
        session.commit(session.start(action), action.audio_format())
        if stop_first:
            session.commit(session.stop())
    for frame in frames:
        try:
            chunk = session.audio(frame)
        except ProtocolError:
            continue
        if chunk is not None:
            assert len(chunk.pcm) % 2 == 0  # the bus carries whole 16-bit samples
            session.commit(chunk)
