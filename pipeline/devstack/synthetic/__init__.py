"""Synthetic test audio: scripted conversations spoken by espeak-ng at run time."""

from pipeline.devstack.synthetic.conversation import (
    THREE_SPEAKER_SCRIPT,
    TWO_SPEAKER_SCRIPT,
    VOICES,
    Conversation,
    Segment,
    Turn,
    Voice,
    script_for,
    speak,
    synthesize,
)

__all__ = [
    "THREE_SPEAKER_SCRIPT",
    "TWO_SPEAKER_SCRIPT",
    "VOICES",
    "Conversation",
    "Segment",
    "Turn",
    "Voice",
    "script_for",
    "speak",
    "synthesize",
]
