"""The speakerflow bus contract: every topic and every message shape, declared once.

Producers and consumers import from here; nothing else in the project defines a
topic name or a message layout. See `topics.registry` for the topics and
`topics.messages` for the messages and their wire encoding.
"""

from topics.messages import (
    SCHEMA_VERSION,
    AudioChunk,
    BusMessage,
    DecodeError,
    LabeledSpan,
    ReportedSpeaker,
    SegmentedWindow,
    SessionReport,
    SessionStart,
    SessionStop,
    SpeakerTurn,
    SpeakerUpdate,
    SpeechStep,
    StepEmbedding,
    WindowEmbeddings,
    decode,
    encode,
)
from topics.registry import (
    ALL_TOPICS,
    AUDIO,
    DEAD_LETTER_HEADERS,
    DEAD_LETTERS,
    SESSION_REPORTS,
    SPEAKER_TURNS,
    SPEAKER_UPDATES,
    SPEECH_STEPS,
    STEP_EMBEDDINGS,
    TopicSpec,
    dead_letter_headers,
)

__all__ = [
    "ALL_TOPICS",
    "AUDIO",
    "DEAD_LETTERS",
    "DEAD_LETTER_HEADERS",
    "SCHEMA_VERSION",
    "SESSION_REPORTS",
    "SPEAKER_TURNS",
    "SPEAKER_UPDATES",
    "SPEECH_STEPS",
    "STEP_EMBEDDINGS",
    "AudioChunk",
    "BusMessage",
    "DecodeError",
    "LabeledSpan",
    "ReportedSpeaker",
    "SegmentedWindow",
    "SessionReport",
    "SessionStart",
    "SessionStop",
    "SpeakerTurn",
    "SpeakerUpdate",
    "SpeechStep",
    "StepEmbedding",
    "WindowEmbeddings",
    "TopicSpec",
    "dead_letter_headers",
    "decode",
    "encode",
]
