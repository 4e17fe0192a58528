"""The topics of the bus, each declared once with its settings and what it carries.

Retention is part of the promise to users: audio (and the voiced windows cut
from it) is kept only for minutes, long enough for a worker to fail over and
replay, never as a store. Results are kept longer for downstream consumers;
session reports are compacted to the latest report per session.
"""

from __future__ import annotations

from dataclasses import dataclass

from topics.messages import (
    AudioChunk,
    SegmentedWindow,
    SessionReport,
    SessionStart,
    SessionStop,
    SpeakerTurn,
    SpeakerUpdate,
    SpeechStep,
    StepEmbedding,
    WindowEmbeddings,
    _Message,
)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
DEFAULT_PARTITIONS = 8


@dataclass(frozen=True)
class TopicSpec:
    name: str
    description: str
    messages: tuple[type[_Message], ...]
    retention_ms: int | None  # None keeps records until compaction replaces them
    cleanup_policy: str = "delete"
    partitions: int = DEFAULT_PARTITIONS
    key: str = "session id, UTF-8"

    def kafka_config(self) -> dict[str, str]:
        config = {"cleanup.policy": self.cleanup_policy}
        config["retention.ms"] = str(self.retention_ms if self.retention_ms is not None else -1)
        return config


AUDIO = TopicSpec(
    name="speakerflow.audio",
    description="Session input from producers: start, raw PCM chunks, stop, in the order sent.",
    messages=(SessionStart, AudioChunk, SessionStop),
    retention_ms=10 * MINUTE_MS,
)
SPEECH_STEPS = TopicSpec(
    name="speakerflow.speech-steps",
    description=(
        "Segment-stage output: per step, the VAD's voiced runs and window to embed (fast profile) "
        "or the rolling window's local speaker activity and, when a track needs it, its audio (accurate profile)."
    ),
    messages=(SessionStart, SpeechStep, SegmentedWindow, SessionStop),
    retention_ms=10 * MINUTE_MS,
)
STEP_EMBEDDINGS = TopicSpec(
    name="speakerflow.step-embeddings",
    description="Embedding output: each step or window with the speaker embeddings it asked for.",
    messages=(SessionStart, StepEmbedding, WindowEmbeddings, SessionStop),
    retention_ms=HOUR_MS,
)
SPEAKER_UPDATES = TopicSpec(
    name="speakerflow.speaker-updates",
    description="Live state per step: current speaker and speaking time so far.",
    messages=(SpeakerUpdate,),
    retention_ms=HOUR_MS,
)
SPEAKER_TURNS = TopicSpec(
    name="speakerflow.speaker-turns",
    description="Speaker turns: opened (final=false) and closed (final=true).",
    messages=(SpeakerTurn,),
    retention_ms=7 * DAY_MS,
)
SESSION_REPORTS = TopicSpec(
    name="speakerflow.session-reports",
    description="The report of each stopped session; compacted to the latest per session.",
    messages=(SessionReport,),
    retention_ms=None,
    cleanup_policy="compact",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    AUDIO,
    SPEECH_STEPS,
    STEP_EMBEDDINGS,
    SPEAKER_UPDATES,
    SPEAKER_TURNS,
    SESSION_REPORTS,
)
