"""The gateway's audio conversion: client frames at any rate and encoding become 16 kHz s16le, with no seams."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import soxr

from pipeline.gateway.audio_input import BUS_FORMAT, AudioConverter, AudioFormat, Encoding, NonFiniteSamples

F32 = Encoding.PCM_F32LE
S16 = Encoding.PCM_S16LE
# One step of s16, as float: rounding to s16 moves a sample by half of it at most.
S16_STEP = 1 / 32768


def sine(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.6 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def uneven_frames(samples: np.ndarray, encoding: Encoding, seed: int = 0) -> list[bytes]:
    """The samples as a client's frames of 1 to 3000 samples each, at random."""
    rng = np.random.default_rng(seed)
    wire = samples.astype(encoding.dtype)
    frames, start = [], 0
    while start < len(wire):
        end = start + int(rng.integers(1, 3000))
        frames.append(wire[start:end].tobytes())
        start = end
    return frames


def converted(converter: AudioConverter, frames: list[bytes]) -> np.ndarray:
    """Every frame converted, then the flush, as floats."""
    pcm = b"".join(converter.convert(frame) for frame in frames) + converter.flush()
    return np.frombuffer(pcm, "<i2") / 32768


def test_a_48k_float_sine_in_uneven_frames_is_the_whole_signal_resampled_at_once():
    signal = sine(48000, 3.0)
    once = soxr.resample(signal, 48000, 16000, quality="HQ")
    streamed = converted(AudioConverter(AudioFormat(48000, F32)), uneven_frames(signal, F32))
    assert len(streamed) == len(once) == 16000 * 3
    # No seam anywhere: every sample within rounding of the one-shot resampling.
    assert np.abs(streamed - once).max() < S16_STEP


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000])
@pytest.mark.parametrize("samples", [1, 7, 2999, 44100 * 2 + 13])
def test_after_the_flush_there_are_as_many_16k_samples_as_the_audio_lasts(rate, samples):
    signal = sine(rate, samples / rate)
    out = converted(AudioConverter(AudioFormat(rate, F32)), uneven_frames(signal, F32, seed=samples))
    # As if the client had sent 16 kHz: the duration in 16 kHz samples, to the nearest.
    assert len(out) == int(Fraction(samples * 16000, rate) + Fraction(1, 2))


def test_16k_s16le_passes_through_bit_exact(pcm):
    converter = AudioConverter(BUS_FORMAT)
    frames = [pcm(160, seed=1), pcm(1, seed=2), pcm(3200, seed=3)]
    assert [converter.convert(frame) for frame in frames] == frames
    assert converter.flush() == b""


def test_16k_float_is_only_re_encoded():
    signal = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, 1 / 32768, 0.49 / 32768], np.float32)
    pcm = AudioConverter(AudioFormat(16000, F32)).convert(signal.astype("<f4").tobytes())
    # Rounded to the nearest step; full scale and beyond clip to the s16 range.
    assert np.frombuffer(pcm, "<i2").tolist() == [0, 16384, -16384, 32767, -32768, 32767, -32768, 1, 0]


def test_8k_s16le_is_resampled_as_floats():
    signal = sine(8000, 2.0, hz=300)
    wire = np.rint(signal * 32768).astype(np.int16)
    once = soxr.resample(wire / 32768, 8000, 16000, quality="HQ")
    streamed = converted(AudioConverter(AudioFormat(8000, S16)), uneven_frames(wire, S16))
    assert len(streamed) == len(once) == 32000
    assert np.abs(streamed - once).max() < S16_STEP


def all_bytes(converter: AudioConverter, frames: list[bytes]) -> bytes:
    return b"".join(converter.convert(frame) for frame in frames) + converter.flush()


def test_a_non_finite_frame_is_refused_and_leaves_the_stream_as_it_was():
    frames = uneven_frames(sine(48000, 1.0), F32)
    converter = AudioConverter(AudioFormat(48000, F32))
    pcm = b"".join(converter.convert(frame) for frame in frames[:3])
    for bad in ([0.1, np.nan, 0.2], [np.inf], [-np.inf]):
        with pytest.raises(NonFiniteSamples):
            converter.convert(np.array(bad, "<f4").tobytes())
    pcm += all_bytes(converter, frames[3:])
    assert pcm == all_bytes(AudioConverter(AudioFormat(48000, F32)), frames)


def test_after_a_flush_the_resampler_starts_afresh():
    frames = uneven_frames(sine(44100, 0.5), F32)
    converter = AudioConverter(AudioFormat(44100, F32))
    first = all_bytes(converter, frames)
    assert converter.flush() == b""  # nothing is held twice
    # Audio after the flush (a stop that could not be published) is converted as a new stream.
    assert all_bytes(converter, frames) == first


def test_a_frame_limit_bounds_the_audio_whatever_the_format():
    # SPEAKERFLOW_MAX_FRAME_BYTES counts bus bytes: 64 KiB is 2.048 s of 16 kHz s16le in every format.
    assert BUS_FORMAT.frame_limit(65536) == 65536
    assert AudioFormat(48000, F32).frame_limit(65536) == 65536 * 6
    assert AudioFormat(8000, S16).frame_limit(65536) == 32768
    assert AudioFormat(44100, F32).frame_limit(1000) == 5512  # floored: never more audio than the limit
    assert (S16.bytes_per_sample, F32.bytes_per_sample, str(AudioFormat(48000, F32))) == (2, 4, "48000 Hz pcm_f32le")
