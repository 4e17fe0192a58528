"""Segment agent: speakerflow.audio -> speakerflow.speech-steps.

Silero VAD steps in the fast profile, segmentation-3.0 windows in the accurate one
(`pipeline.stages.chains.build_segment`).
"""

from __future__ import annotations

import logging

import faust

from pipeline.agents.app import bus_topic, ingest_ms, send, session_messages, session_table
from pipeline.config import Profile
from pipeline.metrics import StageMetrics
from pipeline.stages.chains import build_segment
from topics import AUDIO, SPEECH_STEPS, AudioChunk, SessionStart, SessionStop

log = logging.getLogger(__name__)


def register(app: faust.App, profile: Profile) -> None:
    source, sink = bus_topic(app, AUDIO), bus_topic(app, SPEECH_STEPS)
    sessions = session_table(app, "segment-sessions", AUDIO)
    stage = build_segment(profile)
    metrics = StageMetrics("segment")
    metrics.model_info(stage.model_name, stage.device)

    @app.agent(source)
    async def segment(stream: faust.StreamT) -> None:
        async for event, message, state in session_messages(stream, sessions, stage.state_type.from_bytes, metrics):
            key = event.key
            if isinstance(message, SessionStart):
                if state is None:  # a replayed start of a running session changes nothing
                    sessions[key] = stage.start(message).to_bytes()
                    await send(sink, message)
            elif state is None:
                metrics.error("unknown_session")
                log.warning(
                    "%s for unknown session %s (not started, or already stopped)", message.TYPE, message.session_id
                )
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
