"""Diarization error of what a running stack serves, scored exactly as the in-process harness scores.

Every labelled recording under a folder (`find_recordings`) is streamed through the stack's
gateway as one live session, exactly as a client of the seed protocol streams it
(`stream_session`): several sessions at once, in real time, at a given speed or as fast as
possible. What the clients were served is scored with the harness's own `Scoreboard`:

- the live labels are the spans of each session's `speaker.update` records, read from the
  updates topic: the gateway forwards every one of those records to the client as a speaker
  event, which carries the talk time but not the spans;
- the report is the report event the client received.

The stack runs whole sessions, so no segment+embed pass is shared between speaker counts:
each count streams every recording again. The live labels trail the audio by the stack's
own latency (its profile's), the only one that can be scored through it.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import TopicPartition

from pipeline.bus import PLAINTEXT, tail_consumer
from pipeline.config import Profile
from pipeline.evaluation.der import Condition, EvaluationError, Recording, Scoreboard, find_recordings, rttm_dir
from pipeline.producers.audio_file import load_pcm16
from pipeline.producers.gateway_client import report_from_event, stream_session
from pipeline.rttm import read_rttm
from pipeline.settings import KafkaSecurity
from topics import SPEAKER_UPDATES, SessionReport, SpeakerUpdate, decode
from topics.messages import SAMPLE_RATE, LabeledSpan

# How long a client waits for its report after its stop. The gateway gives up first, by its own
# SPEAKERFLOW_REPORT_TIMEOUT_S, with an error event; this only guards against a silent gateway.
REPORT_WAIT_S = 600.0


@dataclass
class ServedSession:
    """One recording streamed as one live session, and what its client was served."""

    recording: Recording
    count: str  # the Condition's count: none, oracle or a number
    session_id: str
    duration_s: float
    report: SessionReport
    updates: list[SpeakerUpdate] = field(default_factory=list)

    def live_spans(self) -> list[LabeledSpan]:
        return [span for update in self.updates for span in update.spans]

    def report_spans(self) -> list[LabeledSpan]:
        return list(self.report.turns)


class UpdateReader:
    """The `speaker.update` records of a set of sessions, read from the updates topic as they are published.

    Start it before the first session starts, so none of their updates can pass unseen. The
    gateway hands a client its report as soon as it reads it, while the last updates before it
    (on another topic) may not have reached this reader yet: `caught_up` waits until it has read
    everything the updates topic held when it was called.
    """

    def __init__(self, bootstrap: str, session_ids: set[str], security: KafkaSecurity = PLAINTEXT) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.updates: dict[str, list[SpeakerUpdate]] = {session_id: [] for session_id in session_ids}
        self._keys = {session_id.encode(): session_id for session_id in session_ids}
        self._partitions = [TopicPartition(SPEAKER_UPDATES.name, p) for p in range(SPEAKER_UPDATES.partitions)]
        self._read_to: dict[TopicPartition, int] = {}
        self._progress = asyncio.Condition()
        self._consumer = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = await tail_consumer(self.bootstrap, [SPEAKER_UPDATES], self.security)
        self._read_to = {tp: await self._consumer.position(tp) for tp in self._partitions}
        self._task = asyncio.create_task(self._read(), name="served-updates")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def caught_up(self, timeout_s: float = 60.0) -> None:
        """Return once every update published before this call has been read."""
        assert self._consumer is not None and self._task is not None
        ends = await self._consumer.end_offsets(self._partitions)

        def done() -> bool:
            return self._task.done() or all(self._read_to[tp] >= end for tp, end in ends.items())

        try:
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(done), timeout_s)
        except TimeoutError:
            raise EvaluationError(
                f"the speaker updates on {self.bootstrap} were not all read within {timeout_s:g} s"
            ) from None
        if self._task.done():
            self._task.result()  # the reader failed: raise why
            raise RuntimeError("the updates reader stopped")

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    session_id = self._keys.get(record.key)
                    if session_id is not None:
                        message = decode(record.key, record.value, record.headers)
                        if isinstance(message, SpeakerUpdate):
                            self.updates[session_id].append(message)
            positions = {tp: await self._consumer.position(tp) for tp in self._partitions}
            async with self._progress:
                self._read_to = positions
                self._progress.notify_all()


def evaluate_served(
    root: Path,
    profile: Profile,
    rows: list[Condition],
    url: str,
    bootstrap: str,
    speed: float = 1.0,
    concurrency: int = 4,
    collar: float = 0.25,
    rttm_out: Path | None = None,
    progress: bool = True,
    exclude: tuple[str, ...] = (),
    on_session: Callable[[ServedSession], None] | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> list[dict]:
    """Score what the stack behind `url` serves for every labelled recording under `root`, under each condition.

    `profile` is the one the stack runs, `bootstrap` its Kafka (reached with `security`). Sessions stream `speed` times
    real time (0: as fast as possible), `concurrency` at once; each count in `rows` is one
    session per recording. Returns one JSON-ready summary per condition, as `evaluate_conditions`
    does. `on_session` sees each session's served updates and report.
    """
    for row in rows:
        if row.labels == "live" and row.latency_s != profile.latency_s:
            raise EvaluationError(
                f"through a stack the live labels trail the audio by the latency of its profile "
                f"({profile.latency_s:g} s in {profile.name}), not {row.latency_s:g} s"
            )
    if speed < 0:
        raise EvaluationError(f"--speed takes 0 (as fast as possible) or a positive factor, not {speed:g}")
    if concurrency < 1:
        raise EvaluationError(f"--concurrency takes a positive number of sessions, not {concurrency}")
    recordings = find_recordings(root, exclude)
    # One set of sessions per count; the conditions of a count differ only in what they score.
    counts = list({row.count: row for row in rows}.values())
    began = time.monotonic()
    sessions = asyncio.run(_serve(recordings, counts, url, bootstrap, speed, concurrency, progress, security))
    wall_s = time.monotonic() - began
    boards = [Scoreboard(row, collar) for row in rows]
    outs = {row: rttm_dir(rttm_out, row, len(rows)) for row in rows}
    for session in sessions:
        if on_session is not None:
            on_session(session)
        for board in boards:
            row = board.condition
            if row.count == session.count:
                spans = session.report_spans() if row.labels == "report" else session.live_spans()
                board.add(session.recording, session.duration_s, spans, outs[row])
    served = {"url": url, "speed": speed, "concurrency": concurrency, "wall_s": wall_s}
    # The stack's CPU time is not this process's to measure.
    return [board.summary(profile) | {"compute_per_audio_s": None, "served": served} for board in boards]


async def _serve(
    recordings: list[Recording],
    counts: list[Condition],
    url: str,
    bootstrap: str,
    speed: float,
    concurrency: int,
    progress: bool,
    security: KafkaSecurity = PLAINTEXT,
) -> list[ServedSession]:
    """Every recording streamed once per count (a condition of each); in the order of `counts`, then of `recordings`."""
    from tqdm import tqdm

    run = uuid.uuid4().hex[:8]
    jobs = [
        (recording, count, _session_id(run, count.count, index, recording.uri))
        for count in counts
        for index, recording in enumerate(recordings)
    ]
    reader = UpdateReader(bootstrap, {session_id for _, _, session_id in jobs}, security)
    slots = asyncio.Semaphore(concurrency)

    async def serve(recording: Recording, count: Condition, session_id: str) -> ServedSession:
        async with slots:
            pcm = await asyncio.to_thread(load_pcm16, recording.audio)
            event = await stream_session(
                url,
                pcm,
                num_speakers=count.num_speakers(read_rttm(recording.rttm)),
                realtime=speed > 0,
                speed=speed or 1.0,
                report_timeout_s=REPORT_WAIT_S,
                session_id=session_id,
            )
        bar.update()
        report = report_from_event(session_id, event)
        return ServedSession(recording, count.count, session_id, len(pcm) / SAMPLE_RATE, report)

    await reader.start()
    bar = tqdm(total=len(jobs), desc=f"eval through {url}", unit="session", disable=not progress, file=sys.stderr)
    try:
        sessions = await asyncio.gather(*(serve(*job) for job in jobs))
        await reader.caught_up()
    finally:
        bar.close()
        await reader.stop()
    for session in sessions:
        session.updates = reader.updates[session.session_id]
    return sessions


def _session_id(run: str, count: str, index: int, uri: str) -> str:
    """A session id of this run, unique per count and recording, that still names the recording."""
    return f"eval-{run}-{count}-{index}-{re.sub(r'[^A-Za-z0-9._:-]', '_', uri)}"[:128]
