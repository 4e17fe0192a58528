"""Replay a recording onto the bus as one session, optionally at real-time pace."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
from tqdm import tqdm

from pipeline.bus import PLAINTEXT, new_producer, publish, tail_consumer
from pipeline.gateway.protocol import speaker_counts
from pipeline.producers.chunking import CHUNK_SAMPLES, Pacer, session_records
from pipeline.settings import KafkaSecurity
from topics import AUDIO, SESSION_REPORTS, AudioChunk, SessionReport, SessionStart, decode, encode
from topics.messages import SAMPLE_RATE


async def replay(
    pcm: np.ndarray,
    bootstrap: str,
    session_id: str | None = None,
    num_speakers: int | None = None,
    realtime: bool = False,
    chunk_samples: int = CHUNK_SAMPLES,
    wait_report_s: float | None = 120.0,
    progress: bool = True,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> SessionReport | None:
    """Publish start, the audio and stop; return the session's report unless wait_report_s is None.

    The speaker counts are read as the gateway reads a client's (`speaker_counts`); None: not given.
    """
    session_id = session_id or uuid.uuid4().hex
    producer_id = f"replay-{uuid.uuid4().hex[:8]}"
    # Listen before the first record leaves, so the report cannot slip past.
    reports = await tail_consumer(bootstrap, [SESSION_REPORTS], security) if wait_report_s is not None else None
    producer = new_producer(bootstrap, security)
    await producer.start()
    try:
        counts = speaker_counts(num_speakers, min_speakers, max_speakers)
        start = SessionStart(session_id=session_id, producer=producer_id, **counts)
        await publish(producer, AUDIO, start)
        bar = tqdm(total=round(len(pcm) / SAMPLE_RATE, 1), unit="s", desc=session_id[:12], disable=not progress)
        pacer = Pacer(realtime)
        for record in session_records(pcm, start, chunk_samples):
            if isinstance(record, AudioChunk):
                await pacer.wait(record.offset)
                # Chunks go out without waiting for each ack: the idempotent producer keeps them in order.
                key, value, headers = encode(record)
                await producer.send(AUDIO.name, value=value, key=key, headers=headers)
                bar.update(round(record.num_samples / SAMPLE_RATE, 3))
            else:
                bar.close()
                await publish(producer, AUDIO, record)
        if reports is None:
            return None
        return await asyncio.wait_for(_report_for(reports, session_id), wait_report_s)
    finally:
        await producer.stop()
        if reports is not None:
            await reports.stop()


async def _report_for(consumer, session_id: str) -> SessionReport:
    async for record in consumer:
        if record.key == session_id.encode():
            message = decode(record.key, record.value, record.headers)
            if isinstance(message, SessionReport):
                return message
    raise RuntimeError("report consumer stopped")
