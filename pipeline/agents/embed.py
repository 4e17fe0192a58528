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
from pipeline.stages.accurate.track_embedding import CamppEmbedder, TrackEmbeddingStage
from pipeline.stages.fast.embedding import EmbeddingStage, ResemblyzerEmbedder
from topics import SPEECH_STEPS, STEP_EMBEDDINGS, SegmentedWindow, SpeechStep


def register(app: faust.App, profile: Profile) -> None:
    source, sink = bus_topic(app, SPEECH_STEPS), bus_topic(app, STEP_EMBEDDINGS)
    metrics = StageMetrics("embed")
    if profile.overlap_aware:
        config = profile.track_embedding
        campp = CamppEmbedder(config)
        stage: EmbeddingStage | TrackEmbeddingStage = TrackEmbeddingStage(config, campp)
        work: type = SegmentedWindow
        metrics.model_info("campplus", campp.device.type)
    else:
        config = profile.embedding
        resemblyzer = ResemblyzerEmbedder(config)
        stage, work = EmbeddingStage(resemblyzer), SpeechStep
        metrics.model_info("resemblyzer-ge2e", resemblyzer.device.type)

    @app.agent(source)
    async def embed(stream: faust.StreamT) -> None:
        async for events in stream.take_events(config.max_batch, within=config.max_wait_s):
            with metrics.batch(events):
                messages = [m for m in (decode_event(e, metrics) for e in events) if m is not None]
                metrics.count(messages)
                steps = [m for m in messages if isinstance(m, work)]
                # The forward pass runs off the event loop so the consumer keeps heartbeating.
                embedded = iter(await asyncio.to_thread(stage.process, steps))
                for message in messages:
                    await send(sink, next(embedded) if isinstance(message, work) else message)
