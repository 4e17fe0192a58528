"""What one real-time session costs: CPU per process of the dataflow, per second of audio.

Starts the whole stack, streams N copies of a recording through the gateway at
real-time pace, and reads each process's CPU time from /proc before and after.
"""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.devstack.stack import Stack
from pipeline.producers.gateway_client import stream_session
from pipeline.settings import Settings
from topics.messages import SAMPLE_RATE


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; after the ')' they are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_benchmark(pcm: np.ndarray, sessions: int, settings: Settings, counts: dict[str, int] | None = None) -> str:
    """`counts`: the speaker counts each session starts with (`pipeline.gateway.protocol.speaker_counts`)."""
    audio_s = len(pcm) / SAMPLE_RATE
    with tempfile.TemporaryDirectory(prefix="speakerflow-bench-") as run_dir, Stack(Path(run_dir), settings) as stack:
        url = stack.session_url
        pids = {name: p.pid for name, p in stack.processes.items()}
        pids["kafka"] = stack.broker.pid
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()

        async def all_sessions():
            return await asyncio.gather(
                *[stream_session(url, pcm, realtime=True, **(counts or {})) for _ in range(sessions)]
            )

        asyncio.run(all_sessions())
        wall = time.monotonic() - started
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        f"{sessions} real-time session(s) of {audio_s:.1f} s audio, wall {wall:.1f} s",
        f"{'process':<20}{'cpu s':>8}{'cpu share per session':>24}",
    ]
    for name, seconds in sorted(used.items()):
        lines.append(f"{name:<20}{seconds:>8.1f}{seconds / wall / sessions:>23.1%}")
    workers = sum(s for n, s in used.items() if n.startswith("worker-"))
    lines.append(f"{'all stage workers':<20}{workers:>8.1f}{workers / wall / sessions:>23.1%}")
    lines.append(f"{'everything':<20}{sum(used.values()):>8.1f}{sum(used.values()) / wall / sessions:>23.1%}")
    return "\n".join(lines)
