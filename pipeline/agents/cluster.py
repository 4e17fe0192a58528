"""Clustering agent: speakerflow.step-embeddings -> speaker updates, turns and reports."""

from __future__ import annotations

import logging

import faust
from faust.types import EventT

from pipeline.agents.app import bus_topic, dead_letter_guard, handle_session_messages, send, session_table
from pipeline.config import Profile
from pipeline.metrics import StageMetrics
from pipeline.stages.base import SessionState
from pipeline.stages.chains import build_cluster
from topics import (
    SESSION_REPORTS,
    SPEAKER_TURNS,
    SPEAKER_UPDATES,
    STEP_EMBEDDINGS,
    BusMessage,
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

    guard = dead_letter_guard(app, "cluster", metrics)

    async def handle(event: EventT, message: BusMessage, state: SessionState | None) -> None:
        key = event.key
        if isinstance(message, SessionStart):
            if state is None:  # a replayed start of a running session changes nothing
                sessions[key] = stage.start(message).to_bytes()
            return
        if state is None:
            metrics.error("unknown_session")
            log.warning("%s for unknown session %s", message.TYPE, message.session_id)
            return
        if isinstance(message, stage.input_type):
            outputs = stage.push(state, message)
            sessions[key] = state.to_bytes()
        elif isinstance(message, SessionStop):
            outputs = stage.finish(state, message)
            del sessions[key]
        else:
            return
        for output in outputs:
            await send(sinks.get(type(output), updates), output)

    @app.agent(source)
    async def cluster(stream: faust.StreamT) -> None:
        await handle_session_messages(stream, sessions, stage.state_type.from_bytes, handle, guard)
