"""Clustering agent: speakerflow.step-embeddings -> speaker updates, turns and reports."""

from __future__ import annotations

import logging

import faust

from pipeline.agents.app import bus_topic, send, session_messages, session_table
from pipeline.config import Profile
from pipeline.metrics import StageMetrics
from pipeline.stages.accurate.overlap_clustering import OverlapClusteringSessionState, OverlapClusteringStage
from pipeline.stages.fast.clustering import ClusteringSessionState, ClusteringStage
from topics import (
    SESSION_REPORTS,
    SPEAKER_TURNS,
    SPEAKER_UPDATES,
    STEP_EMBEDDINGS,
    SessionReport,
    SessionStart,
    SessionStop,
    SpeakerTurn,
    StepEmbedding,
    WindowEmbeddings,
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
    if profile.overlap_aware:
        stage: ClusteringStage | OverlapClusteringStage = OverlapClusteringStage(profile.overlap_clustering)
        load, work = OverlapClusteringSessionState.model_validate_json, WindowEmbeddings
    else:
        stage, load, work = (
            ClusteringStage(profile.clustering),
            ClusteringSessionState.model_validate_json,
            StepEmbedding,
        )
    metrics = StageMetrics("cluster")

    @app.agent(source)
    async def cluster(stream: faust.StreamT) -> None:
        async for event, message, state in session_messages(stream, sessions, load, metrics):
            key = event.key
            if isinstance(message, SessionStart):
                if state is None:
                    sessions[key] = stage.start(message).model_dump_json().encode()
                continue
            if state is None:
                metrics.error("unknown_session")
                log.warning("%s for unknown session %s", message.TYPE, message.session_id)
                continue
            if isinstance(message, work):
                outputs = stage.push(state, message)
                sessions[key] = state.model_dump_json().encode()
            elif isinstance(message, SessionStop):
                outputs = stage.stop(state, message.session_id, message.offset)
                del sessions[key]
            else:
                continue
            for output in outputs:
                await send(sinks.get(type(output), updates), output)
