"""Clustering agent: speakerflow.step-embeddings -> speaker updates, turns and reports."""

from __future__ import annotations

import logging

import faust

from pipeline.agents.app import bus_topic, send, session_messages, session_table
from pipeline.config import Profile
from pipeline.metrics import StageMetrics
from pipeline.stages.chains import build_cluster
from topics import (
    SESSION_REPORTS,
    SPEAKER_TURNS,
    SPEAKER_UPDATES,
    STEP_EMBEDDINGS,
    SessionReport,
    SessionStart,
    SessionStop,
    SpeakerTurn,
)

log = logging.getLogger(__name__)


def register(app: faust.App, profile: Profile) -> None:
    source = bus_topic(app, STEP_EMBEDDINGS)
    sinks = {
        SpeakerTurn: bus_topic(app, SPEAKER_TURNS),
        SessionReport: bus_topic(app, SESSION_REPORTS),
    }
    updates = bus_topic(app, SPEAKER_UPDATES)
    sessions = session_table(app, "cluster-sessions", STEP_EMBEDDINGS)
    stage = build_cluster(profile)
    metrics = StageMetrics("cluster")

    @app.agent(source)
    async def cluster(stream: faust.StreamT) -> None:
        async for event, message, state in session_messages(stream, sessions, stage.state_type.from_bytes, metrics):
            key = event.key
            if isinstance(message, SessionStart):
                if state is None:  # a replayed start of a running session changes nothing
                    sessions[key] = stage.start(message).to_bytes()
                continue
            if state is None:
                metrics.error("unknown_session")
                log.warning("%s for unknown session %s", message.TYPE, message.session_id)
                continue
            if isinstance(message, stage.input_type):
                outputs = stage.push(state, message)
                sessions[key] = state.to_bytes()
            elif isinstance(message, SessionStop):
                outputs = stage.finish(state, message)
                del sessions[key]
            else:
                continue
            for output in outputs:
                await send(sinks.get(type(output), updates), output)
