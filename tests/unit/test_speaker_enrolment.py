"""Enrolment without Kafka: clips decoded from every format, refused for too little speech or several voices."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fastapi import HTTPException

from pipeline.devstack.synthetic import VOICES, speak
from pipeline.gateway.uploads import decode_clip
from pipeline.producers.audio_file import float_to_pcm16, load_pcm16
from pipeline.stages.chains import EMBEDDING_MODELS
from pipeline.stages.speaker_enrolment import EnrolmentRefused, Refusal, SpeakerEnroller, combine

ENROLLMENT = Path(__file__).parents[2] / ".." / "shared" / "data" / "enrollment" / "enroll"
TEXT = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch and drinks his coffee slowly."
)


@pytest.fixture(scope="module")
def enroller() -> SpeakerEnroller:
    return SpeakerEnroller()


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    return speak(TEXT, VOICES[0])


def encoded(audio: np.ndarray, rate: int, fmt: str, channels: int = 1) -> bytes:
    out = io.BytesIO()
    frames = np.repeat(audio[:, None], channels, axis=1) if channels > 1 else audio
    soundfile.write(out, frames, rate, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_every_format_at_any_rate_and_channel_count_decodes_to_16k_mono(spoken, fmt):
    import soxr

    at_44k = soxr.resample(spoken, 16_000, 44_100)
    pcm = decode_clip(encoded(at_44k, 44_100, fmt, channels=2), f"clip.{fmt.lower()}")
    assert pcm.dtype == np.int16
    assert abs(len(pcm) - len(spoken)) < 16_000 * 0.1  # codec padding at most


def test_bytes_that_are_not_audio_are_refused_as_unsupported(spoken):
    with pytest.raises(HTTPException) as refused:
        decode_clip(b"this is a text file, not a recording" * 100, "notes.txt")
    assert refused.value.status_code == 415
    assert refused.value.detail["code"] == "unsupported_format"


def test_one_voice_gives_one_embedding_per_model_from_its_speech(enroller, spoken):
    clip = enroller.embed(float_to_pcm16(spoken))
    assert set(clip.sums) == set(EMBEDDING_MODELS.values())
    assert 4.0 < clip.speech_s <= len(spoken) / 16_000
    embeddings = combine([clip])
    for model, embedding in embeddings.items():
        assert np.linalg.norm(embedding.vector) == pytest.approx(1.0, abs=1e-3), model
        assert embedding.windows == clip.windows


def test_silence_around_the_speech_does_not_count_as_speech(enroller, spoken):
    padded = np.concatenate([np.zeros(16_000 * 10, np.float32), spoken[: 16_000 * 2], np.zeros(16_000 * 10)])
    with pytest.raises(EnrolmentRefused) as refused:
        enroller.embed(float_to_pcm16(padded))
    assert refused.value.reason is Refusal.TOO_LITTLE_SPEECH


def test_two_synthetic_voices_in_one_clip_are_refused(enroller):
    two = np.concatenate([speak(TEXT[:60], VOICES[0]), speak(TEXT[60:], VOICES[2])])
    with pytest.raises(EnrolmentRefused) as refused:
        enroller.embed(float_to_pcm16(two))
    assert refused.value.reason is Refusal.SEVERAL_VOICES


def test_two_readers_in_one_clip_are_refused_and_each_alone_is_taken(enroller):
    first, second = load_pcm16(ENROLLMENT / "LS1116.flac"), load_pcm16(ENROLLMENT / "LS5390.flac")
    for alone in (first, second):
        enroller.embed(alone)
    with pytest.raises(EnrolmentRefused) as refused:
        enroller.embed(np.concatenate([first, second]))
    assert refused.value.reason is Refusal.SEVERAL_VOICES


def test_clips_added_to_a_profile_weigh_by_their_windows(enroller, spoken):
    first = enroller.embed(float_to_pcm16(spoken))
    again = combine([first], before=combine([first]))
    for model, embedding in again.items():
        assert embedding.windows == 2 * first.windows
        assert np.allclose(embedding.vector, combine([first])[model].vector, atol=1e-4)


def test_the_clients_multipart_upload_is_read_back_whole_in_memory(tmp_path):
    import asyncio

    from pipeline.gateway.uploads import read_upload
    from pipeline.producers.gateway_http import multipart
    from pipeline.settings import Settings

    clips = []
    for index, payload in enumerate([bytes(range(256)) * 40, b"\r\n--\r\n\r\n" * 50]):
        clips.append(tmp_path / f"clip{index}.wav")
        clips[-1].write_bytes(payload)
    body, content_type = multipart({"name": "Ada Lovelace"}, [("clips", c) for c in clips])

    class Upload:  # what read_upload uses of a request
        headers = {"content-type": content_type}

        async def stream(self):
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000]

    upload = asyncio.run(read_upload(Upload(), 10, Settings().enrol_max_clip_bytes))
    assert upload.name == "Ada Lovelace"
    assert upload.clips == [(c.name, c.read_bytes()) for c in clips]
    with pytest.raises(HTTPException) as refused:
        asyncio.run(read_upload(Upload(), 10, 5000))
    assert refused.value.status_code == 413


def test_the_enrolment_endpoints_are_on_the_openapi_page():
    from pipeline.gateway.app import create_app
    from pipeline.settings import Settings

    paths = create_app(Settings()).openapi()["paths"]
    assert set(paths["/v1/speakers"]) == {"get", "post"}
    assert set(paths["/v1/speakers/{profile_id}"]) == {"get", "delete"}
    for path in ("/v1/speakers", "/v1/speakers/{profile_id}/clips"):
        form = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["properties"]["clips"]["items"]["format"] == "binary"
