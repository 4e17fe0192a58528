"""Segment agent: speakerflow.audio -> speakerflow.speech-steps.

Silero VAD steps in the fast profile, segmentation-3.0 windows in the accurate one
(`pipeline.stages.chains.build_segment`).
"""

from __future__ import annotations

import logging

import faust
from faust.types import EventT

from pipeline.agents.app import (
    bus_topic,
    dead_letter_guard,
    handle_session_messages,
    ingest_ms,
    send,
    session_table,
)
from pipeline.config import Profile
from pipeline.metrics import StageMetrics
from pipeline.stages.base import SessionState
from pipeline.stages.chains import build_segment
from topics import AUDIO, SPEECH_STEPS, AudioChunk, BusMessage, SessionStart, SessionStop

log = logging.getLogger(__name__)


def register(app: faust.App, profile: Profile) -> None:
    source, sink = bus_topic(app, AUDIO), bus_topic(app, SPEECH_STEPS)
    sessions = session_table(app, "segment-sessions", AUDIO)
    stage = build_segment(profile)
    metrics = StageMetrics("segment")
    metrics.model_info(stage.model_name, stage.device)

    guard = dead_letter_guard(app, "segment", metrics)

    async def handle(event: EventT, message: BusMessage, state: SessionState | None) -> None:
        key = event.key
        if isinstance(message, SessionStart):
            if state is None:  # a replayed start of a running session changes nothing
                sessions[key] = stage.start(message).to_bytes()
                await send(sink, message)
        elif state is None:
            metrics.error("unknown_session")
            log.warning("%s for unknown session %s (not started, or already stopped)", message.TYPE, message.session_id)
        elif isinstance(message, AudioChunk):
            outputs = stage.push(state, message, ingest_ms(event))
            sessions[key] = state.to_bytes()
            for output in outputs:
                await send(sink, output)
        elif isinstance(message, SessionStop):
            outputs = stage.finish(state, message)
            for output in outputs:
                await send(sink, output)
            if outputs:  # the stop was applied (it is the last output): the session ends here
                del sessions[key]

    @app.agent(source)
    async def segment(stream: faust.StreamT) -> None:
        await handle_session_messages(stream, sessions, stage.state_type.from_bytes, handle, guard)
