"""The topics of the bus, each declared once with its settings and what it carries.

Retention is part of the promise to users: audio (and the voiced windows cut
from it) is kept only for minutes, long enough for a worker to fail over and
replay, never as a store. Results are kept longer for downstream consumers;
session reports are compacted to the latest report per session.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from topics.api_keys import ApiKeyRecord
from topics.jobs import BatchJob
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
from topics.speaker_profiles import SpeakerProfile

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
DEFAULT_PARTITIONS = 8


@dataclass(frozen=True)
class TopicSpec:
    name: str
    description: str
    messages: tuple[type[_Message] | type[SpeakerProfile] | type[BatchJob] | type[ApiKeyRecord], ...]
    retention_ms: int | None  # None keeps records until compaction replaces them
    cleanup_policy: str = "delete"
    partitions: int = DEFAULT_PARTITIONS
    key: str = "session id, UTF-8"
    # The largest record the topic takes; None for the broker's default (1 MiB).
    max_message_bytes: int | None = None

    def kafka_config(self) -> dict[str, str]:
        config = {"cleanup.policy": self.cleanup_policy}
        config["retention.ms"] = str(self.retention_ms if self.retention_ms is not None else -1)
        if self.max_message_bytes is not None:
            config["max.message.bytes"] = str(self.max_message_bytes)
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
# A record that a stage could decode but not handle, as it was read, so an operator can see why and
# replay it. It may be audio, so it is kept for minutes as audio is.
DEAD_LETTERS = TopicSpec(
    name="speakerflow.dead-letters",
    description=(
        "Records a stage decoded but failed to handle, each as it was read (key, value, headers) with "
        "dl-* headers naming the error and where it was read; the stage moved on past it."
    ),
    messages=tuple(dict.fromkeys(AUDIO.messages + SPEECH_STEPS.messages + STEP_EMBEDDINGS.messages)),
    retention_ms=10 * MINUTE_MS,
)

# The speaker registry: every enrolled profile, embeddings only (never audio), compacted to the
# latest record per profile and kept until a tombstone deletes it. One partition: a few thousand
# small records that every cluster worker reads whole (a Faust GlobalTable, which faust
# recommends with one partition).
SPEAKER_PROFILES = TopicSpec(
    name="speakerflow.speaker-profiles",
    description=(
        "The speaker registry: one speaker.profile per enrolled speaker (name, an embedding per model, "
        "speech seconds, clips, created/updated times); a tombstone deletes it. Compacted."
    ),
    messages=(SpeakerProfile,),
    retention_ms=None,
    cleanup_policy="compact",
    partitions=1,
    key="<tenant>/<profile id>, UTF-8",
)

# Batch jobs: the latest state of each, compacted, so a restarted gateway still knows every job.
JOBS = TopicSpec(
    name="speakerflow.jobs",
    description=(
        "Batch jobs: one batch.job per job (its clips' sessions and progress, then its linked voices); "
        "a tombstone deletes it. Compacted."
    ),
    messages=(BatchJob,),
    retention_ms=None,
    cleanup_policy="compact",
    partitions=1,
    key="<tenant>/<job id>, UTF-8",
)

# The gateway's API keys: the hash of each key's secret with its tenant and scopes, never the secret.
# Every gateway reads it whole and follows it, so a revocation (a tombstone) reaches all of them within seconds.
API_KEYS = TopicSpec(
    name="speakerflow.api-keys",
    description=(
        "The gateway's API keys: one api.key per key (tenant, scopes, name, SHA-256 of its secret); "
        "a tombstone revokes it. Compacted."
    ),
    messages=(ApiKeyRecord,),
    retention_ms=None,
    cleanup_policy="compact",
    partitions=1,
    key="key id, UTF-8",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    AUDIO,
    SPEECH_STEPS,
    STEP_EMBEDDINGS,
    SPEAKER_UPDATES,
    SPEAKER_TURNS,
    SESSION_REPORTS,
    DEAD_LETTERS,
    SPEAKER_PROFILES,
    JOBS,
    API_KEYS,
)

# The headers a dead letter adds to the failed record's own. Not sf-*: those are the record's fields.
DEAD_LETTER_HEADERS = ("dl-error-type", "dl-error", "dl-stage", "dl-topic", "dl-partition", "dl-offset")
# A message longer than this is cut: a header is no place for a whole traceback's worth of text.
DEAD_LETTER_ERROR_CHARS = 1000


def dead_letter_headers(
    record_headers: Iterable[tuple[str, bytes]],
    error: BaseException,
    stage: str,
    topic: str,
    partition: int,
    offset: int,
) -> list[tuple[str, bytes]]:
    """The failed record's headers followed by the dead-letter headers (DEAD_LETTER_HEADERS, in that order)."""
    origin = (type(error).__name__, str(error)[:DEAD_LETTER_ERROR_CHARS], stage, topic, str(partition), str(offset))
    kept = [(name, value) for name, value in record_headers if name not in DEAD_LETTER_HEADERS]
    return kept + [(name, value.encode()) for name, value in zip(DEAD_LETTER_HEADERS, origin, strict=True)]
