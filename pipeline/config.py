"""Every tunable threshold, grouped per stage, with one profile object per chain.

A profile is a configuration choice, not a fork of the code: the worker reads
`SPEAKERFLOW_PROFILE` (default ``fast``) and builds its stages from the profile's
configs. Defaults are documented where they are declared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from topics.messages import SAMPLE_RATE


@dataclass(frozen=True)
class VadConfig:
    # Silero's 16 kHz model takes 512-sample frames (32 ms).
    frame_samples: int = 512
    # Hysteresis: speech starts at `threshold` and lasts until the probability falls below `release`.
    threshold: float = 0.5
    release: float = 0.35
    # Pauses shorter than this stay inside the speech (as references count them): a talker's
    # breath between two sentences is still their talking time.
    min_silence_s: float = 0.2
    # Labels are emitted per step; a step's window reaches `context_s` either side of it.
    step_s: float = 0.5
    context_s: float = 0.5
    # Silence at least this long separates speech runs; windows never cross it, so a
    # speaker change after a pause does not leak the previous voice into the window.
    run_gap_s: float = 0.25
    # Voiced audio needed in a window before it is worth embedding.
    min_window_voiced_s: float = 0.4

    def samples(self, seconds: float) -> int:
        return int(round(seconds * SAMPLE_RATE))


@dataclass(frozen=True)
class EmbeddingConfig:
    # Resemblyzer normalises input loudness to this level before its mel front end.
    target_dbfs: float = -30.0
    # Windows from different sessions are batched into one forward pass, waiting at most this long.
    max_batch: int = 32
    max_wait_s: float = 0.05
    device: str | None = None  # None: CUDA when present, else CPU
    # On CPU, torch's intra-op threads cost far more than they save on batches this small
    # (measured: 85 ms vs 21 ms of CPU per window with 2 threads vs 1); scale with processes instead.
    cpu_threads: int = 1


@dataclass(frozen=True)
class ClusteringConfig:
    # Cosine similarity to the nearest centroid below which a new speaker opens (while under the limit).
    new_speaker_similarity: float = 0.70
    # Once the speaker limit is reached, voices less similar than this to every speaker are ignored.
    ignore_similarity: float = 0.45
    # Only confident assignments move a centroid, so one odd window cannot drag a speaker away.
    update_similarity: float = 0.75
    # A turn survives silences up to this long; a longer one closes it.
    max_turn_gap_s: float = 1.0


@dataclass(frozen=True)
class Profile:
    name: str
    vad: VadConfig = field(default_factory=VadConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)


PROFILES: dict[str, Profile] = {"fast": Profile(name="fast")}


def load_profile(name: str | None = None) -> Profile:
    name = name or os.environ.get("SPEAKERFLOW_PROFILE", "fast")
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
