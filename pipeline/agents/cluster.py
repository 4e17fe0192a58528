"""Clustering agent: speakerflow.step-embeddings -> speaker updates, turns and reports.

Every cluster worker reads the whole speaker registry (speakerflow.speaker-profiles) as a
Faust GlobalTable over that compacted topic, so each of them names the speakers of its
sessions after every enrolled profile, and a profile changed by the gateway reaches them
as the record arrives.
"""

from __future__ import annotations

import logging

import faust
from faust.types import EventT

from pipeline.agents.app import bus_topic, dead_letter_guard, handle_session_messages, send
from pipeline.agents.session_states import session_states
from pipeline.config import Profile
from pipeline.metrics import StageMetrics
from pipeline.settings import Settings
from pipeline.stages.base import SessionState
from pipeline.stages.chains import build_cluster
from pipeline.stages.speaker_naming import ProfileRegistry
from topics import (
    SESSION_REPORTS,
    SPEAKER_PROFILES,
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


def register(app: faust.App, profile: Profile, settings: Settings) -> None:
    source = bus_topic(app, STEP_EMBEDDINGS)
    sinks = {
        SpeakerTurn: bus_topic(app, SPEAKER_TURNS),
        SessionReport: bus_topic(app, SESSION_REPORTS),
    }
    updates = bus_topic(app, SPEAKER_UPDATES)
    stage = build_cluster(profile, ProfileRegistry(profile_table(app)))
    sessions = session_states(app, "cluster-sessions", STEP_EMBEDDINGS, stage.state_type.from_bytes, settings)
    metrics = StageMetrics("cluster")

    guard = dead_letter_guard(app, "cluster", metrics)

    async def handle(event: EventT, message: BusMessage, state: SessionState | None) -> None:
        if isinstance(message, SessionStart):
            if state is None:  # a replayed start of a running session changes nothing
                sessions.started(event, stage.start(message))
            return
        if state is None:
            metrics.error("unknown_session")
            log.warning("%s for unknown session %s", message.TYPE, message.session_id)
            return
        if isinstance(message, stage.input_type):
            outputs = stage.push(state, message)
            sessions.applied(event)
        elif isinstance(message, SessionStop):
            outputs = stage.finish(state, message)
            sessions.ended(event)
        else:
            return
        for output in outputs:
            await send(sinks.get(type(output), updates), output)

    def replay(state: SessionState, message: BusMessage, ingest_ms: int) -> None:
        if isinstance(message, stage.input_type):
            stage.push(state, message)
        elif isinstance(message, SessionStop):
            stage.finish(state, message)

    @app.agent(source)
    async def cluster(stream: faust.StreamT) -> None:
        await handle_session_messages(stream, sessions, replay, handle, guard)


def profile_table(app: faust.App) -> faust.GlobalTable:
    """The speaker registry as a table every worker holds whole: the profile topic itself is its changelog.

    The gateway writes the topic; workers only read it. With `synchronize_all_active_partitions`
    every worker keeps consuming every partition after recovery, so an enrolment or a deletion
    reaches all of them as it is written (one partition, one-record buffers: faust's advice for
    global tables shared by several instances).
    """
    table = ProfileTable(
        app,
        name="speaker-profiles",
        partitions=SPEAKER_PROFILES.partitions,
        key_type=bytes,
        value_type=bytes,
        changelog_topic=bus_topic(app, SPEAKER_PROFILES),
        is_global=True,
        synchronize_all_active_partitions=True,
        standby_buffer_size=1,  # as app.GlobalTable sets it: each change applied as it comes
        recovery_buffer_size=1,
        beacon=app.tables.beacon,
    )
    return app.tables.add(table)


class ProfileTable(faust.GlobalTable):
    """A global table whose changelog is a topic of our own naming.

    faust 0.15.3's assignor looks a global table's changelog up by the name faust would have
    given it (`<app>-<table>-changelog`), not by the topic the table reads, and fails the
    whole assignment when that topic does not exist.
    """

    def _changelog_topic_name(self) -> str:
        return self.changelog_topic.get_topic_name()
