"""Read any WAV/FLAC (any rate, any channel count) as 16 kHz mono s16le, or as mono float at another rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from topics.messages import SAMPLE_RATE


class AudioFileError(ValueError):
    pass


def load_pcm16(path: Path) -> np.ndarray:
    return float_to_pcm16(load_mono(path, SAMPLE_RATE))


def load_mono(path: Path, sample_rate: int) -> np.ndarray:
    """The recording as float32 mono at `sample_rate`."""
    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise AudioFileError(f"cannot read {path}: {exc}") from exc
    mono = audio.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate)
    return mono


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
