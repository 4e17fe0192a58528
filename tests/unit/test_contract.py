"""The bus contract: wire encoding of every message, decode errors, topics and exported schemas."""

from __future__ import annotations

import json
import shutil

import pytest
from pydantic import ValidationError

from topics import export
from topics.messages import (
    FIELD_HEADER_PREFIX,
    MESSAGE_TYPES,
    SCHEMA_HEADER,
    SCHEMA_VERSION,
    TYPE_HEADER,
    AudioChunk,
    DecodeError,
    ReportedSpeaker,
    ReportedTurn,
    SegmentedWindow,
    SessionReport,
    SessionStart,
    SessionStop,
    SpeakerTurn,
    SpeakerUpdate,
    SpeechStep,
    StepEmbedding,
    WindowEmbeddings,
    _AudioMessage,
    decode,
    encode,
)
from topics.registry import ALL_TOPICS, MINUTE_MS

SESSION = "call-42.a:b_c"
PCM = bytes(range(256)) * 4  # 1024 bytes = 512 samples, every byte value present (no text could survive this)


# The fields a step and a window keep through the embed stage, so the input and output samples share them.
STEP = {
    "session_id": SESSION,
    "step": 12,
    "start": 96_000,
    "end": 104_000,
    "voiced": 6_400,
    "ingest_ms": 1_700_000_000_123,
}
WINDOW = {
    "session_id": SESSION,
    "step": 0,
    "start": -72_000,
    "end": 8_000,
    "ingest_ms": 1_700_000_000_123,
    "frame_offset_s": 0.0316,
    "frame_step_s": 0.016875,
    "tracks": [4, -1, 7],
    "activity": [[0, 55, 100], [0, 0, 0], [99, 40, 3]],
}


def _samples() -> dict[str, object]:
    return {
        "audio.chunk": AudioChunk(session_id=SESSION, seq=7, offset=48_000, producer="mic-1", pcm=PCM),
        "session.start": SessionStart(session_id=SESSION, seq=0, num_speakers=3, max_speakers=5, producer="mic-1"),
        "session.stop": SessionStop(session_id=SESSION, seq=99, offset=160_000, producer="mic-1"),
        "speech.step": SpeechStep(**STEP, speech=[(96_000, 99_200), (100_800, 104_000)], pcm=PCM),
        "segment.window": SegmentedWindow(**WINDOW, embed_tracks=[7], pcm=PCM),
        "window.embeddings": WindowEmbeddings(**WINDOW, embeddings={7: [0.6, -0.8]}),
        "step.embedding": StepEmbedding(**STEP, embedding=[0.1, -0.25, 1 / 3, 0.0, 2.5e-8]),
        "speaker.update": SpeakerUpdate(
            session_id=SESSION,
            position_ms=6_500,
            current_speaker=1,
            active_speakers=[1, 0],
            spans=[
                ReportedTurn(speaker=1, start_ms=6_000, end_ms=6_500),
                ReportedTurn(speaker=0, start_ms=6_200, end_ms=6_500),
            ],
            speaking_time_ms={0: 2_000, 1: 3_250},
            ingest_ms=5,
        ),
        "speaker.turn": SpeakerTurn(session_id=SESSION, speaker=1, start_ms=4_000, end_ms=6_500, final=True),
        "session.report": SessionReport(
            session_id=SESSION,
            duration_ms=10_000,
            speakers=[ReportedSpeaker(id=0, total_time_ms=2_000), ReportedSpeaker(id=1, total_time_ms=3_250)],
            turns=[
                ReportedTurn(speaker=0, start_ms=0, end_ms=2_000),
                ReportedTurn(speaker=1, start_ms=4_000, end_ms=7_250),
            ],
        ),
    }


SAMPLES = _samples()
AUDIO_TYPES = [name for name, cls in MESSAGE_TYPES.items() if issubclass(cls, _AudioMessage)]
JSON_TYPES = [name for name in MESSAGE_TYPES if name not in AUDIO_TYPES]


def test_samples_cover_every_message_type():
    assert set(SAMPLES) == set(MESSAGE_TYPES)
    assert AUDIO_TYPES == ["audio.chunk", "speech.step", "segment.window"]
    for name, message in SAMPLES.items():
        assert type(message) is MESSAGE_TYPES[name]


# ---- encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MESSAGE_TYPES))
def test_every_record_is_keyed_by_session_and_typed_in_headers(name):
    key, _, headers = encode(SAMPLES[name])
    assert key == SESSION.encode()
    header_map = dict(headers)
    assert len(header_map) == len(headers), "duplicate header names"
    assert header_map[TYPE_HEADER] == name.encode()
    assert header_map[SCHEMA_HEADER] == str(SCHEMA_VERSION).encode()
    for header, raw in headers:
        assert header.startswith(FIELD_HEADER_PREFIX)
        raw.decode("ascii")  # headers are ASCII text


@pytest.mark.parametrize("name", AUDIO_TYPES)
def test_audio_messages_carry_raw_pcm_and_fields_in_headers(name):
    message = SAMPLES[name]
    _, value, headers = encode(message)
    assert value == PCM  # the PCM itself: no base64, no JSON around it
    header_map = dict(headers)

    def as_text(value: object) -> str:
        return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, tuple)) else str(value)

    expected = {
        FIELD_HEADER_PREFIX + field: as_text(getattr(message, field)).encode()
        for field in type(message).model_fields
        if field not in ("session_id", "pcm")
    }
    assert {k: v for k, v in header_map.items() if k not in (TYPE_HEADER, SCHEMA_HEADER)} == expected
    assert message.num_samples == len(PCM) // 2


def test_audio_chunk_headers_are_exactly_its_fields():
    _, _, headers = encode(SAMPLES["audio.chunk"])
    assert dict(headers) == {
        "sf-type": b"audio.chunk",
        "sf-schema": b"1",
        "sf-seq": b"7",
        "sf-offset": b"48000",
        "sf-sample_rate": b"16000",
        "sf-producer": b"mic-1",
    }


@pytest.mark.parametrize("name", JSON_TYPES)
def test_json_messages_are_the_json_object_with_type(name):
    message = SAMPLES[name]
    _, value, _ = encode(message)
    body = json.loads(value)
    assert isinstance(body, dict)
    assert body["type"] == name
    assert body["session_id"] == SESSION
    assert body == json.loads(message.model_dump_json())


# ---- round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MESSAGE_TYPES))
def test_round_trip(name):
    message = SAMPLES[name]
    key, value, headers = encode(message)
    decoded = decode(key, value, headers)
    assert type(decoded) is type(message)
    assert decoded == message
    if name in AUDIO_TYPES:
        assert decoded.pcm == PCM


@pytest.mark.parametrize("name", ["speech.step", "session.start", "speaker.update"])
def test_decode_accepts_headers_as_a_mapping(name):
    key, value, headers = encode(SAMPLES[name])
    assert decode(key, value, dict(headers)) == SAMPLES[name]


def test_speaker_update_keys_come_back_as_ints():
    decoded = decode(*encode(SAMPLES["speaker.update"]))
    assert decoded.speaking_time_ms == {0: 2_000, 1: 3_250}
    assert all(isinstance(k, int) for k in decoded.speaking_time_ms)


def test_embedding_floats_survive_exactly():
    decoded = decode(*encode(SAMPLES["step.embedding"]))
    assert decoded.embedding == [0.1, -0.25, 1 / 3, 0.0, 2.5e-8]
    no_window = SAMPLES["step.embedding"].model_copy(update={"embedding": None})
    assert decode(*encode(no_window)).embedding is None


def test_empty_speech_step_round_trips_with_empty_value():
    step = SpeechStep(session_id=SESSION, step=0, start=0, end=8000, voiced=0, ingest_ms=0)
    key, value, headers = encode(step)
    assert value == b""
    assert decode(key, value, headers) == step
    assert decode(key, None, headers) == step


# ---- decode errors -------------------------------------------------------------------------


def _replace(headers, name, raw):
    return [(k, raw if k == name else v) for k, v in headers]


@pytest.mark.parametrize("key", [None, b""])
@pytest.mark.parametrize("name", ["session.start", "speech.step"])
def test_decode_rejects_missing_key(name, key):
    _, value, headers = encode(SAMPLES[name])
    with pytest.raises(DecodeError, match="key"):
        decode(key, value, headers)


def test_decode_rejects_missing_type_header():
    key, value, headers = encode(SAMPLES["session.start"])
    with pytest.raises(DecodeError, match=TYPE_HEADER):
        decode(key, value, [h for h in headers if h[0] != TYPE_HEADER])


def test_decode_rejects_unknown_type():
    key, value, headers = encode(SAMPLES["session.start"])
    with pytest.raises(DecodeError, match="unknown message type"):
        decode(key, value, _replace(headers, TYPE_HEADER, b"session.pause"))


@pytest.mark.parametrize("version", [b"0", b"2", b"", b"one"])
@pytest.mark.parametrize("name", ["session.start", "speech.step"])
def test_decode_rejects_other_schema_versions(name, version):
    key, value, headers = encode(SAMPLES[name])
    with pytest.raises(DecodeError, match="schema version"):
        decode(key, value, _replace(headers, SCHEMA_HEADER, version))


def test_decode_rejects_missing_schema_header():
    key, value, headers = encode(SAMPLES["session.stop"])
    with pytest.raises(DecodeError, match="schema version"):
        decode(key, value, [h for h in headers if h[0] != SCHEMA_HEADER])


@pytest.mark.parametrize("value", [b"{", b"", b"\xff\xfe", b'{"type": "session.start", "session_id": '])
def test_decode_rejects_malformed_json(value):
    key, _, headers = encode(SAMPLES["session.start"])
    with pytest.raises(DecodeError, match="malformed"):
        decode(key, value, headers)


@pytest.mark.parametrize("value", [b"[]", b"[1, 2]", b'"session.start"', b"42", b"null", b"true"])
def test_decode_rejects_json_that_is_not_an_object(value):
    key, _, headers = encode(SAMPLES["session.start"])
    with pytest.raises(DecodeError, match="not a JSON object"):
        decode(key, value, headers)


def test_decode_rejects_json_that_breaks_the_schema():
    key, value, headers = encode(SAMPLES["session.stop"])
    body = json.loads(value)
    for broken in ({**body, "seq": -1}, {**body, "extra": 1}, {k: v for k, v in body.items() if k != "offset"}):
        with pytest.raises(DecodeError):
            decode(key, json.dumps(broken).encode(), headers)


def test_decode_rejects_body_type_differing_from_header():
    key, value, headers = encode(SAMPLES["session.stop"])
    body = {**json.loads(value), "type": "session.start"}
    with pytest.raises(DecodeError):
        decode(key, json.dumps(body).encode(), headers)


def test_decode_rejects_session_id_differing_from_key():
    _, value, headers = encode(SAMPLES["session.start"])
    with pytest.raises(DecodeError, match="carried under key"):
        decode(b"another-session", value, headers)


def test_decode_rejects_key_that_is_not_utf8():
    _, value, headers = encode(SAMPLES["session.start"])
    with pytest.raises(DecodeError):
        decode(b"\xff\xfe", value, headers)


@pytest.mark.parametrize("length", [1, 3, 1023])
def test_decode_rejects_odd_length_pcm(length):
    key, _, headers = encode(SAMPLES["speech.step"])
    with pytest.raises(DecodeError, match="16-bit"):
        decode(key, PCM[:length], headers)


def test_audio_model_rejects_odd_length_pcm():
    with pytest.raises(ValidationError):
        SpeechStep(session_id=SESSION, step=0, start=0, end=1, voiced=0, ingest_ms=0, pcm=b"\x00")


@pytest.mark.parametrize(
    ("header", "raw"),
    [("sf-step", b"twelve"), ("sf-step", b"-1"), ("sf-voiced", b"1.5"), ("sf-bogus", b"1"), ("sf-start", b"\xff")],
)
def test_decode_rejects_bad_audio_headers(header, raw):
    key, value, headers = encode(SAMPLES["speech.step"])
    headers = [h for h in headers if h[0] != header] + [(header, raw)]
    with pytest.raises(DecodeError):
        decode(key, value, headers)


@pytest.mark.parametrize("rate", [b"8000", b"44100", b"0"])
def test_decode_rejects_audio_at_another_sample_rate(rate):
    key, value, headers = encode(SAMPLES["audio.chunk"])
    with pytest.raises(DecodeError, match="sample_rate"):
        decode(key, value, _replace(headers, "sf-sample_rate", rate))


def test_audio_chunk_sample_rate_defaults_to_16k():
    key, value, headers = encode(SAMPLES["audio.chunk"])
    decoded = decode(key, value, [h for h in headers if h[0] != "sf-sample_rate"])
    assert decoded.sample_rate == 16000
    assert decoded == SAMPLES["audio.chunk"]


def test_decode_rejects_audio_record_missing_a_field_header():
    key, value, headers = encode(SAMPLES["speech.step"])
    with pytest.raises(DecodeError, match="malformed"):
        decode(key, value, [h for h in headers if h[0] != "sf-voiced"])


def test_decode_errors_are_value_errors():
    assert issubclass(DecodeError, ValueError)


# ---- SessionStart ------------------------------------------------------------------------


def test_session_start_estimates_the_speaker_count_by_default():
    start = SessionStart(session_id=SESSION)
    assert start.num_speakers is None
    assert start.speaker_limit == start.max_speakers == 20
    assert start.seq == 0


def test_session_start_rejects_more_speakers_than_the_bound():
    with pytest.raises(ValidationError, match="max_speakers"):
        SessionStart(session_id=SESSION, num_speakers=6, max_speakers=5)
    assert SessionStart(session_id=SESSION, num_speakers=5, max_speakers=5).speaker_limit == 5


def test_session_start_too_many_speakers_is_a_decode_error():
    key, value, headers = encode(SessionStart(session_id=SESSION, num_speakers=5, max_speakers=5))
    body = {**json.loads(value), "num_speakers": 6}
    with pytest.raises(DecodeError):
        decode(key, json.dumps(body).encode(), headers)


def test_speaker_limit_falls_back_to_max_speakers():
    assert SessionStart(session_id=SESSION, num_speakers=None, max_speakers=7).speaker_limit == 7
    assert SessionStart(session_id=SESSION, num_speakers=None).speaker_limit == 20
    assert SessionStart(session_id=SESSION, num_speakers=3).speaker_limit == 3


@pytest.mark.parametrize("fields", [{"num_speakers": 0}, {"num_speakers": 65, "max_speakers": 64}, {"max_speakers": 0}])
def test_session_start_rejects_out_of_range_counts(fields):
    with pytest.raises(ValidationError):
        SessionStart(session_id=SESSION, **fields)


@pytest.mark.parametrize("session_id", ["", "has space", "slash/in", "x" * 129, "ünï"])
def test_session_ids_are_restricted_tokens(session_id):
    with pytest.raises(ValidationError):
        SessionStart(session_id=session_id)


def test_messages_are_frozen():
    with pytest.raises(ValidationError):
        SAMPLES["session.start"].num_speakers = 4


# ---- topics --------------------------------------------------------------------------------


def _is_audio_topic(spec) -> bool:
    return any(issubclass(cls, _AudioMessage) for cls in spec.messages)


def test_topic_names_are_unique():
    names = [spec.name for spec in ALL_TOPICS]
    assert len(set(names)) == len(names)
    assert all(name.startswith("speakerflow.") for name in names)


@pytest.mark.parametrize("spec", ALL_TOPICS, ids=lambda s: s.name)
def test_every_topic_is_fully_declared(spec):
    assert spec.partitions >= 1
    assert spec.cleanup_policy in ("delete", "compact")
    assert spec.messages, "a topic carries at least one message type"
    assert spec.description.strip()
    if spec.cleanup_policy == "delete":
        assert spec.retention_ms is not None and spec.retention_ms > 0
    else:
        assert spec.retention_ms is None or spec.retention_ms > 0
    config = spec.kafka_config()
    assert config["cleanup.policy"] == spec.cleanup_policy
    assert int(config["retention.ms"]) == (spec.retention_ms if spec.retention_ms is not None else -1)


def test_audio_is_kept_only_for_minutes():
    audio_topics = [spec for spec in ALL_TOPICS if _is_audio_topic(spec)]
    assert {spec.name for spec in audio_topics} == {
        "speakerflow.audio",
        "speakerflow.speech-steps",
        "speakerflow.dead-letters",  # a failed record may be a chunk or a window with its audio
    }
    for spec in audio_topics:
        assert spec.cleanup_policy == "delete", f"{spec.name}: compaction would keep audio indefinitely"
        assert spec.retention_ms is not None
        assert MINUTE_MS <= spec.retention_ms <= 15 * MINUTE_MS, spec.name
        assert 1 <= int(spec.kafka_config()["retention.ms"]) <= 15 * MINUTE_MS


def test_every_message_type_is_carried_by_some_topic():
    carried = {cls.TYPE for spec in ALL_TOPICS for cls in spec.messages}
    assert carried == set(MESSAGE_TYPES) | set(export.RECORD_TYPES)


def test_session_control_travels_in_band_with_the_session_data():
    by_name = {spec.name: spec for spec in ALL_TOPICS}
    for name, data in [
        ("speakerflow.audio", (AudioChunk,)),
        ("speakerflow.speech-steps", (SpeechStep, SegmentedWindow)),
        ("speakerflow.step-embeddings", (StepEmbedding, WindowEmbeddings)),
    ]:
        assert by_name[name].messages == (SessionStart, *data, SessionStop)


# ---- exported JSON Schemas ------------------------------------------------------------------


def test_exported_schemas_are_up_to_date():
    assert export.stale_files() == [], "run `python -m topics.export`"


def test_exported_schemas_cover_every_message_and_the_catalogue():
    names = {p.name for p in export.SCHEMA_DIR.glob("*.json")}
    assert names == {f"{t}.json" for t in (*MESSAGE_TYPES, *export.RECORD_TYPES)} | {"topics.json"}
    catalogue = json.loads((export.SCHEMA_DIR / "topics.json").read_text())
    assert [t["name"] for t in catalogue["topics"]] == [s.name for s in ALL_TOPICS]
    chunk = json.loads((export.SCHEMA_DIR / "audio.chunk.json").read_text())
    assert "pcm" not in chunk["properties"]
    assert chunk["$id"] == f"speakerflow/audio.chunk/v{SCHEMA_VERSION}"


def test_stale_files_detects_changes(tmp_path):
    export.write(tmp_path)
    assert export.stale_files(tmp_path) == []

    start = tmp_path / "session.start.json"
    schema = json.loads(start.read_text())
    schema["properties"]["num_speakers"]["default"] = 3
    start.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    assert export.stale_files(tmp_path) == ["session.start.json"]

    (tmp_path / "topics.json").unlink()
    (tmp_path / "old.message.json").write_text("{}\n")
    assert export.stale_files(tmp_path) == ["old.message.json", "session.start.json", "topics.json"]

    export.write(tmp_path)
    assert export.stale_files(tmp_path) == []
    assert not (tmp_path / "old.message.json").exists()


def test_stale_files_detects_a_whitespace_only_change(tmp_path):
    shutil.copytree(export.SCHEMA_DIR, tmp_path / "schemas")
    directory = tmp_path / "schemas"
    assert export.stale_files(directory) == []
    path = directory / "speech.step.json"
    path.write_text(path.read_text().rstrip("\n"))
    assert export.stale_files(directory) == ["speech.step.json"]


def test_stale_files_of_a_missing_directory_lists_everything(tmp_path):
    assert export.stale_files(tmp_path / "absent") == sorted(export.rendered())
