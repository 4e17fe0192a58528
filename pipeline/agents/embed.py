"""Embedding agent: speakerflow.speech-steps -> speakerflow.step-embeddings.

Stateless, so any number of embedding workers share the load. Steps from many
sessions are batched into one forward pass within a short bounded wait.
"""

from __future__ import annotations

import asyncio

import faust

from pipeline.agents.app import bus_topic, decode_event, send
from pipeline.config import Profile
from pipeline.metrics import StageMetrics
from pipeline.stages.chains import build_embed
from topics import SPEECH_STEPS, STEP_EMBEDDINGS


def register(app: faust.App, profile: Profile) -> None:
    source, sink = bus_topic(app, SPEECH_STEPS), bus_topic(app, STEP_EMBEDDINGS)
    stage = build_embed(profile)
    metrics = StageMetrics("embed")
    metrics.model_info(stage.model_name, stage.device)
    work = stage.input_type

    @app.agent(source)
    async def embed(stream: faust.StreamT) -> None:
        async for events in stream.take_events(stage.max_batch, within=stage.max_wait_s):
            # Faust stamps time_in (time.monotonic) when a record leaves the consumer.
            with metrics.batch([event.message.time_in for event in events]):
                messages = [m for m in (decode_event(e, metrics) for e in events) if m is not None]
                metrics.count(messages)
                batch = [m for m in messages if isinstance(m, work)]
                # The forward pass runs off the event loop so the consumer keeps heartbeating.
                embedded = iter(await asyncio.to_thread(stage.process, batch))
                for message in messages:
                    await send(sink, next(embedded) if isinstance(message, work) else message)
