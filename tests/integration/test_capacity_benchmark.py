"""The capacity benchmark's code run for real on the session's broker: one step of one live session.

Only that its figures are there and sane is checked; how fast the stack is, is what the benchmark
prints (`speakerflow capacity`), never a test's verdict.
"""

from __future__ import annotations

import math

from pipeline.devstack.capacity import ROLES, Clip, run_capacity
from pipeline.devstack.synthetic import TWO_SPEAKER_SCRIPT, synthesize
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.settings import Settings
from topics.messages import SAMPLE_RATE

SECONDS = 8


def test_one_step_of_one_session_has_every_figure(broker):
    pcm = float_to_pcm16(synthesize(TWO_SPEAKER_SCRIPT).audio)[: SECONDS * SAMPLE_RATE]
    lines: list[str] = []
    run = run_capacity(
        [Clip("two-speakers", pcm, 2)],
        Settings(),
        sessions=[1],
        warmup=0,
        bootstrap=broker.bootstrap_servers,
        kafka_pid=broker.pid,
        out=lines.append,
        progress=lines.append,
    )
    [step] = run.steps
    assert step.sessions == 1 and step.session_s == SECONDS
    assert step.without_report == 0 and step.error_events == 0 and not step.failures
    assert math.isfinite(step.report_max_s) and step.report_max_s >= 0
    for delay in (step.delay_p50_s, step.delay_p95_s, step.delay_p99_s):
        assert math.isfinite(delay) and delay > 0
    assert step.delay_p50_s <= step.delay_p95_s <= step.delay_p99_s
    assert step.unpaired_events == 0
    assert all(step.role_cpu(role) > 0 for role in ROLES)
    assert step.worker_rss_mb > 0
    assert sum(step.changelog_bytes.values()) > 0 and all(name.endswith("-changelog") for name in step.changelog_bytes)
    assert any(line.startswith("largest number of sessions held: ") for line in lines)
    assert run.to_json()["steps"][0]["sessions"] == 1
