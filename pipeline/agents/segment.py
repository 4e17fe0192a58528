"""Segment agent: speakerflow.audio -> speakerflow.speech-steps.

Silero VAD steps in the fast profile, segmentation-3.0 windows in the accurate one
(`pipeline.stages.chains.build_segment`). Records are taken in batches, so the chunks of
many sessions that arrive together are pushed together and their windows segmented in
one forward pass (`SegmentStage.push_many`).
"""

from __future__ import annotations

import asyncio
import logging

import faust
from faust.types import EventT

from pipeline.agents.app import bus_topic, dead_letter_guard, decode_event, ingest_ms, send
from pipeline.agents.session_states import SkippedRecord, session_states
from pipeline.config import Profile
from pipeline.metrics import StageMetrics
from pipeline.settings import Settings
from pipeline.stages.base import SessionState
from pipeline.stages.chains import build_segment
from topics import AUDIO, SPEECH_STEPS, AudioChunk, BusMessage, SessionStart, SessionStop

log = logging.getLogger(__name__)

# A batch is what the consumer has at hand, up to this many records, waiting at most this long for more:
# at real-time pace a session sends a chunk every 0.2 s, so a short wait gathers most sessions' chunks.
MAX_BATCH = 64
MAX_WAIT_S = 0.05


def register(app: faust.App, profile: Profile, settings: Settings) -> None:
    source, sink = bus_topic(app, AUDIO), bus_topic(app, SPEECH_STEPS)
    stage = build_segment(profile)
    sessions = session_states(app, "segment-sessions", AUDIO, stage.state_type.from_bytes, settings)
    metrics = StageMetrics("segment")
    metrics.model_info(stage.model_name, stage.device)
    guard = dead_letter_guard(app, "segment", metrics)

    def replay(state: SessionState, message: BusMessage, ingest: int) -> None:
        if isinstance(message, AudioChunk):
            stage.push(state, message, ingest)
        elif isinstance(message, SessionStop):
            stage.finish(state, message)

    async def push_chunks(pending: list[tuple[EventT, AudioChunk, SessionState]]) -> None:
        """The pending chunks pushed as one batch, then their outputs sent in the order the chunks came."""
        with metrics.handling(*[chunk for _, chunk, _ in pending]):
            results = await asyncio.to_thread(
                stage.push_many, [(state, chunk, ingest_ms(event)) for event, chunk, state in pending]
            )
        for (event, _, _), result in zip(pending, results):
            if isinstance(result, Exception):
                await guard.failed(event, result)
                continue
            sessions.applied(event)
            for output in result:
                await send(sink, output)

    async def handle(event: EventT, message: BusMessage, state: SessionState | None) -> None:
        if isinstance(message, SessionStart):
            if state is None:  # a replayed start of a running session changes nothing
                sessions.started(event, stage.start(message))
                await send(sink, message)
        elif state is None:
            metrics.error("unknown_session")
            log.warning("%s for unknown session %s (not started, or already stopped)", message.TYPE, message.session_id)
        elif isinstance(message, SessionStop):
            outputs = stage.finish(state, message)
            for output in outputs:
                await send(sink, output)
            if outputs:  # the stop was applied (it is the last output): the session ends here
                sessions.ended(event)

    @app.agent(source)
    async def segment(stream: faust.StreamT) -> None:
        async for taken in stream.take_events(MAX_BATCH, within=MAX_WAIT_S):
            events = await sessions.with_skipped(taken)
            pending: list[tuple[EventT, AudioChunk, SessionState]] = []
            for event in events:
                message = decode_event(event, metrics)
                if message is None:
                    continue
                async with guard.record(event):
                    state = await sessions.get(event, replay)
                    if isinstance(message, AudioChunk) and state is not None:
                        pending.append((event, message, state))
                        continue
                    # A start or stop goes after the chunks before it, so a session's records apply in order.
                    if pending:
                        await push_chunks(pending)
                        pending = []
                    with metrics.handling(message):
                        await handle(event, message, state)
            if pending:
                await push_chunks(pending)
            for event in events:
                if isinstance(event, SkippedRecord):
                    event.ack()  # the events taken are acknowledged by take_events itself
