"""A recording cut into the bus's audio chunks, and real-time pacing of them.

Every producer of recorded audio (replay, the gateway client) and the in-process
chain cut audio here, so a stage sees the same records whichever way the audio
reaches it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from topics.messages import SAMPLE_RATE, AudioChunk, SessionStart, SessionStop

# 0.2 s of audio per record.
CHUNK_SAMPLES = SAMPLE_RATE // 5


class PcmFrame(NamedTuple):
    offset: int  # samples since the recording's first
    pcm: bytes  # s16le, unless pcm_frames was given another dtype


def pcm_frames(pcm: np.ndarray, chunk_samples: int = CHUNK_SAMPLES, dtype: str = "<i2") -> Iterator[PcmFrame]:
    """PCM as `dtype` in consecutive frames of `chunk_samples` (the last one may be shorter)."""
    for offset in range(0, len(pcm), chunk_samples):
        yield PcmFrame(offset, pcm[offset : offset + chunk_samples].astype(dtype).tobytes())


def session_records(
    pcm: np.ndarray, start: SessionStart, chunk_samples: int = CHUNK_SAMPLES
) -> Iterator[AudioChunk | SessionStop]:
    """What a producer sends after `start` for a recording: its chunks in order, then the stop.

    Sequence numbers count on from the start's; the producer is the start's.
    """
    seq = start.seq
    for frame in pcm_frames(pcm, chunk_samples):
        seq += 1
        yield AudioChunk(
            session_id=start.session_id, seq=seq, offset=frame.offset, producer=start.producer, pcm=frame.pcm
        )
    yield SessionStop(session_id=start.session_id, seq=seq + 1, offset=len(pcm), producer=start.producer)


class Pacer:
    """Holds audio back until it would have been spoken, counting from the pacer's creation; idle unless realtime.

    At `speed` 2 a second of audio is due every half second.
    """

    def __init__(self, realtime: bool, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.realtime = realtime
        self.speed = speed
        self.started = time.monotonic()

    async def wait(self, offset: int) -> None:
        """Return once the sample at `offset` is due."""
        if self.realtime:
            await asyncio.sleep(max(0.0, self.started + offset / SAMPLE_RATE / self.speed - time.monotonic()))
