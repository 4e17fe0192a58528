"""Fuzzing `topics.decode`: any key, value and headers either decode to a message or raise DecodeError.

Records are drawn both at random and as real encodings with one part mangled, so the fuzz reaches
the validation of every message type and not only the header checks. The budget comes from the
hypothesis profile (tests/unit/conftest.py).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from topics import AudioChunk, BusMessage, DecodeError, SessionStart, SessionStop, decode, encode
from topics.messages import MESSAGE_TYPES, SCHEMA_HEADER, TYPE_HEADER

header_names = st.sampled_from([TYPE_HEADER, SCHEMA_HEADER, "sf-seq", "sf-offset", "sf-producer", "sf-x"]) | st.text(
    max_size=10
)
header_values = st.sampled_from([name.encode() for name in MESSAGE_TYPES] + [b"1", b"2", b"", b"-1"]) | st.binary(
    max_size=20
)
headers = st.lists(st.tuples(header_names, header_values), max_size=6)
keys = st.none() | st.sampled_from([b"s1", b"\xff\xfe"]) | st.binary(max_size=12)
values = st.none() | st.binary(max_size=80) | st.text(max_size=80).map(str.encode)

SAMPLES = [
    SessionStart(session_id="s1", seq=0, producer="fuzz"),
    AudioChunk(session_id="s1", seq=1, offset=0, producer="fuzz", pcm=b"\x00\x01" * 8),
    SessionStop(session_id="s1", seq=2, offset=8, producer="fuzz"),
]


def decodes_or_refuses(key, value, record_headers) -> None:
    try:
        message = decode(key, value, record_headers)
    except DecodeError:
        return
    assert isinstance(message, BusMessage)
    assert message.session_id == key.decode()


@given(keys, values, headers)
def test_any_record_decodes_or_is_refused(key, value, record_headers):
    decodes_or_refuses(key, value, record_headers)


@given(keys, values, headers)
def test_any_record_decodes_or_is_refused_with_header_mapping(key, value, record_headers):
    decodes_or_refuses(key, value, dict(record_headers))


@given(st.sampled_from(SAMPLES), st.data())
def test_a_real_record_with_one_part_mangled_decodes_or_is_refused(sample, data):
    key, value, record_headers = encode(sample)
    record_headers = list(record_headers)
    part = data.draw(st.sampled_from(["key", "value", "header", "extra header"]))
    if part == "key":
        key = data.draw(keys)
    elif part == "value":
        value = data.draw(values)
    elif part == "header" and record_headers:
        index = data.draw(st.integers(0, len(record_headers) - 1))
        record_headers[index] = (record_headers[index][0], data.draw(header_values))
    else:
        record_headers.append(data.draw(st.tuples(header_names, header_values)))
    decodes_or_refuses(key, value, record_headers)
