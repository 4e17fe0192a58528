"""Scale-out and failover on one machine: several workers per stateful stage, live sessions, a killed worker.

`speakerflow scale-out` and tests/integration/test_scale_out.py share this module. Sessions go through
the gateway exactly as clients send them; every figure reported comes from the processes'
/metrics endpoints or from when the clients saw their updates.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pipeline.devstack.stack import Stack, free_port
from pipeline.devstack.synthetic import Conversation, script_for, synthesize
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.gateway_client import stream_session
from pipeline.settings import Settings
from topics import AUDIO, SPEECH_STEPS, STEP_EMBEDDINGS
from topics.messages import SAMPLE_RATE

# Every stage input is keyed by session id and has as many partitions as the audio topic.
PARTITIONS = AUDIO.partitions
STAGE_INPUTS = {"segment": AUDIO.name, "embed": SPEECH_STEPS.name, "cluster": STEP_EMBEDDINGS.name}
STATEFUL_STAGES = ("segment", "cluster")


def partition_of(session_id: str, partitions: int = PARTITIONS) -> int:
    """The partition Kafka's default partitioner (the gateway's producer) puts a session on."""
    return (murmur2(session_id.encode()) & 0x7FFFFFFF) % partitions


def spread_session_ids(count: int, prefix: str) -> list[str]:
    """Session ids whose i-th lands on partition i mod PARTITIONS, so every worker gets sessions."""
    ids: list[str] = []
    candidate = 0
    while len(ids) < count:
        session_id = f"{prefix}-{candidate}"
        if partition_of(session_id) == len(ids) % PARTITIONS:
            ids.append(session_id)
        candidate += 1
    return ids


def conversations(count: int) -> list[Conversation]:
    """Short two-voice conversations (13 to 20 s), each with its own script and pauses."""
    return [synthesize(script_for(2, turns=4 + i % 3, seed=i), seed=i) for i in range(count)]


@dataclass
class SessionRun:
    session_id: str
    audio_s: float
    report: dict
    # (monotonic arrival time, event) of every speaker update the client received.
    updates: list[tuple[float, dict]] = field(default_factory=list)

    def talk_time_ms(self) -> dict[int, int]:
        return {s["id"]: s["totalTimeMs"] for s in self.report["speakers"]}


async def run_session(url: str, session_id: str, pcm: np.ndarray, realtime: bool = True) -> SessionRun:
    """One client session under a chosen id; audio paced in real time unless told otherwise."""
    run = SessionRun(session_id, len(pcm) / SAMPLE_RATE, {})

    def record(event: dict) -> None:
        if event["event"] == "speaker":
            run.updates.append((time.monotonic(), event))

    run.report = await stream_session(
        url, pcm, num_speakers=2, realtime=realtime, on_event=record, report_timeout_s=180, session_id=session_id
    )
    return run


# ---- reading /metrics -------------------------------------------------------------------------


def scrape(url: str, timeout: float = 3.0) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """Sum of the samples of one name whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def histogram_quantile(samples: Iterable[Sample], name: str, q: float) -> float | None:
    """Prometheus's histogram_quantile over every series of a histogram (buckets summed across processes)."""
    buckets: dict[float, float] = defaultdict(float)
    for s in samples:
        if s.name == f"{name}_bucket":
            buckets[float(s.labels["le"])] += s.value
    if not buckets or buckets[float("inf")] == 0:
        return None
    bounds = sorted(buckets)
    rank = q * buckets[float("inf")]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(buckets[bound] - lower_count, 1e-12)
        lower_bound, lower_count = bound, buckets[bound]
    return lower_bound


def assigned_partitions(stack: Stack, worker: str) -> int:
    stage = worker.split("-")[1]
    return int(
        total(
            scrape(stack.metrics_url(worker)), "speakerflow_assigned_partitions", stage=stage, topic=STAGE_INPUTS[stage]
        )
    )


def stage_workers(stack: Stack, stage: str) -> list[str]:
    return sorted(name for name in stack.processes if name.startswith(f"worker-{stage}-"))


def wait_for_spread(stack: Stack, stages: Sequence[str] = STATEFUL_STAGES, timeout: float = 120.0) -> dict[str, int]:
    """Wait until, in each stage, every live worker owns partitions and together they own all; returns the split."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            split = {
                worker: assigned_partitions(stack, worker) for stage in stages for worker in stage_workers(stack, stage)
            }
        except OSError:
            split = {}
        done = split and all(
            sum(split[w] for w in stage_workers(stack, stage)) == PARTITIONS
            and all(split[w] > 0 for w in stage_workers(stack, stage))
            for stage in stages
        )
        if done:
            return split
        if time.monotonic() > deadline:
            raise TimeoutError(f"partitions not spread over the workers after {timeout:.0f}s: {split}")
        time.sleep(0.5)


class LagWatch:
    """Samples every worker's consumer lag while sessions run and keeps each stage's peak (summed over workers)."""

    def __init__(self, stack: Stack, interval_s: float = 0.5) -> None:
        self.stack = stack
        self.interval_s = interval_s
        self.peak: dict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            lag: dict[str, float] = defaultdict(float)
            for worker in [n for n in list(self.stack.processes) if n.startswith("worker-")]:
                try:
                    lag[worker.split("-")[1]] += total(
                        scrape(self.stack.metrics_url(worker)), "speakerflow_consumer_lag_messages"
                    )
                except OSError:
                    pass  # a worker just killed
            for stage, value in lag.items():
                self.peak[stage] = max(self.peak[stage], value)

    def __enter__(self) -> LagWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- runs -------------------------------------------------------------------------------------


@dataclass
class Failover:
    stage: str
    victim: str
    survivor: str
    # The victim's input partitions, and the sessions on them.
    partitions: set[int]
    sessions: list[str]
    killed_at: float
    # From the kill until the survivor reported owning every partition (metrics refresh every 2 s).
    takeover_s: float = float("nan")
    # From the kill until every one of the victim's sessions had an update again.
    resume_s: float = float("nan")


@dataclass
class Run:
    sessions: list[SessionRun]
    wall_s: float
    peak_lag: dict[str, float]
    failover: Failover | None = None


def owned_partitions(stack: Stack, worker: str) -> set[int]:
    """A worker's input partitions, read from the per-partition lag series it reports."""
    samples = scrape(stack.metrics_url(worker))
    return {int(s.labels["partition"]) for s in samples if s.name == "speakerflow_consumer_lag_messages"}


def run_sessions(
    stack: Stack, audio: Sequence[np.ndarray], prefix: str, kill: str | None = None, kill_after_s: float = 0.0
) -> Run:
    """Stream one live session per recording at once; with ``kill``, SIGKILL one worker of that stage mid-stream."""
    url = stack.session_url
    session_ids = spread_session_ids(len(audio), prefix)
    failover: Failover | None = None
    if kill is not None:
        victim, survivor = stage_workers(stack, kill)[:2]
        partitions = owned_partitions(stack, victim)
        failover = Failover(
            kill, victim, survivor, partitions, [s for s in session_ids if partition_of(s) in partitions], killed_at=0.0
        )

    async def all_sessions() -> list[SessionRun]:
        tasks = [asyncio.create_task(run_session(url, sid, pcm)) for sid, pcm in zip(session_ids, audio)]
        if failover is not None:
            await asyncio.sleep(kill_after_s)
            await asyncio.to_thread(stack.kill, failover.victim)
            failover.killed_at = time.monotonic()
            await asyncio.to_thread(_watch_takeover, stack, failover)
        return await asyncio.gather(*tasks)

    started = time.monotonic()
    with LagWatch(stack) as lag:
        sessions = asyncio.run(all_sessions())
    run = Run(sessions, time.monotonic() - started, dict(lag.peak), failover)
    if failover is not None:
        failover.resume_s = max(
            _resumed_after(s, failover.killed_at) for s in sessions if s.session_id in failover.sessions
        )
    return run


def _watch_takeover(stack: Stack, failover: Failover, timeout: float = 120.0) -> None:
    deadline = failover.killed_at + timeout
    while time.monotonic() < deadline:
        try:
            if assigned_partitions(stack, failover.survivor) == PARTITIONS:
                failover.takeover_s = time.monotonic() - failover.killed_at
                return
        except OSError:
            pass
        time.sleep(0.2)


def _resumed_after(session: SessionRun, killed_at: float) -> float:
    """Seconds from the kill to the end of the longest silence in the session's updates after it.

    Updates already in flight arrive just after the kill; the silence that follows lasts
    until the survivor has taken over.
    """
    arrivals = [t for t, _ in session.updates if t > killed_at]
    if not arrivals:
        return float("inf")
    edges = [killed_at, *arrivals]
    gaps = [(b - a, b) for a, b in zip(edges, edges[1:])]
    return max(gaps)[1] - killed_at


def talk_time_difference_ms(baseline: Run, other: Run) -> int:
    """Largest per-speaker talk-time difference between two runs of the same recordings, in ms."""
    worst = 0
    for first, second in zip(baseline.sessions, other.sessions):
        a, b = first.talk_time_ms(), second.talk_time_ms()
        for speaker in a.keys() | b.keys():
            worst = max(worst, abs(a.get(speaker, 0) - b.get(speaker, 0)))
    return worst


def metrics_summary(stack: Stack) -> dict[str, float | None]:
    samples = [s for name in stack.processes if name.startswith("worker-") for s in scrape(stack.metrics_url(name))]
    summary: dict[str, float | None] = {
        "latency_p50_s": histogram_quantile(samples, "speakerflow_end_to_end_latency_seconds", 0.5),
        "latency_p95_s": histogram_quantile(samples, "speakerflow_end_to_end_latency_seconds", 0.95),
        "latency_mean_s": total(samples, "speakerflow_end_to_end_latency_seconds_sum")
        / max(total(samples, "speakerflow_end_to_end_latency_seconds_count"), 1),
        "embed_batch_mean": total(samples, "speakerflow_embedding_batch_size_sum")
        / max(total(samples, "speakerflow_embedding_batch_size_count"), 1),
    }
    for stage in STAGE_INPUTS:
        stage_samples = [s for s in samples if s.labels.get("stage") == stage]
        summary[f"{stage}_processing_p95_s"] = histogram_quantile(
            stage_samples, "speakerflow_stage_processing_seconds", 0.95
        )
    return summary


def format_report(
    workers: dict[str, int], baseline: Run, summary: dict[str, float | None], failover_run: Run | None
) -> str:
    audio_s = sum(s.audio_s for s in baseline.sessions)
    lines = [
        f"workers: {', '.join(f'{stage} x{n}' for stage, n in workers.items())}; "
        f"{len(baseline.sessions)} live sessions, {audio_s:.0f} s of audio in {baseline.wall_s:.1f} s",
        "peak consumer lag (records, all partitions): "
        + ", ".join(f"{stage} {baseline.peak_lag.get(stage, 0):.0f}" for stage in STAGE_INPUTS),
        "end-to-end latency: p50 {latency_p50_s:.2f} s, p95 {latency_p95_s:.2f} s, mean {latency_mean_s:.2f} s".format(
            **summary
        ),
        "processing p95: "
        + ", ".join(
            f"{stage} {summary[f'{stage}_processing_p95_s'] * 1000:.1f} ms"
            for stage in STAGE_INPUTS
            if summary[f"{stage}_processing_p95_s"] is not None
        )
        + f"; mean embedding batch {summary['embed_batch_mean']:.1f}",
    ]
    if failover_run is not None and failover_run.failover is not None:
        f = failover_run.failover
        lines += [
            f"failover: SIGKILL {f.victim} ({len(f.partitions)} partitions, {len(f.sessions)} live sessions); "
            f"{f.survivor} owned all partitions after {f.takeover_s:.1f} s; sessions resumed after {f.resume_s:.1f} s",
            f"talk time vs the no-fault run: largest difference {talk_time_difference_ms(baseline, failover_run)} ms per speaker",
            "peak consumer lag during failover: "
            + ", ".join(f"{stage} {failover_run.peak_lag.get(stage, 0):.0f}" for stage in STAGE_INPUTS),
        ]
    return "\n".join(lines)


def run_scale_out(sessions: int, workers: int, embed_workers: int, kill: str | None, settings: Settings) -> str:
    """A fresh stack with ``workers`` per stateful stage; a no-fault run, then (with ``kill``) a run losing one worker."""
    recordings = [float_to_pcm16(c.audio) for c in conversations(sessions)]
    layout = {"segment": workers, "embed": embed_workers, "cluster": workers}
    settings = replace(settings, gateway_port=free_port())
    with (
        tempfile.TemporaryDirectory(prefix="speakerflow-scale-") as run_dir,
        Stack(Path(run_dir), settings, workers=layout) as stack,
    ):
        wait_for_spread(stack, [s for s in STATEFUL_STAGES if layout[s] > 1])
        baseline = run_sessions(stack, recordings, "baseline")
        summary = metrics_summary(stack)
        failover_run = None
        if kill is not None:
            shortest = min(len(pcm) for pcm in recordings) / SAMPLE_RATE
            failover_run = run_sessions(stack, recordings, "failover", kill=kill, kill_after_s=0.4 * shortest)
        return format_report(layout, baseline, summary, failover_run)
