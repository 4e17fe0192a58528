"""Every message that travels on the bus, and its wire encoding.

Wire convention (the same on every topic):

- The Kafka key is the session id (UTF-8), so one session's records stay in order
  on one partition and sessions spread over workers.
- Every record carries the header ``sf-type`` (the message type, e.g.
  ``session.start``) and ``sf-schema`` (the schema version, an integer).
- Metadata messages are JSON objects (the pydantic models below; their JSON
  Schemas are exported to ``topics/schemas/``).
- Messages that carry audio (``audio.chunk``, ``speech.step``, ``segment.window``)
  put raw PCM s16le 16 kHz mono in the record value and their other fields in
  headers named ``sf-<field>``: numbers as ASCII decimal, text as is, lists as
  compact JSON. No base64, no JSON around audio.

Session control (start, stop) travels in-band on the audio topic and is
forwarded by each stage, so every stage sees a session's start, audio and stop
in the order the producer sent them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1
SAMPLE_RATE = 16_000
# SegmentedWindow.activity travels as integer percent: a tenth of the JSON of floats, precise enough.
ACTIVITY_SCALE = 100
BYTES_PER_SAMPLE = 2

TYPE_HEADER = "sf-type"
SCHEMA_HEADER = "sf-schema"
FIELD_HEADER_PREFIX = "sf-"

SessionId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
# Whose a session, a speaker profile or a job is. Without authentication at the gateway, everything is this one's.
DEFAULT_TENANT = "default"
Tenant = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
Samples = Annotated[int, Field(ge=0, description="position in samples at 16 kHz since the session's first sample")]


def _parse_json_text(value: object) -> object:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


# A list field of an audio-bearing message: JSON text in its header, a list in Python.
HeaderJson = BeforeValidator(_parse_json_text)


class DecodeError(ValueError):
    """A record that does not match the contract; the message says which part."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str]
    session_id: SessionId


class _JsonMessage(_Message):
    """A message whose whole value is its JSON form."""


class _AudioMessage(_Message):
    """A message whose value is PCM s16le and whose other fields ride in headers."""

    pcm: bytes = Field(default=b"", exclude=True, description="the record value: PCM s16le, 16 kHz, mono")

    @model_validator(mode="after")
    def _whole_samples(self) -> _AudioMessage:
        if len(self.pcm) % BYTES_PER_SAMPLE:
            raise ValueError(f"PCM length {len(self.pcm)} is not a whole number of 16-bit samples")
        return self

    @property
    def num_samples(self) -> int:
        return len(self.pcm) // BYTES_PER_SAMPLE


# ---- session input: audio and control -------------------------------------------------


class AudioChunk(_AudioMessage):
    """A piece of a session's audio as the producer sent it."""

    TYPE: ClassVar[str] = "audio.chunk"
    seq: int = Field(ge=0, description="record number within the session, counting control records too")
    offset: Samples = Field(description="stream position of the chunk's first sample")
    sample_rate: int = Field(default=SAMPLE_RATE, ge=SAMPLE_RATE, le=SAMPLE_RATE, description="always 16000")
    producer: str = Field(min_length=1, max_length=128, description="id of the producer instance")


class SessionStart(_JsonMessage):
    TYPE: ClassVar[str] = "session.start"
    type: Literal["session.start"] = "session.start"
    seq: int = Field(default=0, ge=0)
    num_speakers: int | None = Field(
        default=None, ge=1, le=64, description="speakers to track if known; null: estimated, up to max_speakers"
    )
    min_speakers: int = Field(default=1, ge=1, le=64, description="lower bound when num_speakers is not given")
    max_speakers: int = Field(default=20, ge=1, le=64, description="upper bound when num_speakers is not given")
    producer: str = Field(default="unknown", min_length=1, max_length=128)
    identify: bool | None = Field(
        default=None,
        description="name speakers who match an enrolled profile; null: on when the tenant has profiles",
    )
    tenant: Tenant = Field(
        default=DEFAULT_TENANT,
        description="whose session it is: its speakers are named after this tenant's profiles only",
    )

    @model_validator(mode="after")
    def _count_within_bounds(self) -> SessionStart:
        if self.min_speakers > self.max_speakers:
            raise ValueError("min_speakers must not exceed max_speakers")
        if self.num_speakers is not None and not self.min_speakers <= self.num_speakers <= self.max_speakers:
            raise ValueError("num_speakers must lie between min_speakers and max_speakers")
        return self

    @property
    def speaker_limit(self) -> int:
        """The most speakers the session may have: the count when given, else the upper bound."""
        return self.num_speakers if self.num_speakers is not None else self.max_speakers

    @property
    def speaker_floor(self) -> int:
        """The fewest speakers the report names when that many voices speak: the count when given, else the lower bound."""
        return self.num_speakers if self.num_speakers is not None else self.min_speakers


class SessionStop(_JsonMessage):
    TYPE: ClassVar[str] = "session.stop"
    type: Literal["session.stop"] = "session.stop"
    seq: int = Field(ge=0)
    offset: Samples = Field(description="total samples the producer sent before stopping")
    producer: str = Field(default="unknown", min_length=1, max_length=128)


# ---- between stages ---------------------------------------------------------------------


class SpeechStep(_AudioMessage):
    """One step of the stream after VAD; pcm is the voiced window to embed, or empty."""

    TYPE: ClassVar[str] = "speech.step"
    step: int = Field(ge=0, description="step number within the session")
    start: Samples
    end: Samples
    voiced: int = Field(ge=0, description="voiced samples inside [start, end)")
    ingest_ms: int = Field(ge=0, description="bus timestamp (ms) of the newest audio record in this step")
    speech: Annotated[list[tuple[int, int]], HeaderJson] = Field(
        default=[], description="voiced runs [start, end) inside the step, in samples (a JSON list in its header)"
    )


class _WindowFields(BaseModel):
    """A rolling window's local speaker segmentation (accurate profile).

    `activity[k][i]` is local speaker k's activity (percent) in frame i; frame i is
    centred `frame_offset_s + i * frame_step_s` seconds after `start`. A local
    speaker is a run of speech the segmentation gave one voice; it belongs to a
    track (the run followed from window to window).
    """

    step: int = Field(ge=0)
    start: int = Field(
        description="stream position of the window's first sample; negative while the window still "
        "reaches before the session (zero padding)"
    )
    end: Samples
    ingest_ms: int = Field(ge=0)
    frame_offset_s: float = Field(ge=0)
    frame_step_s: float = Field(gt=0)
    tracks: Annotated[list[int], HeaderJson] = Field(description="track id per local speaker")
    follows: Annotated[list[int], HeaderJson] = Field(
        default=[], description="per local speaker: the track the model heard as the same voice before a pause, or -1"
    )
    activity: Annotated[list[list[int]], HeaderJson] = Field(
        description="per local speaker, per frame: activity in percent"
    )


class SegmentedWindow(_AudioMessage, _WindowFields):
    """A segmented window; `pcm` carries its audio only when some track needs a new embedding."""

    TYPE: ClassVar[str] = "segment.window"
    embed_tracks: Annotated[list[int], HeaderJson] = Field(
        default=[], description="tracks to embed from this window's audio"
    )


class WindowEmbeddings(_JsonMessage, _WindowFields):
    """A segmented window with the embeddings of the tracks it asked for."""

    TYPE: ClassVar[str] = "window.embeddings"
    type: Literal["window.embeddings"] = "window.embeddings"
    embeddings: dict[int, list[float]] = Field(description="L2-normalised embedding per embedded track")


class StepEmbedding(_JsonMessage):
    TYPE: ClassVar[str] = "step.embedding"
    type: Literal["step.embedding"] = "step.embedding"
    step: int = Field(ge=0)
    start: Samples
    end: Samples
    voiced: int = Field(ge=0)
    ingest_ms: int = Field(ge=0)
    embedding: list[float] | None = Field(description="L2-normalised speaker embedding of the step's window, if any")
    speech: list[tuple[int, int]] = Field(
        default=[], description="voiced runs [start, end) inside the step, in samples"
    )


# ---- results ----------------------------------------------------------------------------


class LabeledSpan(BaseModel):
    """Speech of one speaker; overlapping spans of different speakers are overlapped speech."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    speaker: int = Field(ge=0)
    start_ms: int = Field(ge=0)
    end_ms: int = Field(ge=0)


class NamedSpeaker(BaseModel):
    """The enrolled profile a session speaker matched (`topics.speaker_profiles`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    profile_id: str = Field(min_length=1, max_length=64)
    speaker_name: str = Field(min_length=1, max_length=128)


class SpeakerUpdate(_JsonMessage):
    TYPE: ClassVar[str] = "speaker.update"
    type: Literal["speaker.update"] = "speaker.update"
    position_ms: int = Field(ge=0, description="stream position this update describes")
    current_speaker: int | None = Field(description="dominant speaker at position_ms, null in silence")
    active_speakers: list[int] = Field(
        default=[], description="every speaker talking at position_ms (several in overlap)"
    )
    spans: list[LabeledSpan] = Field(
        default=[], description="speech this update settles: who spoke when since the previous update"
    )
    speaking_time_ms: dict[int, int] = Field(description="speaking time so far per speaker id")
    ingest_ms: int = Field(ge=0, description="bus timestamp (ms) of the newest audio this update covers")
    named: dict[int, NamedSpeaker] = Field(
        default={}, description="the speakers named so far (speaker id -> profile); the others are unknown"
    )


class SpeakerTurn(_JsonMessage):
    TYPE: ClassVar[str] = "speaker.turn"
    type: Literal["speaker.turn"] = "speaker.turn"
    speaker: int = Field(ge=0)
    start_ms: int = Field(ge=0)
    end_ms: int = Field(ge=0)
    final: bool = Field(description="false while the turn is still open; a final turn never changes")
    speaker_name: str | None = Field(default=None, description="the enrolled name of the speaker, if matched")
    profile_id: str | None = Field(default=None, description="the enrolled profile of the speaker, if matched")


class ReportedSpeaker(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: int = Field(ge=0)
    total_time_ms: int = Field(ge=0)
    speaker_name: str | None = Field(default=None, description="the enrolled name of the speaker, if matched")
    profile_id: str | None = Field(default=None, description="the enrolled profile of the speaker, if matched")
    embedding: list[float] | None = Field(
        default=None,
        description="the speaker's voice: the L2-normalised centroid of its embeddings, in the report's "
        "embedding_model (for linking speakers across sessions)",
    )


ReportedTurn = LabeledSpan


class SessionReport(_JsonMessage):
    TYPE: ClassVar[str] = "session.report"
    type: Literal["session.report"] = "session.report"
    duration_ms: int = Field(ge=0)
    speakers: list[ReportedSpeaker]
    turns: list[ReportedTurn]
    embedding_model: str | None = Field(
        default=None, description="the model of the speakers' embeddings (the embed stage's model_name)"
    )


BusMessage = (
    AudioChunk
    | SessionStart
    | SessionStop
    | SpeechStep
    | SegmentedWindow
    | StepEmbedding
    | WindowEmbeddings
    | SpeakerUpdate
    | SpeakerTurn
    | SessionReport
)
MESSAGE_TYPES: dict[str, type[_Message]] = {cls.TYPE: cls for cls in get_args(BusMessage)}

Headers = list[tuple[str, bytes]]


def encode(message: BusMessage) -> tuple[bytes, bytes, Headers]:
    """Return (key, value, headers) for one record."""
    headers: Headers = [(TYPE_HEADER, message.TYPE.encode()), (SCHEMA_HEADER, str(SCHEMA_VERSION).encode())]
    key = message.session_id.encode()
    if isinstance(message, _AudioMessage):
        fields = message.model_dump(exclude={"session_id", "pcm"})
        headers += [(FIELD_HEADER_PREFIX + name, _header_value(value)) for name, value in fields.items()]
        return key, message.pcm, headers
    return key, message.model_dump_json().encode(), headers


def _header_value(value: object) -> bytes:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":")).encode()
    return str(value).encode()


def decode(
    key: bytes | None, value: bytes | None, headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]]
) -> BusMessage:
    """Parse one record; raise DecodeError naming what is wrong."""
    header_map = dict(headers.items() if isinstance(headers, Mapping) else headers)
    if not key:
        raise DecodeError("record has no key (the session id)")
    raw_type = header_map.get(TYPE_HEADER)
    if raw_type is None:
        raise DecodeError(f"record has no {TYPE_HEADER} header")
    cls = MESSAGE_TYPES.get(raw_type.decode(errors="replace"))
    if cls is None:
        raise DecodeError(f"unknown message type {raw_type!r}")
    schema = header_map.get(SCHEMA_HEADER, b"")
    if schema != str(SCHEMA_VERSION).encode():
        raise DecodeError(f"unsupported schema version {schema!r} for {cls.TYPE}")
    try:
        session_id = key.decode()
        if issubclass(cls, _AudioMessage):
            fields = {
                name[len(FIELD_HEADER_PREFIX) :]: raw.decode()
                for name, raw in header_map.items()
                if name.startswith(FIELD_HEADER_PREFIX) and name not in (TYPE_HEADER, SCHEMA_HEADER)
            }
            return cls.model_validate({**fields, "session_id": session_id, "pcm": value or b""})
        body = json.loads(value or b"")
        if not isinstance(body, dict):
            raise DecodeError(f"{cls.TYPE} value is not a JSON object")
        message = cls.model_validate(body)
    except (UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        raise DecodeError(f"malformed {cls.TYPE}: {exc}") from exc
    if message.session_id != session_id:
        raise DecodeError(f"{cls.TYPE} for session {message.session_id!r} carried under key {session_id!r}")
    return message  # type: ignore[return-value]
