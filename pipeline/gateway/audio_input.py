"""Audio as clients capture it, turned into what the bus carries: 16 kHz s16le mono.

A client names its rate and encoding in the start action (:class:`AudioFormat`); one
:class:`AudioConverter` per session turns its frames, in order, into bus PCM. Rates other
than 16 kHz go through one soxr streaming resampler per session, whose state spans the
frames: the output is the same, sample for sample, as resampling the whole recording at
once, and after :meth:`AudioConverter.flush` there are exactly as many 16 kHz samples as
the client's audio lasts (rounded to the nearest sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import soxr

from topics.messages import SAMPLE_RATE

__all__ = [
    "BUS_FORMAT",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "AudioConverter",
    "AudioFormat",
    "Encoding",
    "NonFiniteSamples",
]

# The rates a client may send at: telephone audio up to what browsers and phones capture.
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000

# s16 full scale, both ways, so that s16 -> float -> s16 is exact; float 1.0 becomes 32767.
_S16_SCALE = 32768.0
_FLOAT_CEILING = 1.0 - 1.0 / _S16_SCALE


class Encoding(StrEnum):
    """How a client's binary frames hold their samples (mono, little-endian)."""

    PCM_S16LE = "pcm_s16le"
    PCM_F32LE = "pcm_f32le"  # full scale is [-1, 1]; beyond it, samples are clipped

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is Encoding.PCM_S16LE else 4

    @property
    def dtype(self) -> str:
        return "<i2" if self is Encoding.PCM_S16LE else "<f4"


@dataclass(frozen=True)
class AudioFormat:
    """What a client's frames are: a sample rate (MIN_SAMPLE_RATE to MAX_SAMPLE_RATE) and an encoding."""

    sample_rate: int = SAMPLE_RATE
    encoding: Encoding = Encoding.PCM_S16LE

    def __str__(self) -> str:
        return f"{self.sample_rate} Hz {self.encoding}"

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.encoding.bytes_per_sample

    def frame_limit(self, bus_frame_bytes: int) -> int:
        """The largest frame of this format that holds as much audio as `bus_frame_bytes` of bus PCM.

        A limit set in bus bytes (SPEAKERFLOW_MAX_FRAME_BYTES) thus bounds the audio per frame, and
        with it the record the frame becomes, whatever format the client sends.
        """
        return bus_frame_bytes * self.bytes_per_second // BUS_FORMAT.bytes_per_second


# What the bus carries, and what a client that names no format sends.
BUS_FORMAT = AudioFormat()


class NonFiniteSamples(ValueError):
    """A float frame with NaN or infinite samples: one would spoil the resampler's state for the rest of the session."""


class AudioConverter:
    """Turns one session's frames, in the order they came, into 16 kHz s16le mono.

    Frames must hold whole samples (the caller checks their length). Bus-format frames pass
    through untouched; 16 kHz float is only re-encoded; any other rate is resampled with
    float32 math by a resampler made once per session.
    """

    def __init__(self, audio_format: AudioFormat = BUS_FORMAT) -> None:
        self.format = audio_format
        self._resampler = (
            soxr.ResampleStream(audio_format.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if audio_format.sample_rate != SAMPLE_RATE
            else None
        )

    def convert(self, frame: bytes) -> bytes:
        """The bus PCM for one more frame: possibly none yet, as the resampler holds back its filter's delay.

        Raises NonFiniteSamples, leaving the resampler as it was, for a float frame with NaN or infinity.
        """
        if self.format == BUS_FORMAT:
            return frame
        samples = np.frombuffer(frame, self.format.encoding.dtype)
        if self.format.encoding is Encoding.PCM_S16LE:
            samples = samples.astype(np.float32) * np.float32(1 / _S16_SCALE)
        elif not np.isfinite(samples).all():
            raise NonFiniteSamples(f"a {self.format.encoding} frame with NaN or infinite samples")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return _to_s16le(samples)

    def flush(self) -> bytes:
        """The bus PCM the resampler still holds, at the end of the session's audio.

        The resampler then starts afresh, so a second flush gives nothing and audio after
        it (a stop that could not be published) is still converted.
        """
        if self._resampler is None:
            return b""
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resampler.clear()
        return _to_s16le(tail)


def _to_s16le(samples: np.ndarray) -> bytes:
    scaled = np.clip(samples, -1.0, _FLOAT_CEILING) * np.float32(_S16_SCALE)
    return np.rint(scaled, out=scaled).astype("<i2").tobytes()
