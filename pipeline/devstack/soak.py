"""Does a stack stay flat under hours of use: `speakerflow soak`, N live sessions held for M minutes on a fresh stack.

Each of N clients streams one session after another in real time through the gateway, as a
seed-protocol client does, each a recording of the dev set (or a given file) cut to a length,
starting the next as soon as the report of the last has come; their first starts are spread over
one session's length, so sessions start and stop all the time. Every `interval_s` the soak samples:

- the resident memory of every process of the stack (/proc),
- each stage's consumer lag and every error counter, from the processes' /metrics.

The first round of sessions (until every client's first session has ended) is the warm-up: first use
compiles and allocates (numba's JIT, torch's frozen graphs), which is not growth. Memory growth
is from the first sample after it to the last. Afterwards the sessions' updates, read back from
the bus, show what was lost, as `speakerflow capacity` counts it: sessions without a report,
error events, updates the gateway dropped, update steps without an update.

The soak fails (exit 1) when a stack process grew more than `GROWTH_LIMIT_PCT`, anything was lost,
or an error was counted. The Kafka broker's memory is shown but not judged: it is a JVM whose
heap grows towards its -Xmx as it pleases, and it is not speakerflow's code.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.config import load_profile
from pipeline.devstack.capacity import (
    REPORT_WAIT_S,
    CapacityBenchmark,
    Clip,
    SessionFigures,
    process_role,
    rss_mb,
    session_figures,
    settle,
    update_step_s,
)
from pipeline.devstack.capacity_client import PlannedSession, SessionTrace, run_session
from pipeline.devstack.scaleout import scrape
from pipeline.evaluation.served import UpdateReader
from pipeline.settings import Settings
from pipeline.stages.base import STAGES

# Half the sessions a stack of one worker per stage holds on the accurate profile (8, docs/scaling.md).
DEFAULT_SESSIONS = 4
DEFAULT_INTERVAL_S = 30.0
GROWTH_LIMIT_PCT = 5.0
# Shown, not judged (see the module's docstring).
UNJUDGED = frozenset({"kafka"})
# A client whose session failed at once waits this long before the next, so a broken stack is not hammered.
RETRY_AFTER_S = 1.0


@dataclass
class Sample:
    at_s: float  # since the hold began
    rss_mb: dict[str, float]  # per process
    lag: dict[str, float]  # per stage, all its workers
    errors: dict[str, float]  # "stage/kind" -> count, every process
    sessions_done: int
    warm: bool  # taken after the warm-up


def growth_pct(samples: Sequence[Sample], process: str) -> float:
    """How much a process's memory grew from the first sample after the warm-up to the last, in %; NaN without one."""
    warm = [s.rss_mb[process] for s in samples if s.warm and process in s.rss_mb]
    if len(warm) < 2 or warm[0] <= 0:
        return math.nan
    return (warm[-1] - warm[0]) / warm[0] * 100


def processes(samples: Sequence[Sample]) -> list[str]:
    """Every process sampled: the workers by stage, then the gateway, the broker and the rest."""
    names = {name for s in samples for name in s.rss_mb}
    order = {role: index for index, role in enumerate((*STAGES, "gateway", "kafka"))}
    return sorted(names, key=lambda n: (order.get(process_role(n), len(order)), n))


def column_names(names: Sequence[str]) -> dict[str, str]:
    """A process's column title: its stage when it is the only worker of it (worker-segment-0 -> segment)."""
    roles = [process_role(n) for n in names]
    return {n: role if roles.count(role) == 1 else n.removeprefix("worker-") for n, role in zip(names, roles)}


@dataclass
class SoakRun:
    minutes: float
    sessions: int  # held at once
    profile: str
    clips: list[str]
    interval_s: float
    samples: list[Sample]
    figures: list[SessionFigures] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return sum(f.report_after_stop_s is not None for f in self.figures)

    @property
    def without_report(self) -> int:
        return len(self.figures) - self.completed

    @property
    def error_events(self) -> int:
        return sum(len(f.error_codes) for f in self.figures)

    @property
    def dropped_updates(self) -> int:
        return sum(f.dropped_updates for f in self.figures)

    @property
    def missing_steps(self) -> int:
        return sum(f.missing_steps for f in self.figures)

    @property
    def lost(self) -> int:
        return self.without_report + self.error_events + self.dropped_updates + self.missing_steps

    @property
    def errors_counted(self) -> dict[str, float]:
        """The error counters that moved during the soak (last sample against the first)."""
        if not self.samples:
            return {}
        first, last = self.samples[0].errors, self.samples[-1].errors
        return {key: value - first.get(key, 0) for key, value in sorted(last.items()) if value > first.get(key, 0)}

    def growth(self) -> dict[str, float]:
        return {name: growth_pct(self.samples, name) for name in processes(self.samples)}

    def problems(self, limit_pct: float = GROWTH_LIMIT_PCT) -> list[str]:
        """Why the soak failed; empty when memory stayed flat and nothing was lost."""
        reasons = []
        judged = {n: g for n, g in self.growth().items() if process_role(n) not in UNJUDGED}
        if not judged or any(math.isnan(g) for g in judged.values()):
            reasons.append("fewer than two samples after the warm-up: run longer or sample more often (--interval)")
        for name, growth in judged.items():
            if growth > limit_pct:
                reasons.append(f"{name} grew {growth:+.1f} % > {limit_pct:g} %")
        if self.lost:
            reasons.append(
                f"lost: {self.without_report} session(s) without a report, {self.error_events} error event(s), "
                f"{self.dropped_updates} update(s) dropped, {self.missing_steps} step(s) without an update"
            )
        if self.errors_counted:
            reasons.append("errors counted: " + ", ".join(f"{k} {v:.0f}" for k, v in self.errors_counted.items()))
        return reasons

    def to_json(self) -> dict:
        data = asdict(self)
        growth = self.growth()
        data |= {
            "growth_pct": {n: None if math.isnan(g) else g for n, g in growth.items()},
            "completed": self.completed,
            "lost": self.lost,
            "errors_counted": self.errors_counted,
            "problems": self.problems(),
        }
        return data


def format_table(run: SoakRun) -> str:
    """Memory per process and lag per stage at every sample, then each process's growth after the warm-up."""
    names = processes(run.samples)
    titles = column_names(names)
    stages = [stage for stage in STAGES if any(stage in s.lag for s in run.samples)]
    widths = {n: max(len(titles[n]), 7) for n in names}
    lag_titles = {stage: f"lag {stage}" for stage in stages}
    header = (
        f"{'min':>6}  {'done':>5}  "
        + "  ".join(f"{titles[n]:>{widths[n]}}" for n in names)
        + "  "
        + "  ".join(f"{lag_titles[s]:>{len(lag_titles[s])}}" for s in stages)
        + f"  {'errors':>6}"
    )
    lines = [
        f"{'':>15}" + "resident memory MB per process".center(sum(widths.values()) + 2 * (len(names) - 1)).rstrip(),
        header,
    ]
    first_warm = next((index for index, s in enumerate(run.samples) if s.warm), None)
    for index, sample in enumerate(run.samples):
        mark = "*" if index == first_warm else " "
        memory = "  ".join(
            f"{sample.rss_mb[n]:>{widths[n]}.0f}" if n in sample.rss_mb else f"{'-':>{widths[n]}}" for n in names
        )
        lag = "  ".join(f"{sample.lag.get(s, 0):>{len(lag_titles[s])}.0f}" for s in stages)
        lines.append(
            f"{mark}{sample.at_s / 60:>5.1f}  {sample.sessions_done:>5}  {memory}  {lag}  {sum(sample.errors.values()):>6.0f}"
        )
    growth = run.growth()
    cells = "  ".join(f"{'n/a' if math.isnan(growth[n]) else f'{growth[n]:+.1f}':>{widths[n]}}" for n in names)
    lines.append(f"{'growth %':>13}  {cells}")
    lines.append("* first sample after the warm-up; growth is from it to the last")
    return "\n".join(lines)


def format_summary(run: SoakRun, limit_pct: float = GROWTH_LIMIT_PCT) -> str:
    peak_lag = {stage: max((s.lag.get(stage, 0) for s in run.samples), default=0) for stage in STAGES}
    judged = {n: g for n, g in run.growth().items() if process_role(n) not in UNJUDGED and not math.isnan(g)}
    lines = [
        f"sessions: {run.completed} completed, {run.sessions} at once for {run.minutes:g} min ({run.profile} profile); "
        f"{run.without_report} without a report, {run.error_events} error event(s), {run.dropped_updates} update(s) "
        f"dropped, {run.missing_steps} step(s) without an update",
        "peak consumer lag (records): " + ", ".join(f"{stage} {lag:.0f}" for stage, lag in peak_lag.items()),
        "errors counted: "
        + (", ".join(f"{k} {v:.0f}" for k, v in run.errors_counted.items()) if run.errors_counted else "none"),
    ]
    if judged:
        worst = max(judged, key=judged.get)
        lines.append(
            f"largest memory growth after the warm-up: {judged[worst]:+.1f} % ({worst}); limit {limit_pct:g} % "
            f"({', '.join(sorted(UNJUDGED))} not judged)"
        )
    problems = run.problems(limit_pct)
    lines.append("FAILED: " + "; ".join(problems) if problems else "passed: memory flat and nothing lost")
    return "\n".join(lines)


# ---- running it --------------------------------------------------------------------------------


class Sampler:
    """Samples the stack's processes every `interval_s` in a thread; `warm` and `sessions_done` are set by the clients."""

    def __init__(self, bench: CapacityBenchmark, interval_s: float, started: float) -> None:
        self.bench = bench
        self.interval_s = interval_s
        self.started = started
        self.samples: list[Sample] = []
        self.warm = False
        self.sessions_done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> Sample:
        stack = self.bench.stack
        memory: dict[str, float] = {}
        for name, pid in self.bench.pids.items():
            try:
                memory[name] = rss_mb(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass  # a process gone: the soak's report shows the gap
        lag: dict[str, float] = defaultdict(float)
        errors: dict[str, float] = defaultdict(float)
        for name in list(stack.processes):
            try:
                samples = scrape(stack.metrics_url(name))
            except OSError:
                continue
            for s in samples:
                if s.name == "speakerflow_consumer_lag_messages":
                    lag[s.labels["stage"]] += s.value
                elif s.name == "speakerflow_errors_total":
                    errors[f"{s.labels['stage']}/{s.labels['kind']}"] += s.value
        taken = Sample(time.monotonic() - self.started, memory, dict(lag), dict(errors), self.sessions_done, self.warm)
        self.samples.append(taken)
        return taken

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def client(
    index: int,
    bench: CapacityBenchmark,
    session_ids: Sequence[str],
    first_after_s: float,
    until: float,
    sampler: Sampler,
    warmed: asyncio.Event,
    began: float,
) -> list[SessionTrace]:
    """One client's sessions, back to back, until `until` (the session under way then finishes)."""
    traces = []
    for number, session_id in enumerate(session_ids):
        if time.monotonic() >= until:
            break
        clip_index = (index + number) % len(bench.clips)
        clip = bench.clips[clip_index]
        planned = PlannedSession(
            session_id=session_id,
            audio=str(bench.audio_dir / f"{clip_index}.npy"),
            num_speakers=clip.num_speakers,
            start_after_s=first_after_s if number == 0 else 0.0,
        )
        # The first session waits its turn from the hold's start; the others start at once.
        start = began if number == 0 else time.monotonic()
        trace = await run_session(bench.stack.session_url, planned, clip.pcm, start, REPORT_WAIT_S)
        traces.append(trace)
        sampler.sessions_done += trace.reported_at is not None
        if number == 0:
            warmed.set()
        if trace.failure is not None:
            await asyncio.sleep(RETRY_AFTER_S)
    if not traces:
        warmed.set()
    return traces


async def hold(bench: CapacityBenchmark, sessions: int, minutes: float, interval_s: float, tag: str):
    """Run the clients for `minutes` while sampling; returns (samples, traces, updates by session)."""
    shortest_s = min(c.seconds for c in bench.clips)
    # Each session lasts at least its audio: no client can use more ids than this.
    per_client = math.ceil(minutes * 60 / shortest_s) + 2
    ids = [[f"soak-{tag}-{i}-{n}" for n in range(per_client)] for i in range(sessions)]
    settings = bench.stack.settings
    reader = UpdateReader(settings.kafka, {sid for client_ids in ids for sid in client_ids}, settings.kafka_security)
    await reader.start()
    try:
        began = time.monotonic()
        until = began + minutes * 60
        with Sampler(bench, interval_s, began) as sampler:
            await asyncio.to_thread(sampler.sample)
            warmed = [asyncio.Event() for _ in range(sessions)]

            async def mark_warm() -> None:
                await asyncio.gather(*(event.wait() for event in warmed))
                sampler.warm = True

            marker = asyncio.create_task(mark_warm())
            spread_s = shortest_s / sessions
            per_client_traces = await asyncio.gather(
                *(client(i, bench, ids[i], i * spread_s, until, sampler, warmed[i], began) for i in range(sessions))
            )
            marker.cancel()
        # The last sample once the sampling thread has stopped, so the samples stay in time order.
        await asyncio.to_thread(sampler.sample)
        await reader.caught_up()
        return sampler.samples, [t for traces in per_client_traces for t in traces], reader.updates
    finally:
        await reader.stop()


def run_soak(
    clips: Sequence[Clip],
    settings: Settings,
    minutes: float,
    sessions: int = DEFAULT_SESSIONS,
    interval_s: float = DEFAULT_INTERVAL_S,
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> SoakRun:
    """A fresh stack, `sessions` clients for `minutes`; the run's samples and every session's figures."""
    if minutes <= 0 or sessions < 1 or interval_s <= 0:
        raise ValueError("a soak needs positive minutes, sessions and interval")
    profile = load_profile(settings.profile)
    run_dir = Path(tempfile.mkdtemp(prefix="speakerflow-soak-"))
    try:
        progress(f"starting a stack ({profile.name} profile)")
        with CapacityBenchmark(clips, settings, run_dir) as bench:
            progress(
                f"holding {sessions} live session(s) for {minutes:g} min, clips of up to "
                f"{max(c.seconds for c in clips):.0f} s; a sample every {interval_s:g} s"
            )
            samples, traces, updates = asyncio.run(hold(bench, sessions, minutes, interval_s, uuid.uuid4().hex[:6]))
            settle(bench.stack)
            step_s = update_step_s(profile)
            figures = [session_figures(t, updates.get(t.session_id, []), step_s) for t in traces]
    except BaseException:
        shutil.rmtree(run_dir / "stack" / "kafka", ignore_errors=True)
        progress(f"the run's logs are kept in {run_dir}")
        raise
    shutil.rmtree(run_dir, ignore_errors=True)
    return SoakRun(minutes, sessions, profile.name, [c.name for c in clips], interval_s, samples, figures)
