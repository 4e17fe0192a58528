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
from pipeline.stages.embedding import EmbeddingStage, ResemblyzerEmbedder
from topics import SPEECH_STEPS, STEP_EMBEDDINGS, SpeechStep


def register(app: faust.App, profile: Profile) -> None:
    source, sink = bus_topic(app, SPEECH_STEPS), bus_topic(app, STEP_EMBEDDINGS)
    embedder = ResemblyzerEmbedder(profile.embedding)
    stage = EmbeddingStage(embedder)
    metrics = StageMetrics("embed")
    metrics.model_info("resemblyzer-ge2e", embedder.device.type)

    @app.agent(source)
    async def embed(stream: faust.StreamT) -> None:
        config = profile.embedding
        async for events in stream.take_events(config.max_batch, within=config.max_wait_s):
            with metrics.batch(events):
                messages = [m for m in (decode_event(e, metrics) for e in events) if m is not None]
                metrics.count(messages)
                steps = [m for m in messages if isinstance(m, SpeechStep)]
                # The forward pass runs off the event loop so the consumer keeps heartbeating.
                embedded = iter(await asyncio.to_thread(stage.process, steps))
                for message in messages:
                    await send(sink, next(embedded) if isinstance(message, SpeechStep) else message)
