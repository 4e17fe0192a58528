"""Segment agent: speakerflow.audio -> speakerflow.speech-steps.

Silero VAD steps in the fast profile, segmentation-3.0 windows in the accurate one.
"""

from __future__ import annotations

import logging

import faust

from pipeline.agents.app import bus_topic, ingest_ms, send, session_messages, session_table
from pipeline.config import Profile
from pipeline.metrics import StageMetrics
from pipeline.stages.accurate.segmentation import SegmentationModel, SegmentationSessionState, SegmentationStage
from pipeline.stages.fast.vad import SileroVad, VadSessionState, VadStage
from topics import AUDIO, SPEECH_STEPS, AudioChunk, SessionStart, SessionStop

log = logging.getLogger(__name__)


def register(app: faust.App, profile: Profile) -> None:
    source, sink = bus_topic(app, AUDIO), bus_topic(app, SPEECH_STEPS)
    sessions = session_table(app, "segment-sessions", AUDIO)
    metrics = StageMetrics("segment")
    if profile.overlap_aware:
        model = SegmentationModel(profile.segmentation)
        stage: VadStage | SegmentationStage = SegmentationStage(profile.segmentation, model)
        load = SegmentationSessionState.from_bytes
        metrics.model_info("pyannote-segmentation-3.0", model.device.type)
    else:
        stage, load = VadStage(profile.vad, SileroVad()), VadSessionState.from_bytes
        metrics.model_info("silero-vad", "cpu")

    @app.agent(source)
    async def segment(stream: faust.StreamT) -> None:
        async for event, message, state in session_messages(stream, sessions, load, metrics):
            key = event.key
            if isinstance(message, SessionStart):
                if state is None:  # a replayed start of a running session changes nothing
                    fresh = stage.new_state()
                    fresh.last_seq = message.seq
                    sessions[key] = fresh.to_bytes()
                    await send(sink, message)
            elif state is None:
                metrics.error("unknown_session")
                log.warning(
                    "%s for unknown session %s (not started, or already stopped)", message.TYPE, message.session_id
                )
            elif isinstance(message, AudioChunk):
                steps = stage.push(state, message, ingest_ms(event))
                sessions[key] = state.to_bytes()
                for step in steps:
                    await send(sink, step)
            elif isinstance(message, SessionStop) and message.seq > state.last_seq:
                for step in stage.finish(state, message.session_id):
                    await send(sink, step)
                await send(sink, message)
                del sessions[key]
