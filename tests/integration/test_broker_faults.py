"""The Kafka broker failing under live sessions: SIGKILLed and restarted, and frozen (SIGSTOP) for 15 s.

A stack of its own, with its own broker (the session's broker is shared by every module and must
not die). Two synthesized conversations are streamed live through the gateway once without a
fault (the reference, shared by both tests), then with the fault injected mid-session. Nothing is
restarted but the broker: the gateway, the workers and the clients carry on by themselves. The
reports must be complete and each speaker's talk time within one step of the no-fault run, as
in the worker-failover test (tests/integration/test_scale_out.py): no audio was lost or doubled.

Run with `-s` to see the figures docs/reliability.md quotes (outage, recovery, talk time).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pipeline.devstack.scaleout import (
    Run,
    SessionRun,
    conversations,
    run_session,
    scrape,
    spread_session_ids,
    talk_time_difference_ms,
    total,
)
from pipeline.devstack.stack import Stack, free_port
from pipeline.devstack.synthetic import Conversation
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.settings import Settings
from topics.messages import SAMPLE_RATE

SESSIONS = 2
# One update step of the accurate profile: at most this much talk time may differ from the no-fault run.
STEP_MS = 500
FREEZE_S = 15.0


@pytest.fixture(scope="module")
def recordings() -> tuple[list[Conversation], list]:
    made = conversations(SESSIONS)
    return made, [float_to_pcm16(c.audio) for c in made]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Reports wait out the outage: give the gateway time.
    settings = Settings(gateway_port=free_port(), report_timeout_s=150)
    with Stack(tmp_path_factory.mktemp("broker-faults"), settings) as running:
        yield running


@dataclass
class Fault:
    """When a fault began and when the broker served again (monotonic seconds)."""

    began: float = 0.0
    ended: float = 0.0


def run_with_fault(
    stack: Stack, audio: list, prefix: str, inject: Callable[[Fault], None] | None = None, after_s: float = 0.0
) -> tuple[Run, Fault]:
    """Stream one live session per recording at once; `inject` runs (in a thread) `after_s` into them."""
    fault = Fault()

    async def all_sessions() -> list[SessionRun]:
        ids = spread_session_ids(len(audio), prefix)
        tasks = [asyncio.create_task(run_session(stack.session_url, sid, pcm)) for sid, pcm in zip(ids, audio)]
        if inject is not None:
            await asyncio.sleep(after_s)
            await asyncio.to_thread(inject, fault)
        return await asyncio.gather(*tasks, return_exceptions=True)

    started = time.monotonic()
    sessions = asyncio.run(all_sessions())
    failed = [f"{type(s).__name__}: {s}" for s in sessions if isinstance(s, BaseException)]
    if failed:
        gateway = scrape(stack.metrics_url("gateway"))
        abandoned = total(gateway, "speakerflow_gateway_sessions_total", outcome="abandoned")
        pytest.fail(
            f"{len(failed)} of {len(sessions)} sessions got no report ({failed}); broker away "
            f"{fault.ended - fault.began:.1f} s; the gateway counts {abandoned:.0f} session(s) abandoned, "
            "that is, their clients' connections dropped"
        )
    return Run(sessions, time.monotonic() - started, {}), fault


@pytest.fixture(scope="module")
def baseline(stack: Stack, recordings) -> Run:
    run, _ = run_with_fault(stack, recordings[1], "broker-baseline")
    return run


def fault_after_s(audio: list) -> float:
    """Well inside every session: 40 % into the shortest."""
    return 0.4 * min(len(pcm) for pcm in audio) / SAMPLE_RATE


def assert_complete(conversations_: list[Conversation], run: Run) -> None:
    for conversation, session in zip(conversations_, run.sessions):
        report = session.report
        assert report.get("event") == "report", (session.session_id, report)
        assert len(report["speakers"]) == 2, (session.session_id, report)
        # The report covers the whole stream, to the step: no tail was dropped.
        assert abs(max(t["endMs"] for t in report["turns"]) / 1000 - conversation.segments[-1].end_s) < 1.0, report
        assert session.updates, session.session_id


def first_update_after(run: Run, moment: float) -> float:
    """When the first speaker update of any session reached its client after `moment` (inf: none did)."""
    return min((t for s in run.sessions for t, _ in s.updates if t > moment), default=float("inf"))


def test_a_broker_sigkilled_and_restarted_mid_session_loses_nothing(stack, recordings, baseline):
    conversations_, audio = recordings
    broker = stack.broker
    assert broker is not None

    def crash_and_restart(fault: Fault) -> None:
        fault.began = time.monotonic()
        broker.kill()
        broker.start()  # the same data directory and ports
        fault.ended = time.monotonic()

    run, fault = run_with_fault(stack, audio, "broker-restart", crash_and_restart, fault_after_s(audio))
    assert_complete(conversations_, run)
    recovered_s = first_update_after(run, fault.ended) - fault.began
    per_session = [min((t for t, _ in s.updates if t > fault.ended), default=float("inf")) for s in run.sessions]
    difference = talk_time_difference_ms(baseline, run)
    print(
        f"\nbroker SIGKILLed {fault_after_s(audio):.1f} s into {SESSIONS} live sessions: serving again after "
        f"{fault.ended - fault.began:.1f} s, first update after {recovered_s:.1f} s (every session's after "
        f"{max(per_session) - fault.began:.1f} s); talk time differs from the no-fault run by at most {difference} ms; "
        f"no-fault {[s.talk_time_ms() for s in baseline.sessions]}, restart {[s.talk_time_ms() for s in run.sessions]}"
    )
    assert all(t < float("inf") for t in per_session), "a session had no update after the restart"
    assert difference <= STEP_MS
    gateway = scrape(stack.metrics_url("gateway"))
    assert total(gateway, "speakerflow_gateway_sessions_total", outcome="reported") >= 2 * SESSIONS


def test_a_broker_frozen_for_15_s_mid_session_leaves_the_reports_unchanged(stack, recordings, baseline):
    conversations_, audio = recordings
    broker = stack.broker
    assert broker is not None and broker.pid is not None

    def freeze(fault: Fault) -> None:
        # SIGSTOP: the broker's sockets stay open and nothing answers, as behind a network partition.
        fault.began = time.monotonic()
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            time.sleep(FREEZE_S)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        fault.ended = time.monotonic()

    run, fault = run_with_fault(stack, audio, "broker-freeze", freeze, fault_after_s(audio))
    assert_complete(conversations_, run)
    recovered_s = first_update_after(run, fault.ended) - fault.began
    difference = talk_time_difference_ms(baseline, run)
    print(
        f"\nbroker frozen {FREEZE_S:.0f} s from {fault_after_s(audio):.1f} s into {SESSIONS} live sessions: first "
        f"update {recovered_s:.1f} s after the freeze began; talk time differs from the no-fault run by at most "
        f"{difference} ms; no-fault {[s.talk_time_ms() for s in baseline.sessions]}, "
        f"freeze {[s.talk_time_ms() for s in run.sessions]}"
    )
    assert difference <= STEP_MS
