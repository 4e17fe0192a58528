"""Scale-out and failover on the session's broker: two workers of each stateful stage in one Faust
group, eight live sessions through the gateway, then one worker SIGKILLed mid-stream.

The figures printed here (time to resume, talk-time difference, lag, latency) are the ones
docs/scaling.md quotes; run with `-s` to see them.
"""

from __future__ import annotations

import math

import pytest

from pipeline.devstack.scaleout import (
    PARTITIONS,
    STATEFUL_STAGES,
    Run,
    SessionRun,
    conversations,
    metrics_summary,
    partition_of,
    run_sessions,
    scrape,
    stage_workers,
    talk_time_difference_ms,
    total,
    wait_for_spread,
)
from pipeline.evaluation.talktime import compare
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.gateway_client import report_from_event
from topics.messages import SAMPLE_RATE

SESSIONS = 8
LAYOUT = {"segment": 2, "embed": 1, "cluster": 2}
TOLERANCE = 0.15
# A worker that dies may take the step it was emitting with it: at most one step of talk time.
STEP_MS = 500


@pytest.fixture(scope="module")
def recordings():
    made = conversations(SESSIONS)
    return made, [float_to_pcm16(c.audio) for c in made]


@pytest.fixture(scope="module")
def stack(local_stack):
    # Reports of sessions on a dead worker wait for the survivor: give them time.
    with local_stack("scale", report_timeout_s=150, workers=dict(LAYOUT)) as running:
        yield running


@pytest.fixture(scope="module")
def baseline(stack, recordings) -> tuple[dict[str, int], Run]:
    split = wait_for_spread(stack)
    return split, run_sessions(stack, recordings[1], "baseline")


def assert_complete(conversation, session: SessionRun, against_script: bool = True) -> None:
    report = session.report
    assert len(report["speakers"]) == 2, (session.session_id, report)
    # The report covers the whole stream, to the step.
    assert abs(max(t["endMs"] for t in report["turns"]) / 1000 - conversation.segments[-1].end_s) < 1.0, report
    rows = compare(conversation.reference_turns(), report_from_event(session.session_id, report))
    assert {r.hypothesis for r in rows} == {0, 1}, rows
    if against_script:
        for row in rows:
            assert row.relative_error <= TOLERANCE, (session.session_id, rows)


def test_two_workers_per_stateful_stage_share_the_partitions_and_every_report_is_complete(stack, recordings, baseline):
    split, run = baseline
    for stage in STATEFUL_STAGES:
        workers = stage_workers(stack, stage)
        assert len(workers) == 2
        assert all(split[w] > 0 for w in workers) and sum(split[w] for w in workers) == PARTITIONS, split
        # Sessions were spread over every partition, so both workers really handled some.
        for worker in workers:
            handled = total(scrape(stack.metrics_url(worker)), "speakerflow_stage_messages_total", stage=stage)
            assert handled > 0, (worker, split)
    assert {partition_of(s.session_id) for s in run.sessions} == set(range(PARTITIONS))
    for conversation, session in zip(recordings[0], run.sessions):
        assert_complete(conversation, session)

    gateway = scrape(stack.metrics_url("gateway"))
    assert total(gateway, "speakerflow_gateway_sessions_total", outcome="reported") == SESSIONS
    assert total(gateway, "speakerflow_active_sessions", stage="gateway") == 0
    # The cluster workers timed every update they sent, so at least each one a client received (a
    # client stops listening at its report, and the gateway drops the oldest updates of a slow one).
    assert all(session.updates for session in run.sessions)
    received = sum(len(session.updates) for session in run.sessions)
    timed = [s for worker in stage_workers(stack, "cluster") for s in scrape(stack.metrics_url(worker))]
    assert total(timed, "speakerflow_end_to_end_latency_seconds_count") >= received
    summary = metrics_summary(stack)
    assert 0 < summary["latency_p50_s"] <= summary["latency_p95_s"]
    print(
        f"\n{SESSIONS} live sessions ({sum(s.audio_s for s in run.sessions):.0f} s audio) in {run.wall_s:.1f} s; "
        f"partitions {split}; peak lag {dict(run.peak_lag)}; "
        f"latency p50 {summary['latency_p50_s']:.2f} s, p95 {summary['latency_p95_s']:.2f} s"
    )


@pytest.mark.parametrize("stage", ["cluster", "segment"])
def test_a_worker_killed_mid_stream_hands_its_sessions_to_the_survivor(stack, recordings, baseline, stage):
    conversations_, audio = recordings
    if len(stage_workers(stack, stage)) < 2:
        stack.add_worker(stage)
    wait_for_spread(stack, [stage])
    # Well inside every session: the victim holds live sessions when it dies.
    kill_after_s = 0.4 * min(len(pcm) for pcm in audio) / SAMPLE_RATE
    run = run_sessions(stack, audio, f"kill-{stage}", kill=stage, kill_after_s=kill_after_s)
    failover = run.failover
    assert failover is not None and failover.sessions, failover

    assert math.isfinite(failover.takeover_s), failover
    assert (
        total(scrape(stack.metrics_url(failover.survivor)), "speakerflow_assigned_partitions", stage=stage)
        == PARTITIONS
    )
    # The consumer session timeout (10 s) bounds how long a dead worker's sessions stall.
    assert failover.resume_s < 30, failover
    # The victim's sessions started there and carry on in the survivor from the state in the
    # changelog: without it they would have no report, or one for their second half only.
    # Accuracy against the script is the no-fault run's test; here the measure is that run itself.
    for conversation, session in zip(conversations_, run.sessions):
        assert_complete(conversation, session, against_script=False)
    difference = talk_time_difference_ms(baseline[1], run)
    print(
        f"\nSIGKILL {failover.victim} at {kill_after_s:.1f} s ({len(failover.sessions)} live sessions on partitions "
        f"{sorted(failover.partitions)}): survivor owned all partitions after {failover.takeover_s:.1f} s, "
        f"sessions resumed after {failover.resume_s:.1f} s; talk time differs from the no-fault run by at most "
        f"{difference} ms; peak lag {dict(run.peak_lag)}"
    )
    assert difference <= STEP_MS
