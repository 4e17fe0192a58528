"""Embedding agent: speakerflow.speech-steps -> speakerflow.step-embeddings.

Stateless, so any number of embedding workers share the load. Steps from many
sessions are batched into one forward pass within a short bounded wait.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from pipeline.agents.app import bus_topic, dead_letter_guard, decode_event, send
from pipeline.config import Profile
from pipeline.metrics import StageMetrics
from pipeline.settings import Settings
from pipeline.stages.chains import build_embed
from topics import SPEECH_STEPS, STEP_EMBEDDINGS, BusMessage

log = logging.getLogger(__name__)


def register(app: faust.App, profile: Profile, settings: Settings) -> None:
    source, sink = bus_topic(app, SPEECH_STEPS), bus_topic(app, STEP_EMBEDDINGS)
    stage = build_embed(profile)
    metrics = StageMetrics("embed")
    metrics.model_info(stage.model_name, stage.device)
    work = stage.input_type
    guard = dead_letter_guard(app, "embed", metrics)

    async def embedded(messages: list[BusMessage]) -> list[BusMessage]:
        """The messages in order, each work item replaced by its embedded output."""
        # The forward pass runs off the event loop so the consumer keeps heartbeating.
        outputs = iter(await asyncio.to_thread(stage.process, [m for m in messages if isinstance(m, work)]))
        return [next(outputs) if isinstance(m, work) else m for m in messages]

    @app.agent(source)
    async def embed(stream: faust.StreamT) -> None:
        async for events in stream.take_events(stage.max_batch, within=stage.max_wait_s):
            decoded = [(e, m) for e, m in ((e, decode_event(e, metrics)) for e in events) if m is not None]
            metrics.count(m for _, m in decoded)
            try:
                # Faust stamps time_in (time.monotonic) when a record leaves the consumer.
                with metrics.batch([event.message.time_in for event in events]):
                    outputs = await embedded([m for _, m in decoded])
            except Exception:
                # The batch failed as a whole (counted by metrics.batch): each record on its own, so only
                # the ones that fail alone are set aside and the batch's other sessions lose nothing.
                log.warning("embedding batch of %d records failed; retrying them one by one", len(decoded))
                for event, message in decoded:
                    async with guard.record(event):
                        for output in await embedded([message]):
                            await send(sink, output)
            else:
                for output in outputs:
                    await send(sink, output)
