"""The client side of `speakerflow capacity`: one step's live sessions, in a process of their own.

Run as ``python -m pipeline.devstack.capacity_client PLAN RESULTS``. PLAN (JSON) names the
gateway's session URL and, per session, its id, its audio (a .npy of 16 kHz int16 samples),
its speaker count and how long after the step's start it begins. The client loads everything,
prints ``ready``, waits for a line on stdin, then streams every session at once in real time
through the seed protocol and writes what it saw to RESULTS (JSON): the CPU it spent, when each frame left and
when each event came, in `time.monotonic()` seconds, which every process of the machine shares.

A process of its own, so that the CPU the clients spend does not count against the stack, and
so that a stack too slow to keep up cannot slow the clients' pacing with it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.producers.gateway_client import stream_session


@dataclass(frozen=True)
class PlannedSession:
    session_id: str
    audio: str  # path of a .npy of 16 kHz mono int16 samples
    num_speakers: int
    start_after_s: float  # from the step's start


@dataclass
class SessionTrace:
    """What one session's client saw: monotonic times of its frames and of the events it received."""

    session_id: str
    audio_samples: int
    # (samples sent so far, when that frame had been sent)
    sent: list[tuple[int, float]] = field(default_factory=list)
    # (arrival, event) of every speaker, report and error event
    events: list[tuple[float, dict]] = field(default_factory=list)
    # When the stop went out (right after the last frame) and when the report came; None if it never did.
    stopped_at: float | None = None
    reported_at: float | None = None
    failure: str | None = None

    @classmethod
    def from_json(cls, data: dict) -> SessionTrace:
        trace = cls(**data)
        trace.sent = [(int(n), float(t)) for n, t in trace.sent]
        trace.events = [(float(t), event) for t, event in trace.events]
        return trace


async def run_session(
    url: str, planned: PlannedSession, pcm: np.ndarray, began: float, report_timeout_s: float
) -> SessionTrace:
    trace = SessionTrace(planned.session_id, len(pcm))

    def on_sent(samples: int) -> None:
        trace.sent.append((samples, time.monotonic()))

    def on_event(event: dict) -> None:
        arrived = time.monotonic()
        if event.get("event") in ("speaker", "report", "error"):
            trace.events.append((arrived, event))
        if event.get("event") == "report" and trace.reported_at is None:
            trace.reported_at = arrived

    await asyncio.sleep(max(0.0, began + planned.start_after_s - time.monotonic()))
    try:
        await stream_session(
            url,
            pcm,
            num_speakers=planned.num_speakers,
            realtime=True,
            on_event=on_event,
            on_sent=on_sent,
            report_timeout_s=report_timeout_s,
            session_id=planned.session_id,
        )
    except Exception as exc:  # a failed session is a figure of the step, not the end of the benchmark
        trace.failure = f"{type(exc).__name__}: {exc}"
    if trace.sent:
        trace.stopped_at = trace.sent[-1][1]
    return trace


async def run_plan(url: str, sessions: list[tuple[PlannedSession, np.ndarray]], report_timeout_s: float):
    began = time.monotonic()
    return list(await asyncio.gather(*[run_session(url, s, pcm, began, report_timeout_s) for s, pcm in sessions]))


def main(argv: list[str]) -> int:
    plan_path, results_path = (Path(arg) for arg in argv)
    plan = json.loads(plan_path.read_text())
    audio: dict[str, np.ndarray] = {}
    sessions = []
    for fields in plan["sessions"]:
        planned = PlannedSession(**fields)
        if planned.audio not in audio:
            audio[planned.audio] = np.load(planned.audio)
        sessions.append((planned, audio[planned.audio]))
    print("ready", flush=True)
    sys.stdin.readline()
    cpu_at_go = time.process_time()
    traces = asyncio.run(run_plan(plan["url"], sessions, plan["report_timeout_s"]))
    results = {"cpu_s": time.process_time() - cpu_at_go, "sessions": [asdict(trace) for trace in traces]}
    results_path.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
