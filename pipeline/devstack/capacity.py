"""How many live sessions one stack holds: `speakerflow capacity`, a ramp of real-time sessions through a fresh stack.

Each step runs N sessions at once, as clients of the seed protocol stream them: real time, one
WebSocket each, their starts spread over one update step so their windows do not all fall due
together. The clients run in a process of their own (:mod:`pipeline.devstack.capacity_client`),
whose CPU is not the stack's. Per step:

- update delay: when a `speaker` event reached its client, minus when the audio up to the
  position its update describes had been sent. The event on the wire carries no position, so
  the client's events are paired with the session's `speaker.update` records, read from the
  updates topic, which the gateway forwards in order. The delay includes the profile's latency.
- report after stop: from the stop to the report event.
- lost: sessions without a report, error events, updates the gateway dropped (on the bus, never
  at the client) and update steps skipped between a session's updates.
- CPU seconds per wall second of every process (all the workers of a stage together), read from
  /proc; resident memory of the stage workers at its peak, and its growth over the idle stack
  per session; changelog bytes written per session-second, read back from the broker.

A step is held when the p95 delay is at most the profile's latency plus 0.5 s, every report
came within 3 s of its stop and nothing was lost. The ramp stops after the first step not held.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.bus import client_security, new_consumer
from pipeline.config import Profile, load_profile
from pipeline.devstack.capacity_client import PlannedSession, SessionTrace
from pipeline.devstack.scaleout import scrape, spread_session_ids, total, wait_for_spread
from pipeline.devstack.stack import Stack, free_port
from pipeline.devstack.stack_benchmark import cpu_seconds
from pipeline.devstack.synthetic import script_for, synthesize
from pipeline.evaluation.der import find_recordings
from pipeline.evaluation.served import UpdateReader
from pipeline.gateway.protocol import result_event
from pipeline.producers.audio_file import float_to_pcm16, load_pcm16
from pipeline.rttm import read_rttm
from pipeline.settings import KafkaSecurity, Settings
from pipeline.stages.base import STAGES
from topics import SpeakerUpdate
from topics.messages import SAMPLE_RATE

DEFAULT_SESSIONS = (2, 4, 8, 12, 16, 24, 32, 48)
DEVSET = Path(__file__).resolve().parents[3] / "shared" / "data" / "devset"
# Held: p95 update delay within the profile's latency plus this, every report within REPORT_WITHIN_S of its stop.
DELAY_SLACK_S = 0.5
REPORT_WITHIN_S = 3.0
# A session's client gives up on its report this long after its stop (the gateway's own timeout is set longer).
REPORT_WAIT_S = 120.0
# The processes whose CPU the table shows, in this order; the stage columns sum all workers of the stage.
ROLES = (*STAGES, "gateway", "kafka")
# Faust names every table's changelog topic <app>-<table>-changelog.
CHANGELOG_SUFFIX = "-changelog"


@dataclass(frozen=True)
class Clip:
    """The audio one session streams (16 kHz int16) and the speaker count its start sends."""

    name: str
    pcm: np.ndarray
    num_speakers: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


# ---- audio -------------------------------------------------------------------------------------


def reference_count(rttm: Path, until_s: float) -> int:
    """Speakers of the reference who talk before `until_s` (at least 1): the count a client that knows it sends."""
    return max(1, len({turn.speaker for turn in read_rttm(rttm) if turn.start_s < until_s}))


def devset_clips(root: Path, seconds: float) -> list[Clip]:
    """Every labelled recording under `root`, cut to `seconds`, each with its reference's count in that cut."""
    clips = []
    for recording in find_recordings(root):
        pcm = load_pcm16(recording.audio)[: int(seconds * SAMPLE_RATE)]
        clips.append(Clip(recording.uri, pcm, reference_count(recording.rttm, len(pcm) / SAMPLE_RATE)))
    return clips


def file_clips(paths: Sequence[Path], seconds: float, default_count: int = 2) -> list[Clip]:
    """The given recordings, cut to `seconds`; the count from an RTTM of the same name beside one, else `default_count`."""
    clips = []
    for path in paths:
        pcm = load_pcm16(path)[: int(seconds * SAMPLE_RATE)]
        rttm = path.with_suffix(".rttm")
        count = reference_count(rttm, len(pcm) / SAMPLE_RATE) if rttm.exists() else default_count
        clips.append(Clip(path.stem, pcm, count))
    return clips


def synthetic_clips(seconds: float, count: int = 4) -> list[Clip]:
    """Two-voice conversations spoken by espeak-ng, about `seconds` long (cut to it), each its own script."""
    clips = []
    for seed in range(count):
        # A turn and its pause last about 3 s; two more make sure the cut has no shortfall.
        conversation = synthesize(script_for(2, turns=math.ceil(seconds / 3) + 2, seed=seed), seed=seed)
        pcm = float_to_pcm16(conversation.audio)[: int(seconds * SAMPLE_RATE)]
        clips.append(Clip(f"synthetic-{seed}", pcm, 2))
    return clips


def default_clips(seconds: float, devset: Path = DEVSET) -> list[Clip]:
    """The dev set's recordings, or synthesized conversations where it is missing."""
    return devset_clips(devset, seconds) if devset.is_dir() else synthetic_clips(seconds)


# ---- what one session saw ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100, linear between ranks); NaN when there are no values."""
    return float(np.percentile(values, q)) if len(values) else math.nan


def sent_at(sent: Sequence[tuple[int, float]], samples: int) -> float:
    """When the audio up to `samples` had been sent: the time of the first frame reaching that far (else the last)."""
    index = bisect.bisect_left([n for n, _ in sent], samples)
    return sent[min(index, len(sent) - 1)][1]


def pair_updates(events: Sequence[dict], updates: Sequence[SpeakerUpdate]) -> list[int | None]:
    """The index of the update on the bus that each speaker event stands for (None where none does).

    The gateway forwards a session's updates in order, dropping only the oldest for a reader that
    falls behind: with as many events as updates they pair in order; otherwise each event pairs
    with the next update that reads as it does (the earliest, so a drop never shortens a delay).
    """
    if len(events) == len(updates):
        return list(range(len(updates)))
    paired: list[int | None] = []
    start = 0
    for event in events:
        match = None
        for index in range(start, len(updates)):
            wire = result_event(updates[index]).wire()
            if all(event.get(key) == value for key, value in wire.items()):
                match, start = index, index + 1
                break
        paired.append(match)
    return paired


def missing_steps(positions_ms: Sequence[int], step_ms: int, audio_ms: int) -> int:
    """Update steps skipped between a session's first update and its last before the stop (every step, if none came).

    Where the first update falls is the chain's choice (its first window), and the stop settles
    everything left in one last update at the end of the audio: neither is a step lost.
    """
    if not positions_ms:
        return max(1, audio_ms // step_ms)
    ordered = sorted(p for p in positions_ms if p < audio_ms)
    return sum(max(0, round((b - a) / step_ms) - 1) for a, b in zip(ordered, ordered[1:]))


@dataclass
class SessionFigures:
    session_id: str
    delays_s: list[float]
    report_after_stop_s: float | None  # None: no report came
    error_codes: list[str]
    dropped_updates: int  # on the bus, never at the client
    unpaired_events: int  # speaker events no update on the bus stands for (the measure failed, not the stack)
    missing_steps: int
    send_lag_s: float  # how far the client's pacing fell behind real time at worst
    failure: str | None
    updates: int = 0  # on the bus
    updates_after_report: int = 0  # on the bus after the last the client received, the report come: not lost
    first_position_ms: int | None = None
    last_position_ms: int | None = None


def session_figures(trace: SessionTrace, updates: Sequence[SpeakerUpdate], step_s: float) -> SessionFigures:
    speaker_events = [(t, e) for t, e in trace.events if e.get("event") == "speaker"]
    paired = pair_updates([e for _, e in speaker_events], updates)
    delays = [
        arrived - sent_at(trace.sent, updates[index].position_ms * SAMPLE_RATE // 1000)
        for (arrived, _), index in zip(speaker_events, paired)
        if index is not None and trace.sent
    ]
    received = {index for index in paired if index is not None}
    # Updates and the report travel on different topics: the last updates may reach the gateway after
    # the report, when the client has gone. The report stands for them; only one missing before the
    # last update received is lost.
    last_received = max(received, default=-1)
    audio_ms = trace.audio_samples * 1000 // SAMPLE_RATE
    report_after = (
        trace.reported_at - trace.stopped_at if trace.reported_at is not None and trace.stopped_at is not None else None
    )
    return SessionFigures(
        session_id=trace.session_id,
        delays_s=delays,
        report_after_stop_s=report_after,
        error_codes=[str(e.get("code")) for _, e in trace.events if e.get("event") == "error"],
        dropped_updates=sum(index not in received for index in range(last_received)),
        unpaired_events=paired.count(None),
        missing_steps=missing_steps([u.position_ms for u in updates], round(step_s * 1000), audio_ms),
        send_lag_s=send_lag(trace.sent),
        failure=trace.failure,
        updates=len(updates),
        updates_after_report=len(updates) - 1 - last_received if trace.reported_at is not None else 0,
        first_position_ms=min((u.position_ms for u in updates), default=None),
        last_position_ms=max((u.position_ms for u in updates), default=None),
    )


def send_lag(sent: Sequence[tuple[int, float]]) -> float:
    """How late a frame left at worst, against real time from the first frame (which left as the pacer started)."""
    if len(sent) < 2:
        return 0.0
    first_at = sent[0][1]
    # A frame is due once the audio before it has been spoken: (samples before it) / rate after the first.
    return max(0.0, max(at - first_at - before / SAMPLE_RATE for (before, _), (_, at) in zip(sent, sent[1:])))


# ---- one step's figures ------------------------------------------------------------------------


@dataclass
class StepFigures:
    sessions: int
    session_s: float  # session-seconds of audio streamed
    wall_s: float
    delay_p50_s: float
    delay_p95_s: float
    delay_p99_s: float
    report_max_s: float
    report_p95_s: float
    without_report: int
    error_events: int
    dropped_updates: int
    missing_steps: int
    unpaired_events: int
    send_lag_max_s: float
    cpu: dict[str, float]  # cpu-seconds per wall second, per process
    rss_peak_mb: dict[str, float]  # per process
    worker_rss_idle_mb: float  # every stage worker together, before the first step
    changelog_bytes: dict[str, int]  # per changelog topic
    changelog_records: dict[str, int]
    failures: list[str] = field(default_factory=list)
    # Each session's figures but its delays, for a look at where a step went wrong.
    per_session: list[dict] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.without_report + self.error_events + self.dropped_updates + self.missing_steps

    def role_cpu(self, role: str) -> float:
        return sum(v for name, v in self.cpu.items() if process_role(name) == role)

    @property
    def worker_rss_mb(self) -> float:
        return sum(v for name, v in self.rss_peak_mb.items() if process_role(name) in STAGES)

    @property
    def rss_per_session_mb(self) -> float:
        return (self.worker_rss_mb - self.worker_rss_idle_mb) / self.sessions

    @property
    def changelog_kb_per_session_s(self) -> float:
        return sum(self.changelog_bytes.values()) / 1000 / self.session_s if self.session_s else math.nan


def process_role(name: str) -> str:
    """worker-segment-1 -> segment; other processes are their own role."""
    return name.split("-")[1] if name.startswith("worker-") else name


def step_figures(
    traces: Sequence[SessionTrace],
    updates: dict[str, list[SpeakerUpdate]],
    profile: Profile,
    wall_s: float,
    cpu: dict[str, float],
    rss_peak_mb: dict[str, float],
    worker_rss_idle_mb: float,
    changelog: dict[str, tuple[int, int]],
) -> StepFigures:
    """The step's figures from its sessions' traces, their updates on the bus and the processes' readings."""
    sessions = [session_figures(t, updates.get(t.session_id, []), update_step_s(profile)) for t in traces]
    delays = [d for s in sessions for d in s.delays_s]
    reports = [s.report_after_stop_s for s in sessions if s.report_after_stop_s is not None]
    return StepFigures(
        sessions=len(traces),
        session_s=sum(t.audio_samples for t in traces) / SAMPLE_RATE,
        wall_s=wall_s,
        delay_p50_s=percentile(delays, 50),
        delay_p95_s=percentile(delays, 95),
        delay_p99_s=percentile(delays, 99),
        report_max_s=max(reports) if reports else math.nan,
        report_p95_s=percentile(reports, 95),
        without_report=len(sessions) - len(reports),
        error_events=sum(len(s.error_codes) for s in sessions),
        dropped_updates=sum(s.dropped_updates for s in sessions),
        missing_steps=sum(s.missing_steps for s in sessions),
        unpaired_events=sum(s.unpaired_events for s in sessions),
        send_lag_max_s=max((s.send_lag_s for s in sessions), default=0.0),
        cpu=cpu,
        rss_peak_mb=rss_peak_mb,
        worker_rss_idle_mb=worker_rss_idle_mb,
        changelog_bytes={topic: size for topic, (_, size) in changelog.items()},
        changelog_records={topic: records for topic, (records, _) in changelog.items()},
        failures=[f"{s.session_id}: {s.failure}" for s in sessions if s.failure],
        per_session=[
            {k: v for k, v in asdict(s).items() if k != "delays_s"} | {"delay_p95_s": percentile(s.delays_s, 95)}
            for s in sessions
        ],
    )


def update_step_s(profile: Profile) -> float:
    """How often a session gets an update: the segmentation step (accurate) or the VAD step (fast)."""
    return profile.segmentation.step_s if profile.overlap_aware else profile.vad.step_s


def not_held(step: StepFigures, latency_s: float) -> list[str]:
    """Why the step was not held; empty when it was."""
    reasons = []
    limit = latency_s + DELAY_SLACK_S
    if not step.delay_p95_s <= limit:  # NaN (no update at all) is not held either
        reasons.append(f"p95 delay {step.delay_p95_s:.2f} s > {limit:.2f} s")
    if step.without_report:
        reasons.append(f"{step.without_report} session(s) without a report")
    elif not step.report_max_s <= REPORT_WITHIN_S:
        reasons.append(f"a report {step.report_max_s:.1f} s after stop > {REPORT_WITHIN_S:.0f} s")
    if step.lost:
        reasons.append(
            f"lost: {step.error_events} error event(s), {step.dropped_updates} update(s) dropped, "
            f"{step.missing_steps} step(s) without an update"
        )
    return reasons


# ---- the table ---------------------------------------------------------------------------------

_COLUMNS: list[tuple[str, int, Callable[[StepFigures], str]]] = [
    ("sessions", 8, lambda s: f"{s.sessions}"),
    ("p50", 6, lambda s: f"{s.delay_p50_s:.2f}"),
    ("p95", 6, lambda s: f"{s.delay_p95_s:.2f}"),
    ("p99", 6, lambda s: f"{s.delay_p99_s:.2f}"),
    ("max", 6, lambda s: f"{s.report_max_s:.2f}"),
    ("p95", 6, lambda s: f"{s.report_p95_s:.2f}"),
    ("lost", 5, lambda s: f"{s.lost}"),
    *[(role, max(len(role), 5), lambda s, role=role: f"{s.role_cpu(role):.2f}") for role in ROLES],
    ("workers", 8, lambda s: f"{s.worker_rss_mb:.0f}"),
    ("+/session", 9, lambda s: f"{s.rss_per_session_mb:.1f}"),
    ("KB/session-s", 13, lambda s: f"{s.changelog_kb_per_session_s:.1f}"),
]
# Groups over the columns: (title, how many columns it spans).
_GROUPS = [
    ("", 1),
    ("update delay s", 3),
    ("report s", 2),
    ("", 1),
    ("CPU s per s", len(ROLES)),
    ("RSS MB", 2),
    ("changelog", 1),
    ("", 1),
]


def format_header() -> str:
    widths = [w for _, w, _ in _COLUMNS] + [4]
    groups, at = [], 0
    for title, span in _GROUPS:
        width = sum(widths[at : at + span]) + 2 * (span - 1)
        groups.append(f"{title:^{width}}")
        at += span
    names = "  ".join(f"{name:>{width}}" for name, width, _ in _COLUMNS) + "  held"
    return "  ".join(groups).rstrip() + "\n" + names


def format_row(step: StepFigures, latency_s: float) -> str:
    cells = "  ".join(f"{value(step):>{width}}" for _, width, value in _COLUMNS)
    return f"{cells}  {'yes' if not not_held(step, latency_s) else 'no':>4}"


def format_table(steps: Sequence[StepFigures], latency_s: float) -> str:
    return "\n".join([format_header(), *(format_row(step, latency_s) for step in steps)])


def largest_held(steps: Sequence[StepFigures], latency_s: float) -> int:
    """The most sessions of a held step among the steps up to the first that was not (0: none held)."""
    held = 0
    for step in steps:
        if not_held(step, latency_s):
            break
        held = max(held, step.sessions)
    return held


# ---- readings from /proc and from the broker ---------------------------------------------------


def rss_mb(pid: int) -> float:
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6


class RssPeaks:
    """Samples the resident memory of processes in a thread and keeps each one's peak."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.5) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak: dict[str, float] = {name: 0.0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            try:
                self.peak[name] = max(self.peak[name], rss_mb(pid))
            except (FileNotFoundError, ProcessLookupError):
                pass  # a process gone: its peak so far stands

    def _run(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> RssPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class ChangelogMeter:
    """Bytes written to the tables' changelog topics between two readings of their end offsets.

    The records between the offsets are read back and their keys, values and headers counted:
    the bytes the workers wrote, which a compacted log's size on disk would not tell.
    """

    def __init__(self, bootstrap: str, security: KafkaSecurity) -> None:
        self.bootstrap = bootstrap
        self.security = security

    async def end_offsets(self) -> dict[TopicPartition, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **client_security(self.security))
        await admin.start()
        try:
            names = sorted(t for t in await admin.list_topics() if t.endswith(CHANGELOG_SUFFIX))
            described = await admin.describe_topics(names) if names else []
        finally:
            await admin.close()
        partitions = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
        if not partitions:
            return {}
        consumer = new_consumer(self.bootstrap, self.security, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            return dict(await consumer.end_offsets(partitions))
        finally:
            await consumer.stop()

    async def written(
        self, before: dict[TopicPartition, int], after: dict[TopicPartition, int]
    ) -> dict[str, tuple[int, int]]:
        """(records, bytes) per changelog topic written between the two readings."""
        spans = {tp: (before.get(tp, 0), end) for tp, end in after.items() if end > before.get(tp, 0)}
        written: dict[str, tuple[int, int]] = {tp.topic: (0, 0) for tp in after}
        if not spans:
            return written
        consumer = new_consumer(
            self.bootstrap,
            self.security,
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=16 * 2**20,
            fetch_max_bytes=64 * 2**20,
        )
        await consumer.start()
        try:
            consumer.assign(list(spans))
            for tp, (start, _) in spans.items():
                consumer.seek(tp, start)
            pending = set(spans)
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=1000)
                if not batches:
                    break  # the rest of the spans holds no records to read (transaction markers)
                for tp, records in batches.items():
                    records_n, size = written[tp.topic]
                    for record in records:
                        if record.offset < spans[tp][1]:
                            records_n += 1
                            size += max(record.serialized_key_size, 0) + max(record.serialized_value_size, 0)
                            size += sum(len(k) + len(v or b"") for k, v in record.headers)
                    written[tp.topic] = (records_n, size)
                pending = {tp for tp in pending if await consumer.position(tp) < spans[tp][1]}
        finally:
            await consumer.stop()
        return written


def settle(stack: Stack, timeout_s: float = 120.0) -> None:
    """Wait until no worker has anything left to read (its lag metric at 0), or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    workers = [name for name in stack.processes if name.startswith("worker-")]
    while time.monotonic() < deadline:
        try:
            if sum(total(scrape(stack.metrics_url(w)), "speakerflow_consumer_lag_messages") for w in workers) == 0:
                return
        except OSError:
            pass
        time.sleep(1.0)


def cpu_rates(pids: dict[str, int], before: dict[str, float], wall_s: float) -> dict[str, float]:
    return {name: (cpu_seconds(pid) - before[name]) / wall_s for name, pid in pids.items()}


# ---- the ramp ----------------------------------------------------------------------------------


@dataclass
class CapacityRun:
    profile: str
    latency_s: float
    workers: dict[str, int]
    clips: list[str]
    idle_cpu: dict[str, float]
    steps: list[StepFigures]

    @property
    def held(self) -> int:
        return largest_held(self.steps, self.latency_s)

    def to_json(self) -> dict:
        data = asdict(self)
        data["largest_held"] = self.held
        for figures, step in zip(data["steps"], self.steps):
            figures |= {
                "lost": step.lost,
                "held": not not_held(step, self.latency_s),
                "not_held_because": not_held(step, self.latency_s),
                "worker_rss_mb": step.worker_rss_mb,
                "rss_per_session_mb": step.rss_per_session_mb,
                "changelog_kb_per_session_s": step.changelog_kb_per_session_s,
            }
        return _without_nan(data)


def _without_nan(value):
    """`value` with every NaN (a figure that had nothing to measure) as None: NaN is not JSON."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


class CapacityBenchmark:
    """A stack (fresh, or joined on `bootstrap`) and the ramp's steps run against it."""

    def __init__(
        self,
        clips: Sequence[Clip],
        settings: Settings,
        run_dir: Path,
        workers: dict[str, int] | None = None,
        bootstrap: str | None = None,
        kafka_pid: int | None = None,
    ) -> None:
        if not clips:
            raise ValueError("no audio to stream")
        self.clips = list(clips)
        self.profile = load_profile(settings.profile)
        self.layout = {stage: 1 for stage in STAGES} | (workers or {})
        # The gateway waits for a report longer than any client does, so a late report is measured, not cut off.
        settings = replace(settings, gateway_port=free_port(), report_timeout_s=REPORT_WAIT_S + 60)
        self.run_dir = run_dir
        self.stack = Stack(run_dir / "stack", settings, bootstrap=bootstrap, workers=self.layout)
        self.kafka_pid = kafka_pid
        self.tag = uuid.uuid4().hex[:6]
        self.audio_dir = run_dir / "audio"

    def __enter__(self) -> CapacityBenchmark:
        self.stack.start()
        try:
            spread = [stage for stage, n in self.layout.items() if n > 1]
            if spread:
                wait_for_spread(self.stack, spread)
            self.audio_dir.mkdir(parents=True, exist_ok=True)
            for index, clip in enumerate(self.clips):
                np.save(self.audio_dir / f"{index}.npy", clip.pcm)
        except BaseException:
            self.stack.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.stop()

    @property
    def pids(self) -> dict[str, int]:
        pids = {name: process.pid for name, process in self.stack.processes.items()}
        kafka = self.stack.broker.pid if self.stack.broker is not None else self.kafka_pid
        if kafka is not None:
            pids["kafka"] = kafka
        return pids

    def idle(self, seconds: float = 5.0) -> tuple[dict[str, float], float]:
        """CPU per wall second of every process with no session running, and the workers' resident memory."""
        pids = self.pids
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        time.sleep(seconds)
        rates = cpu_rates(pids, before, time.monotonic() - started)
        workers_mb = sum(rss_mb(pid) for name, pid in pids.items() if process_role(name) in STAGES)
        return rates, workers_mb

    def plan(self, sessions: int) -> list[PlannedSession]:
        step_s = update_step_s(self.profile)
        ids = spread_session_ids(sessions, f"capacity-{self.tag}-{sessions}")
        return [
            PlannedSession(
                session_id=session_id,
                audio=str(self.audio_dir / f"{index % len(self.clips)}.npy"),
                num_speakers=self.clips[index % len(self.clips)].num_speakers,
                start_after_s=index * step_s / sessions,
            )
            for index, session_id in enumerate(ids)
        ]

    def run_step(self, sessions: int, worker_rss_idle_mb: float) -> StepFigures:
        return asyncio.run(self._step(sessions, worker_rss_idle_mb))

    async def _step(self, sessions: int, worker_rss_idle_mb: float) -> StepFigures:
        settings = self.stack.settings
        planned = self.plan(sessions)
        step_dir = self.run_dir / f"step-{sessions}"
        step_dir.mkdir(exist_ok=True)
        plan_path, results_path = step_dir / "plan.json", step_dir / "results.json"
        plan = {
            "url": self.stack.session_url,
            "report_timeout_s": REPORT_WAIT_S,
            "sessions": [asdict(p) for p in planned],
        }
        plan_path.write_text(json.dumps(plan))
        meter = ChangelogMeter(settings.kafka, settings.kafka_security)
        reader = UpdateReader(settings.kafka, {p.session_id for p in planned}, settings.kafka_security)
        await reader.start()
        try:
            offsets_before = await meter.end_offsets()
            client = subprocess.Popen(
                [sys.executable, "-m", "pipeline.devstack.capacity_client", str(plan_path), str(results_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert client.stdin is not None and client.stdout is not None
                if (await asyncio.to_thread(client.stdout.readline)).strip() != "ready":
                    raise RuntimeError("the capacity client did not start")
                pids = self.pids
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                started = time.monotonic()
                with RssPeaks(pids) as rss:
                    client.stdin.write("go\n")
                    client.stdin.flush()
                    while client.poll() is None:
                        await asyncio.sleep(0.2)
                    wall_s = time.monotonic() - started
                    cpu = cpu_rates(pids, cpu_before, wall_s)
            finally:
                if client.poll() is None:
                    client.kill()
            if client.wait() != 0:
                raise RuntimeError(f"the capacity client failed (exit {client.returncode})")
            results = json.loads(results_path.read_text())
            # The client counts its own CPU: once it has exited, /proc no longer can.
            cpu["client"] = results["cpu_s"] / wall_s
            traces = [SessionTrace.from_json(t) for t in results["sessions"]]
            await reader.caught_up()
            updates = reader.updates
        finally:
            await reader.stop()
        await asyncio.to_thread(settle, self.stack)
        written = await meter.written(offsets_before, await meter.end_offsets())
        return step_figures(traces, updates, self.profile, wall_s, cpu, rss.peak, worker_rss_idle_mb, written)


def run_capacity(
    clips: Sequence[Clip],
    settings: Settings,
    sessions: Sequence[int] = DEFAULT_SESSIONS,
    workers: dict[str, int] | None = None,
    keep_going: bool = False,
    warmup: int = 2,
    bootstrap: str | None = None,
    kafka_pid: int | None = None,
    out: Callable[[str], None] = lambda line: print(line, flush=True),
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> CapacityRun:
    """Ramp through `sessions` on a fresh stack (or one joined on `bootstrap`); print a row per step as it ends."""
    profile = load_profile(settings.profile)
    run_dir = Path(tempfile.mkdtemp(prefix="speakerflow-capacity-"))
    try:
        progress(f"starting a stack ({profile.name} profile, workers: {workers or 'one per stage'})")
        with CapacityBenchmark(clips, settings, run_dir, workers, bootstrap, kafka_pid) as bench:
            idle_cpu, idle_mb = bench.idle()
            run = CapacityRun(profile.name, profile.latency_s, bench.layout, [c.name for c in clips], idle_cpu, [])
            out("idle CPU s per s: " + ", ".join(f"{n} {v:.3f}" for n, v in sorted(idle_cpu.items())))
            if warmup:
                # First use compiles and allocates (numba's JIT in librosa, torch's frozen graphs): not what
                # a running stack costs, and on a first step of many sessions a backlog that never clears.
                progress(f"warming up with {warmup} session(s), not scored")
                bench.run_step(warmup, idle_mb)
            out(format_header())
            for index, count in enumerate(sessions, 1):
                longest = max(c.seconds for c in clips[:count])
                progress(f"step {index}/{len(sessions)}: {count} live session(s) of up to {longest:.0f} s")
                step = bench.run_step(count, idle_mb)
                run.steps.append(step)
                out(format_row(step, profile.latency_s))
                reasons = not_held(step, profile.latency_s)
                for failure in step.failures[:3]:
                    out(f"  session failed: {failure}")
                if step.send_lag_max_s > 0.2:
                    out(f"  note: the clients' pacing fell {step.send_lag_max_s:.2f} s behind real time")
                if reasons:
                    out("  not held: " + "; ".join(reasons))
                    if not keep_going:
                        break
    except BaseException:
        # The stack's logs say why; its broker's data (gigabytes of changelog) goes.
        shutil.rmtree(run_dir / "stack" / "kafka", ignore_errors=True)
        progress(f"the run's logs are kept in {run_dir}")
        raise
    shutil.rmtree(run_dir, ignore_errors=True)
    out(f"largest number of sessions held: {run.held}")
    return run


def parse_workers(text: str | None) -> dict[str, int]:
    """`segment=2,embed=2`: workers per stage (a stage not named keeps one)."""
    layout = {stage: 1 for stage in STAGES}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        stage, _, count = part.partition("=")
        stage = stage.strip()
        if stage not in layout or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"--workers takes STAGE=N pairs of {', '.join(STAGES)} and a positive N, not {part!r}")
        layout[stage] = int(count)
    return layout


def parse_sessions(text: str) -> list[int]:
    """`2,4,8`: the ramp's steps, each a positive number of sessions."""
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise ValueError(f"--sessions takes comma-separated positive numbers of sessions, not {text!r}")
    return steps
