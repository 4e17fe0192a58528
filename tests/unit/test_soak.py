"""The soak's judgement and table, from samples made up here (no stack, no Kafka)."""

from __future__ import annotations

import math

from pipeline.devstack.capacity import SessionFigures
from pipeline.devstack.soak import Sample, SoakRun, column_names, format_summary, format_table, growth_pct, processes


def sample(at_s: float, rss: dict[str, float], warm: bool, errors: dict[str, float] | None = None) -> Sample:
    return Sample(at_s, rss, {"segment": 3, "embed": 0, "cluster": 1}, errors or {}, int(at_s // 60), warm)


def figures(session_id: str, reported: bool = True, **lost: int) -> SessionFigures:
    return SessionFigures(
        session_id=session_id,
        delays_s=[],
        report_after_stop_s=0.4 if reported else None,
        error_codes=["bus_unavailable"] * lost.get("errors", 0),
        dropped_updates=lost.get("dropped", 0),
        unpaired_events=0,
        missing_steps=lost.get("missing", 0),
        send_lag_s=0.0,
        failure=None,
    )


RSS = ("worker-segment-0", "worker-embed-0", "worker-cluster-0", "gateway", "kafka")


def flat_run(**overrides) -> SoakRun:
    samples = [
        # The warm-up: memory climbs while first use compiles; not growth.
        sample(0, dict(zip(RSS, (300, 500, 250, 120, 400))), warm=False),
        sample(60, dict(zip(RSS, (800, 1000, 500, 150, 450))), warm=True),
        sample(120, dict(zip(RSS, (804, 1010, 505, 151, 600))), warm=True),
        sample(180, dict(zip(RSS, (808, 1020, 510, 152, 700))), warm=True),
    ]
    fields = {"samples": samples, "figures": [figures("a"), figures("b")]} | overrides
    return SoakRun(minutes=3, sessions=2, profile="accurate", clips=["dev01"], interval_s=60, **fields)


def test_growth_runs_from_the_first_sample_after_the_warm_up_to_the_last():
    run = flat_run()
    assert math.isclose(growth_pct(run.samples, "worker-segment-0"), 1.0)
    assert math.isclose(growth_pct(run.samples, "worker-embed-0"), 2.0)
    # Only one warm sample, or none: nothing to compare.
    assert math.isnan(growth_pct(run.samples[:2], "gateway"))
    assert math.isnan(growth_pct(run.samples, "not-a-process"))


def test_a_flat_run_with_nothing_lost_passes_and_the_broker_is_not_judged():
    run = flat_run()
    assert run.growth()["kafka"] > 50
    assert run.problems() == []
    assert format_summary(run).splitlines()[-1] == "passed: memory flat and nothing lost"


def test_growth_over_the_limit_in_any_stack_process_fails():
    run = flat_run()
    run.samples[-1].rss_mb["worker-cluster-0"] = 530  # +6 %
    assert run.problems() == ["worker-cluster-0 grew +6.0 % > 5 %"]


def test_losses_and_counted_errors_fail():
    run = flat_run(figures=[figures("a", reported=False), figures("b", errors=1, dropped=2, missing=3)])
    run.samples[-1].errors = {"cluster/processing": 2.0}
    assert run.completed == 1 and run.lost == 1 + 1 + 2 + 3
    problems = run.problems()
    assert problems == [
        "lost: 1 session(s) without a report, 1 error event(s), 2 update(s) dropped, 3 step(s) without an update",
        "errors counted: cluster/processing 2",
    ]
    assert format_summary(run).splitlines()[-1].startswith("FAILED: lost: 1 session(s)")


def test_a_run_too_short_to_warm_up_fails_with_a_reason():
    run = flat_run()
    for s in run.samples:
        s.warm = False
    assert run.problems()[0].startswith("fewer than two samples after the warm-up")


def test_the_table_has_a_row_per_sample_a_column_per_process_and_the_growth():
    run = flat_run()
    lines = format_table(run).splitlines()
    header = lines[1].split()
    assert header[:7] == ["min", "done", "segment", "embed", "cluster", "gateway", "kafka"]
    rows = lines[2:6]
    assert [row.lstrip("*").split()[0] for row in rows] == ["0.0", "1.0", "2.0", "3.0"]
    # The first sample after the warm-up, where growth is counted from, is marked.
    assert [row.startswith("*") for row in rows] == [False, True, False, False]
    assert rows[3].split()[2:7] == ["808", "1020", "510", "152", "700"]
    assert lines[6].split()[2:] == ["+1.0", "+2.0", "+2.0", "+1.3", "+55.6"]


def test_two_workers_of_a_stage_get_a_column_each():
    names = processes(
        [sample(0, {"gateway": 1, "worker-embed-1": 1, "worker-embed-0": 1, "worker-segment-0": 1}, True)]
    )
    assert names == ["worker-segment-0", "worker-embed-0", "worker-embed-1", "gateway"]
    assert column_names(names) == {
        "worker-segment-0": "segment",
        "worker-embed-0": "embed-0",
        "worker-embed-1": "embed-1",
        "gateway": "gateway",
    }
