"""Enrolment: a speaker's clips in, one embedding per model out, taken only from the clips' speech.

The speech is what the fast chain's VAD (Silero, `pipeline.stages.fast.vad`) finds in each
clip, its pauses cut out. It is cut into windows of `window_s` and every window is embedded
by both chains' models, CAM++ (`pipeline.stages.accurate.track_embedding`, every frame of the
window weighted alike, as a track talking alone) and Resemblyzer (`pipeline.stages.fast.embedding`),
so a profile names speakers under either profile. A profile's embedding per model is the
normalised mean of its windows', which is what a session speaker's centroid is as well.

A clip is refused, and nothing of it kept, when it holds too little speech to trust (under
`min_speech_s`) or more than one voice: two of its speech windows (without overlap) further
apart, to CAM++, than `several_voices_distance`.

Models load on first use, so importing this module costs nothing; the caller runs `embed`
in a thread (the gateway) or in process (the evaluation).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from pipeline.config import PROFILES, Profile
from pipeline.stages.chains import EMBEDDING_MODELS
from topics.messages import SAMPLE_RATE, AudioChunk, SessionStart, SessionStop, SpeechStep
from topics.speaker_profiles import ProfileEmbedding


class Refusal(StrEnum):
    """Why a clip was not enrolled: each becomes its own 4xx in the API."""

    TOO_LITTLE_SPEECH = "too_little_speech"
    SEVERAL_VOICES = "several_voices"


class EnrolmentRefused(ValueError):
    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class EnrolmentConfig:
    # A clip with less speech than this is refused: a few words give an embedding too noisy to name anyone by.
    min_speech_s: float = 3.0
    # Speech is embedded in windows this long (the last may be down to half of it), as the workers embed tracks.
    window_s: float = 3.0
    # Two speech windows of one clip, without overlap, this far apart (CAM++ cosine distance) are two voices.
    # Measured: the 14 enrolment dev clips at most 0.34 within themselves, two of them joined 0.62 to 0.74;
    # espeak-ng's voices (one synthesizer, so alike) 0.14 to 0.23 alone, 0.40 to 0.57 two of them joined.
    several_voices_distance: float = 0.45
    # The one-voice check compares windows this long: shorter ones are too noisy to tell voices apart.
    check_window_s: float = 2.0


@dataclass(frozen=True)
class ClipEmbeddings:
    """What one clip adds to a profile."""

    speech_s: float
    sums: dict[str, np.ndarray]  # per model: the sum of the clip's window embeddings
    windows: int


def combine(
    clips: list[ClipEmbeddings], before: dict[str, ProfileEmbedding] | None = None
) -> dict[str, ProfileEmbedding]:
    """A profile's embeddings from its clips, added to those it had (each weighted by its windows)."""
    embeddings = {}
    for model in clips[0].sums:
        total = sum(c.sums[model] for c in clips)
        windows = sum(c.windows for c in clips)
        if before and model in before:
            total = total + np.asarray(before[model].vector) * before[model].windows
            windows += before[model].windows
        unit = total / np.linalg.norm(total)
        embeddings[model] = ProfileEmbedding(vector=[round(float(x), 5) for x in unit], windows=windows)
    return embeddings


class SpeakerEnroller:
    """Both chains' models, loaded once on first use and shared by every enrolment (thread-safe)."""

    def __init__(self, config: EnrolmentConfig | None = None, profiles: dict[str, Profile] = PROFILES) -> None:
        self.config = config or EnrolmentConfig()
        self.accurate = profiles["accurate"]
        self.fast = profiles["fast"]
        self._lock = threading.RLock()  # one enrolment at a time: they are rare, and the models are shared
        self._models: tuple | None = None

    def _load(self) -> tuple:
        with self._lock:
            if self._models is None:
                from pipeline.stages.accurate.track_embedding import CamppEmbedder
                from pipeline.stages.fast.embedding import ResemblyzerEmbedder
                from pipeline.stages.fast.vad import SileroVad, VadStage

                vad = VadStage(self.fast.vad, SileroVad())
                self._models = (
                    vad,
                    CamppEmbedder(self.accurate.track_embedding),
                    ResemblyzerEmbedder(self.fast.embedding),
                )
            return self._models

    def speech(self, pcm: np.ndarray) -> np.ndarray:
        """The clip's speech (int16, 16 kHz), pauses cut out, as the fast chain's VAD hears it."""
        vad, _, _ = self._load()
        with self._lock:  # the VAD's onnxruntime session is used frame by frame
            state = vad.start(SessionStart(session_id="enrolment"))
            chunk = AudioChunk(session_id="enrolment", seq=1, offset=0, producer="enrolment", pcm=pcm.tobytes())
            steps = vad.push(state, chunk, 0) + vad.finish(
                state, SessionStop(session_id="enrolment", seq=2, offset=len(pcm))
            )
        runs = [run for step in steps if isinstance(step, SpeechStep) for run in step.speech]
        if not runs:
            return np.zeros(0, np.int16)
        return np.concatenate([pcm[a:b] for a, b in runs])

    def embed(self, pcm: np.ndarray) -> ClipEmbeddings:
        """One clip (int16, 16 kHz, mono): its speech's embeddings; raises EnrolmentRefused."""
        with self._lock:
            return self._embed(pcm)

    def _embed(self, pcm: np.ndarray) -> ClipEmbeddings:
        speech = self.speech(pcm)
        speech_s = len(speech) / SAMPLE_RATE
        if speech_s < self.config.min_speech_s:
            raise EnrolmentRefused(
                Refusal.TOO_LITTLE_SPEECH,
                f"the clip holds {speech_s:.1f} s of speech; at least {self.config.min_speech_s:g} s is needed",
            )
        _, campp, resemblyzer = self._load()
        distance = self._widest_distance(campp, speech)
        if distance > self.config.several_voices_distance:
            raise EnrolmentRefused(
                Refusal.SEVERAL_VOICES,
                f"the clip holds more than one voice (two of its parts are {distance:.2f} apart, "
                f"over {self.config.several_voices_distance:g}); enrol one speaker per clip",
            )
        windows = _windows(speech, self.config.window_s)
        campp_vectors = np.stack([_embed_alone(campp, w) for w in windows])
        resemblyzer_vectors = resemblyzer.embed(windows)
        return ClipEmbeddings(
            speech_s=speech_s,
            sums={
                EMBEDDING_MODELS["accurate"]: campp_vectors.sum(axis=0),
                EMBEDDING_MODELS["fast"]: np.asarray(resemblyzer_vectors, np.float64).sum(axis=0),
            },
            windows=len(windows),
        )

    def _widest_distance(self, campp, speech: np.ndarray) -> float:
        """The largest CAM++ cosine distance between two of the speech's windows (no overlap)."""
        size = int(self.config.check_window_s * SAMPLE_RATE)
        parts = [speech[i : i + size] for i in range(0, len(speech) - size + 1, size)]
        if len(parts) < 2:
            return 0.0
        vectors = np.stack([_embed_alone(campp, p) for p in parts])
        return float(1.0 - (vectors @ vectors.T).min())


def _windows(speech: np.ndarray, window_s: float) -> list[np.ndarray]:
    """Windows of `window_s` with half a window's hop; the last reaches the end."""
    size = int(window_s * SAMPLE_RATE)
    if len(speech) <= size:
        return [speech]
    hop = size // 2
    starts = list(range(0, len(speech) - size + 1, hop))
    if starts[-1] + size < len(speech):
        starts.append(len(speech) - size)
    return [speech[s : s + size] for s in starts]


def _embed_alone(campp, audio: np.ndarray) -> np.ndarray:
    """CAM++ embedding of audio in which one voice talks throughout."""
    times = np.array([0.0, len(audio) / SAMPLE_RATE])
    return np.asarray(campp.embed(audio, np.ones((2, 1), np.float32), times)[0], np.float64)
