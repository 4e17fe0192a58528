"""Compute per second of audio of each stage, one stream, one CPU core, no broker.

The stages run in one process exactly as the workers run them (the profile's
models, one torch thread), over a recording fed in 0.2 s chunks; each stage's
CPU time is summed separately. This is the figure the speed targets are stated
in: seconds of compute per second of audio for one stream on one core.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Profile
from pipeline.evaluation.chain import InProcessChain
from pipeline.producers.chunking import CHUNK_SAMPLES
from topics.messages import SAMPLE_RATE, SessionStart


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_stage_benchmark(
    pcm: np.ndarray, profile: Profile, sessions: int = 1, chunk_samples: int = CHUNK_SAMPLES
) -> str:
    """CPU per audio second of each stage, for `sessions` streams of the recording at once, batched as the workers batch.

    Each stream starts at another point of the recording (rotated), so the streams' windows differ.
    """
    chain = InProcessChain(profile)
    shift = len(pcm) // sessions
    pcms = [np.roll(pcm, -i * shift) for i in range(sessions)]
    starts = [SessionStart(session_id=f"benchmark-{i}") for i in range(sessions)]
    if sessions == 1:
        spent = chain.run(pcms[0], starts[0], chunk_samples).cpu_s
    else:
        spent = chain.run_concurrent(pcms, starts, chunk_samples)[1]
    audio_s = len(pcm) / SAMPLE_RATE
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}; torch threads {torch.get_num_threads()}, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}",
        f"profile {profile.name}: {sessions} stream(s) of {audio_s:.1f} s audio at once, stages in one process"
        + (", batched across streams" if sessions > 1 else ""),
        f"{'stage':<10}{'cpu s':>8}{'s per audio s per stream':>26}",
    ]
    for stage, seconds in spent.items():
        lines.append(f"{stage:<10}{seconds:>8.2f}{seconds / audio_s / sessions:>26.4f}")
    total = sum(spent.values())
    lines.append(f"{'total':<10}{total:>8.2f}{total / audio_s / sessions:>26.4f}")
    return "\n".join(lines)
