"""Chunking and real-time pacing shared by every producer of recorded audio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np

from topics.messages import SAMPLE_RATE


async def paced_chunks(pcm: np.ndarray, chunk_ms: int, realtime: bool) -> AsyncIterator[tuple[int, np.ndarray]]:
    """Yield (offset, chunk); with realtime, no chunk leaves before its audio would have been spoken."""
    chunk = SAMPLE_RATE * chunk_ms // 1000
    started = time.monotonic()
    for offset in range(0, len(pcm), chunk):
        if realtime:
            due = started + offset / SAMPLE_RATE
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        yield offset, pcm[offset : offset + chunk]
