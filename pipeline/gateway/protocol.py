"""The WebSocket protocol of the gateway: what clients send, what they receive, and when.

Clients speak camelCase JSON events; the bus speaks the message shapes of
:mod:`topics`. This module only translates between the two and keeps the
per-connection state (:class:`GatewaySession`); it does no I/O, so every rule
here can be tested without a socket or a broker.

Client actions (text frames)::

    {"action": "start", "num_speakers": 2, "session_id": "..."}          the count is known
    {"action": "start", "min_speakers": 2, "max_speakers": 4}             the count is estimated within bounds
    {"action": "start", "sample_rate": 48000, "encoding": "pcm_f32le"}    the audio as the client captures it
    {"action": "start", "identify": false}                                 never name speakers after enrolled profiles
    {"action": "stop"}
    {"action": "resume", "session_id": "...", "token": "..."}             continue a session after a lost connection
    {"action": "auth", "token": "..."}                                     the credential, as the first message

plus binary frames of mono PCM, 16 kHz s16le unless the start names another format.
Every field of a start but `action` is optional. The audio format:

- `sample_rate` (8000-48000, default 16000) and `encoding` (`pcm_s16le`, the default, or
  `pcm_f32le`, full scale [-1, 1]). The gateway converts every frame to 16 kHz s16le before the
  bus (:mod:`pipeline.gateway.audio_input`), so offsets on the bus count 16 kHz samples.
- A frame holds whole samples (2 or 4 bytes each) and at most as much audio as
  SPEAKERFLOW_MAX_FRAME_BYTES of 16 kHz s16le (:meth:`AudioFormat.frame_limit`).

The speaker counts follow pyannote's pipelines:

- `num_speakers` (1-64): exactly this many speakers; voices beyond them are left unlabelled.
  Omitted or null: the count is estimated.
- `min_speakers`, `max_speakers` (1-64, `min_speakers` <= `max_speakers`): bounds on the estimated
  count; omitted or null, 1 and 20. Given with `num_speakers`, a bound must hold it
  (`min_speakers` <= `num_speakers` <= `max_speakers`); a bound omitted then is `num_speakers` itself.

A start that breaks these rules (a count out of 1-64, bounds crossed, a count outside its bounds,
a count that is not an integer, a rate or encoding not listed) is refused with `invalid_start`,
naming the field.

Server events (text frames)::

    {"event": "started", "num_speakers": 2, "sessionId": "...", "resumeToken": "..."}
    {"event": "resumed", "sessionId": "...", "offset": 48000, "offsetMs": 3000}   send again from offset
    {"event": "speaker", "currentSpeakerId": 0, "activeSpeakerIds": [0, 1], "speakingTimeMs": {"0": 1200, "1": 500},
     "speakerName": "Ada", "profileId": "...", "namedSpeakers": {"0": {"speakerName": "Ada", "profileId": "..."}}}
    {"event": "turn", "speakerId": 0, "startMs": 0, "endMs": 1200, "final": true, "speakerName": "Ada", "profileId": "..."}
        (subscribers only)
    {"event": "report", "speakers": [{"id": 0, "totalTimeMs": 45000, "speakerName": "Ada", "profileId": "..."}],
     "turns": [{"speakerId": 0, "startMs": 0, "endMs": 2500, "speakerName": "Ada"}]}

`speakerName` and `profileId` name a speaker whose voice matched an enrolled profile
(docs/speakers.md); they are left out for a speaker who is unknown. `identify` (default: on when
the tenant has profiles) asks for that naming; false turns it off for the session.
    {"event": "authenticated", "tenant": "...", "scopes": ["ingest", ...]}   the reply to an auth message
    {"event": "error", "code": "...", "message": "..."}   (the codes: ErrorCode)

With SPEAKERFLOW_AUTH_MODE=required a socket authenticates before anything else
(:mod:`pipeline.gateway.credentials`): a header, ``?access_token=``, or an auth action as its first
message. A refusal is an error event (`unauthenticated`, `invalid_credential`, `forbidden`,
`wrong_tenant`, `too_many_connections`) and close code 1008. A session id of another tenant than
the default is ``<tenant>:<id>`` (:mod:`pipeline.gateway.tenants`): the gateway prefixes the id a
start asks for, and `started` carries the id to subscribe to and resume.
"""

from __future__ import annotations

import json
import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from pipeline.gateway.audio_input import (
    BUS_FORMAT,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioConverter,
    AudioFormat,
    Encoding,
    NonFiniteSamples,
)
from pipeline.gateway.tenants import qualified_session_id
from topics import AudioChunk, ReportedSpeaker, SessionReport, SessionStart, SessionStop, SpeakerTurn, SpeakerUpdate
from topics.messages import DEFAULT_TENANT, ReportedTurn, SessionId

_SESSION_ID = TypeAdapter(SessionId)
# Where clients reach the gateway: one socket per producing client, one per watcher of a session.
SESSION_PATH = "/ws/session"
EVENTS_PATH = "/ws/sessions/{session_id}/events"


def session_url(host: str, port: int) -> str:
    return f"ws://{host}:{port}{SESSION_PATH}"


def events_url(host: str, port: int, session_id: str) -> str:
    return f"ws://{host}:{port}{EVENTS_PATH.format(session_id=session_id)}"


__all__ = [
    "AuthAction",
    "AuthenticatedEvent",
    "EVENTS_PATH",
    "SESSION_PATH",
    "ErrorCode",
    "ErrorEvent",
    "GatewaySession",
    "NamedSpeakerEvent",
    "ProtocolError",
    "ReportEvent",
    "ReportEventSpeaker",
    "ReportEventTurn",
    "ResultMessage",
    "ResumeAction",
    "ResumedEvent",
    "ServerEvent",
    "SpeakerEvent",
    "StartAction",
    "StartedEvent",
    "StopAction",
    "TurnEvent",
    "audio_format",
    "parse_action",
    "result_event",
    "session_url",
    "events_url",
    "speaker_counts",
]


class ErrorCode(StrEnum):
    """Every code an error event can carry: the complete list, which the docs follow."""

    # A text frame that is not a JSON object.
    BAD_JSON = "bad_json"
    # A JSON object whose action is none of start, stop and resume.
    UNKNOWN_ACTION = "unknown_action"
    # A start with unknown fields, wrongly typed values, speaker counts out of bounds, an audio format
    # not supported or a bad session id.
    INVALID_START = "invalid_start"
    # A start while this connection's session runs or awaits its report.
    ALREADY_STARTED = "already_started"
    # A start of a session id that another socket of this gateway is feeding.
    SESSION_IN_USE = "session_in_use"
    # Audio or a stop before start, or after stop.
    NOT_STARTED = "not_started"
    # A binary frame that is not a whole number of samples of the session's encoding (2 or 4 bytes).
    ODD_LENGTH_PCM = "odd_length_pcm"
    # A pcm_f32le frame with NaN or infinite samples.
    NON_FINITE_PCM = "non_finite_pcm"
    # A binary frame with more audio than SPEAKERFLOW_MAX_FRAME_BYTES of 16 kHz s16le holds.
    FRAME_TOO_LARGE = "frame_too_large"
    # A record could not be published to Kafka.
    BUS_UNAVAILABLE = "bus_unavailable"
    # No report within SPEAKERFLOW_REPORT_TIMEOUT_S of the stop.
    REPORT_TIMEOUT = "report_timeout"
    # The events socket of a session id that is not valid; the socket is then closed (1008).
    INVALID_SESSION_ID = "invalid_session_id"
    # A resume with unknown fields, or whose token was not issued for that session by this deployment.
    INVALID_RESUME = "invalid_resume"
    # A resume of a session that cannot continue: stopped, unknown, or its client gone longer than the grace period.
    RESUME_EXPIRED = "resume_expired"
    # Authentication required and none sent (in a header, the query string or a first auth message); closed (1008).
    UNAUTHENTICATED = "unauthenticated"
    # A credential that proves nothing: malformed, unknown, revoked, expired, or badly signed; closed (1008).
    INVALID_CREDENTIAL = "invalid_credential"
    # The credential lacks the scope the socket needs (ingest, subscribe); closed (1008).
    FORBIDDEN = "forbidden"
    # A session of another tenant: subscribed to, or resumed; the events socket is closed (1008).
    WRONG_TENANT = "wrong_tenant"
    # An auth action on a socket that is authenticated already.
    ALREADY_AUTHENTICATED = "already_authenticated"
    # The tenant has SPEAKERFLOW_QUOTA_MAX_CONNECTIONS sockets open on this gateway; closed (1008).
    TOO_MANY_CONNECTIONS = "too_many_connections"
    # The tenant runs SPEAKERFLOW_QUOTA_MAX_SESSIONS sessions on this gateway; the start is refused, the socket stays.
    TOO_MANY_SESSIONS = "too_many_sessions"
    # The tenant sent more than SPEAKERFLOW_QUOTA_AUDIO_SECONDS_PER_MINUTE; the frame is dropped, the session goes on.
    AUDIO_RATE_EXCEEDED = "audio_rate_exceeded"


class ProtocolError(Exception):
    """A client mistake or a failed publish, reported to the client as an error event."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def event(self) -> ErrorEvent:
        return ErrorEvent(code=self.code, message=self.message)


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


# ---- client actions -----------------------------------------------------------------------


class StartAction(BaseModel):
    # Unknown fields are refused so that a typo such as "numSpeakers" does not silently
    # fall back to the default count.
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["start"]
    # Bounds live on topics.SessionStart, which validates them in session_start(). Null means
    # "not given" (the count estimated, a default bound), never "no bound".
    num_speakers: StrictInt | None = None
    min_speakers: StrictInt | None = None
    max_speakers: StrictInt | None = None
    session_id: SessionId | None = None
    # Null, as omitted, is the bus's own format.
    sample_rate: StrictInt | None = Field(default=None, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)
    encoding: Encoding | None = None
    # Null, as omitted: speakers are named when the tenant has enrolled profiles.
    identify: bool | None = None

    def audio_format(self) -> AudioFormat:
        """The format of the frames the client will send."""
        return AudioFormat(self.sample_rate or BUS_FORMAT.sample_rate, self.encoding or BUS_FORMAT.encoding)

    def session_start(self, session_id: str, producer: str, tenant: str = DEFAULT_TENANT) -> SessionStart:
        """The bus record that opens the session; raises ProtocolError (invalid_start) if the counts break the rules."""
        counts = speaker_counts(self.num_speakers, self.min_speakers, self.max_speakers)
        return SessionStart(
            session_id=session_id, seq=0, producer=producer, identify=self.identify, tenant=tenant, **counts
        )


def speaker_counts(
    num_speakers: int | None = None, min_speakers: int | None = None, max_speakers: int | None = None
) -> dict[str, int]:
    """The count fields of a `SessionStart` for the counts a client gave (None: not given), as pyannote reads them.

    A known count is its own bounds unless they are given; unknown, the bounds not given keep
    SessionStart's defaults. Raises ProtocolError (invalid_start) naming what breaks the rules,
    so a command line can check its options before it starts anything.
    """
    if num_speakers is not None:
        if min_speakers is not None and num_speakers < min_speakers:
            raise ProtocolError(
                ErrorCode.INVALID_START, f"num_speakers ({num_speakers}) is below min_speakers ({min_speakers})"
            )
        if max_speakers is not None and num_speakers > max_speakers:
            raise ProtocolError(
                ErrorCode.INVALID_START, f"num_speakers ({num_speakers}) is above max_speakers ({max_speakers})"
            )
        min_speakers = num_speakers if min_speakers is None else min_speakers
        max_speakers = num_speakers if max_speakers is None else max_speakers
    given = {"num_speakers": num_speakers, "min_speakers": min_speakers, "max_speakers": max_speakers}
    counts = {name: value for name, value in given.items() if value is not None}
    try:
        # SessionStart holds the rest of the rules (each count in 1-64, the bounds not crossed).
        SessionStart(session_id="speaker-counts", **counts)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_START, _validation_summary(exc)) from exc
    return counts


def audio_format(sample_rate: int | None = None, encoding: str | None = None) -> AudioFormat:
    """The audio format a start naming this rate and encoding (None: not given) stands for.

    Raises ProtocolError (invalid_start) as a start would, so a command line can check its options.
    """
    try:
        return StartAction(action="start", sample_rate=sample_rate, encoding=encoding).audio_format()
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_START, _validation_summary(exc)) from exc


class StopAction(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    action: Literal["stop"]


class ResumeAction(BaseModel):
    """Continue a session after a lost connection, with the token its `started` carried."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["resume"]
    session_id: SessionId
    token: str = Field(min_length=1, max_length=256)


class AuthAction(BaseModel):
    """A socket's credential, sent as its first message (for clients that cannot set a header)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["auth"]
    token: str = Field(min_length=1, max_length=8192)


ClientAction = StartAction | StopAction | ResumeAction | AuthAction


def parse_action(text: str) -> ClientAction:
    """Parse one text frame; raise ProtocolError (bad_json, unknown_action, invalid_start)."""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"text frame is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, f"text frame is JSON {type(body).__name__}, expected an object")
    action = body.get("action")
    if action == "start":
        try:
            return StartAction.model_validate(body)
        except ValidationError as exc:
            raise ProtocolError(ErrorCode.INVALID_START, _validation_summary(exc)) from exc
    if action == "stop":
        return StopAction.model_validate(body)
    if action == "resume":
        try:
            return ResumeAction.model_validate(body)
        except ValidationError as exc:
            raise ProtocolError(ErrorCode.INVALID_RESUME, _validation_summary(exc)) from exc
    if action == "auth":
        try:
            return AuthAction.model_validate(body)
        except ValidationError as exc:
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, _validation_summary(exc)) from exc
    raise ProtocolError(
        ErrorCode.UNKNOWN_ACTION, f"unknown action {action!r}; expected 'start', 'stop', 'resume' or 'auth'"
    )


# ---- server events ------------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class StartedEvent(_Event):
    event: Literal["started"] = "started"
    num_speakers: int | None
    session_id: str = Field(alias="sessionId")
    # What a `resume` of this session must show (pipeline.gateway.resume); null where the gateway resumes none.
    resume_token: str | None = Field(default=None, alias="resumeToken")


class ResumedEvent(_Event):
    """The session continues: the client sends its audio again from `offset`, what the bus already holds."""

    event: Literal["resumed"] = "resumed"
    session_id: str = Field(alias="sessionId")
    # 16 kHz samples of the session published so far (a client at another rate scales it by its rate / 16000).
    offset: int
    offset_ms: int = Field(alias="offsetMs")


def _unset(value: object) -> bool:
    # Names appear on the wire only where a speaker is named: events of sessions without known speakers are unchanged.
    return value is None or value == {}


class NamedSpeakerEvent(_Event):
    """The enrolled profile a speaker matched (on the bus: topics.NamedSpeaker)."""

    speaker_name: str = Field(alias="speakerName")
    profile_id: str = Field(alias="profileId")


class SpeakerEvent(_Event):
    event: Literal["speaker"] = "speaker"
    current_speaker_id: int | None = Field(alias="currentSpeakerId")
    # Everyone talking at the update's position, dominant first: two or more in overlapped speech.
    active_speaker_ids: list[int] = Field(default=[], alias="activeSpeakerIds")
    # JSON object keys are strings; declaring them so keeps the Python view equal to the wire.
    speaking_time_ms: dict[str, int] = Field(alias="speakingTimeMs")
    # The current speaker's enrolled name and profile, null while unknown.
    speaker_name: str | None = Field(default=None, alias="speakerName", exclude_if=_unset)
    profile_id: str | None = Field(default=None, alias="profileId", exclude_if=_unset)
    # Every speaker of the session named so far.
    named_speakers: dict[str, NamedSpeakerEvent] = Field(default={}, alias="namedSpeakers", exclude_if=_unset)


class TurnEvent(_Event):
    event: Literal["turn"] = "turn"
    speaker_id: int = Field(alias="speakerId")
    start_ms: int = Field(alias="startMs")
    end_ms: int = Field(alias="endMs")
    final: bool
    speaker_name: str | None = Field(default=None, alias="speakerName", exclude_if=_unset)
    profile_id: str | None = Field(default=None, alias="profileId", exclude_if=_unset)


class ReportEventSpeaker(_Event):
    """One speaker's talk time in a report event (on the bus: topics.ReportedSpeaker)."""

    id: int
    total_time_ms: int = Field(alias="totalTimeMs")
    speaker_name: str | None = Field(default=None, alias="speakerName", exclude_if=_unset)
    profile_id: str | None = Field(default=None, alias="profileId", exclude_if=_unset)


class ReportEventTurn(_Event):
    """One turn in a report event (on the bus: topics.ReportedTurn)."""

    speaker_id: int = Field(alias="speakerId")
    start_ms: int = Field(alias="startMs")
    end_ms: int = Field(alias="endMs")
    speaker_name: str | None = Field(default=None, alias="speakerName", exclude_if=_unset)


class ReportEvent(_Event):
    event: Literal["report"] = "report"
    speakers: list[ReportEventSpeaker]
    # Beyond the totals the protocol requires: the session's turns, so a client can place each speaker in time.
    turns: list[ReportEventTurn] = []

    def session_report(self, session_id: str) -> SessionReport:
        """The bus report this event was made from, but for its duration, which the event does not carry."""
        return SessionReport(
            session_id=session_id,
            duration_ms=0,
            speakers=[
                ReportedSpeaker(
                    id=s.id, total_time_ms=s.total_time_ms, speaker_name=s.speaker_name, profile_id=s.profile_id
                )
                for s in self.speakers
            ],
            turns=[ReportedTurn(speaker=t.speaker_id, start_ms=t.start_ms, end_ms=t.end_ms) for t in self.turns],
        )


class AuthenticatedEvent(_Event):
    """The reply to an auth action: whose the socket is now, and what it may do."""

    event: Literal["authenticated"] = "authenticated"
    tenant: str
    scopes: list[str]


class ErrorEvent(_Event):
    event: Literal["error"] = "error"
    code: ErrorCode
    message: str


ServerEvent = AuthenticatedEvent | StartedEvent | ResumedEvent | SpeakerEvent | TurnEvent | ReportEvent | ErrorEvent
ResultMessage = SpeakerUpdate | SpeakerTurn | SessionReport


def result_event(message: ResultMessage) -> SpeakerEvent | TurnEvent | ReportEvent:
    """The client event for one result record of the bus."""
    if isinstance(message, SpeakerUpdate):
        current = message.named.get(message.current_speaker) if message.current_speaker is not None else None
        return SpeakerEvent(
            current_speaker_id=message.current_speaker,
            active_speaker_ids=message.active_speakers,
            speaking_time_ms={str(k): v for k, v in sorted(message.speaking_time_ms.items())},
            speaker_name=current.speaker_name if current else None,
            profile_id=current.profile_id if current else None,
            named_speakers={
                str(s): NamedSpeakerEvent(speaker_name=n.speaker_name, profile_id=n.profile_id)
                for s, n in sorted(message.named.items())
            },
        )
    if isinstance(message, SpeakerTurn):
        return TurnEvent(
            speaker_id=message.speaker,
            start_ms=message.start_ms,
            end_ms=message.end_ms,
            final=message.final,
            speaker_name=message.speaker_name,
            profile_id=message.profile_id,
        )
    if isinstance(message, SessionReport):
        names = {s.id: s.speaker_name for s in message.speakers}
        return ReportEvent(
            speakers=[
                ReportEventSpeaker(
                    id=s.id, total_time_ms=s.total_time_ms, speaker_name=s.speaker_name, profile_id=s.profile_id
                )
                for s in message.speakers
            ],
            turns=[
                ReportEventTurn(
                    speaker_id=t.speaker, start_ms=t.start_ms, end_ms=t.end_ms, speaker_name=names.get(t.speaker)
                )
                for t in message.turns
            ],
        )
    raise TypeError(f"{type(message).__name__} is not a result message")


# ---- per-connection state -----------------------------------------------------------------


class GatewaySession:
    """The protocol state of one client connection, which may run several sessions one after another.

    Methods that build a bus record (:meth:`start`, :meth:`audio`, :meth:`tail`, :meth:`stop`)
    change no numbering; the caller publishes the record and then :meth:`commit`\\ s it. A
    record that could not be published therefore leaves seq and offset as they were, and the
    next frame continues the stream without a gap. Only the session's converter moves on:
    it has heard a frame whether or not its record was published, so such a frame is lost
    as a whole, as one in the bus format is.
    """

    def __init__(self, producer: str, max_frame_bytes: int) -> None:
        self.producer = producer
        self.max_frame_bytes = max_frame_bytes  # in bytes of bus PCM: see AudioFormat.frame_limit
        self.session_id: str | None = None
        self.seq = 0  # seq of the next record
        self.offset = 0  # 16 kHz samples published so far = offset of the next chunk
        self.stopped = False
        self.converter = AudioConverter()  # the running session's; replaced at each start

    @property
    def active(self) -> bool:
        """A session is open on this connection (started, maybe stopped and awaiting its report)."""
        return self.session_id is not None

    def start(self, action: StartAction, tenant: str | None = None) -> SessionStart:
        """The start record of `action`; `tenant` (None in open mode) qualifies its session id (pipeline.gateway.tenants)."""
        if self.stopped:
            raise ProtocolError(
                ErrorCode.ALREADY_STARTED, f"session {self.session_id} is stopping; wait for its report"
            )
        if self.active:
            raise ProtocolError(
                ErrorCode.ALREADY_STARTED, f"session {self.session_id} is already running on this connection"
            )
        session_id = action.session_id or uuid.uuid4().hex
        if tenant is None:
            return action.session_start(session_id, self.producer)
        session_id = qualified_session_id(tenant, session_id)
        try:
            _SESSION_ID.validate_python(session_id)
        except ValidationError as exc:
            raise ProtocolError(
                ErrorCode.INVALID_START, f"session id {session_id!r} with its tenant prefix: {_validation_summary(exc)}"
            ) from exc
        return action.session_start(session_id, self.producer, tenant)

    def audio(self, frame: bytes) -> AudioChunk | None:
        """The chunk for one client frame, converted to the bus format; None while the resampler holds it all back."""
        self._require_running("audio")
        audio_format = self.converter.format
        limit = audio_format.frame_limit(self.max_frame_bytes)
        if len(frame) > limit:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame of {len(frame)} bytes exceeds the limit of {limit} bytes for {audio_format}",
            )
        if len(frame) % audio_format.encoding.bytes_per_sample:
            raise ProtocolError(
                ErrorCode.ODD_LENGTH_PCM,
                f"frame of {len(frame)} bytes is not a whole number of {audio_format.encoding.bytes_per_sample}-byte "
                f"{audio_format.encoding} samples; frame dropped",
            )
        try:
            pcm = self.converter.convert(frame)
        except NonFiniteSamples as exc:
            raise ProtocolError(ErrorCode.NON_FINITE_PCM, f"{exc}; frame dropped") from exc
        return self._chunk(pcm)

    def tail(self) -> AudioChunk | None:
        """The chunk of what the converter still holds, to be published before the stop; None if it holds nothing."""
        self._require_running("stop")
        return self._chunk(self.converter.flush())

    def _chunk(self, pcm: bytes) -> AudioChunk | None:
        if not pcm:
            return None
        assert self.session_id is not None
        return AudioChunk(session_id=self.session_id, seq=self.seq, offset=self.offset, producer=self.producer, pcm=pcm)

    def stop(self) -> SessionStop:
        self._require_running("stop")
        assert self.session_id is not None
        return SessionStop(session_id=self.session_id, seq=self.seq, offset=self.offset, producer=self.producer)

    def commit(self, record: SessionStart | AudioChunk | SessionStop, audio_format: AudioFormat = BUS_FORMAT) -> None:
        """Account for a record that was published; a start's `audio_format` is the client's (StartAction.audio_format)."""
        if isinstance(record, SessionStart):
            if self.active:
                raise RuntimeError("commit of a start while a session is open")
            self.session_id, self.seq, self.offset, self.stopped = record.session_id, 1, 0, False
            self.converter = AudioConverter(audio_format)
            return
        if record.session_id != self.session_id or record.seq != self.seq or self.stopped:
            raise RuntimeError(f"commit of {type(record).__name__} seq {record.seq} out of order (next {self.seq})")
        self.seq += 1
        if isinstance(record, AudioChunk):
            self.offset += record.num_samples
        else:
            self.stopped = True

    def resume(self, session_id: str, seq: int, offset: int, audio_format: AudioFormat) -> None:
        """Continue a running session at the numbering the bus holds: `seq` and `offset` of its next record.

        The converter starts afresh: a resampling client's first frames after the gap lose the few
        samples the old converter still held, as a frame lost to the network would.
        """
        if self.active:
            raise ProtocolError(
                ErrorCode.ALREADY_STARTED, f"session {self.session_id} is already running on this connection"
            )
        self.session_id, self.seq, self.offset, self.stopped = session_id, seq, offset, False
        self.converter = AudioConverter(audio_format)

    def end(self) -> None:
        """Forget the session (its report came, or waiting for it gave up); a new one may start."""
        self.session_id = None
        self.seq = 0
        self.offset = 0
        self.stopped = False
        self.converter = AudioConverter()

    def _require_running(self, what: str) -> None:
        if not self.active:
            raise ProtocolError(ErrorCode.NOT_STARTED, f"{what} before start")
        if self.stopped:
            raise ProtocolError(ErrorCode.NOT_STARTED, f"{what} after stop; start a new session")
