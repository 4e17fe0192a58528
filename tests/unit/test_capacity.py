"""The capacity benchmark's figures: pairing events with updates, delays, lost steps, the held verdict, the table."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.config import load_profile
from pipeline.devstack.capacity import (
    REPORT_WITHIN_S,
    StepFigures,
    format_header,
    format_row,
    format_table,
    largest_held,
    missing_steps,
    not_held,
    pair_updates,
    parse_sessions,
    parse_workers,
    percentile,
    reference_count,
    send_lag,
    sent_at,
    session_figures,
    step_figures,
)
from pipeline.devstack.capacity_client import SessionTrace
from pipeline.gateway.protocol import result_event
from topics import SpeakerUpdate

RATE = 16_000
ACCURATE = load_profile("accurate")


def _update(position_ms: int, talk_ms: int, session_id: str = "s") -> SpeakerUpdate:
    return SpeakerUpdate(
        session_id=session_id,
        position_ms=position_ms,
        current_speaker=0 if talk_ms else None,
        active_speakers=[0] if talk_ms else [],
        speaking_time_ms={0: talk_ms} if talk_ms else {},
        ingest_ms=0,
    )


def _event(update: SpeakerUpdate) -> dict:
    return result_event(update).wire()


def _trace(updates: list[SpeakerUpdate], arrival_lag_s: float, seconds: float = 4.0) -> SessionTrace:
    """A session whose 0.2 s frames left in real time from t=100, each update arriving `arrival_lag_s` after its audio."""
    frame = RATE // 5
    sent = [(n, 100.0 + n / RATE) for n in range(frame, int(seconds * RATE) + 1, frame)]
    events = [(100.0 + u.position_ms / 1000 + arrival_lag_s, _event(u)) for u in updates]
    stopped_at = sent[-1][1]
    events.append((stopped_at + 0.4, {"event": "report", "speakers": [], "turns": []}))
    return SessionTrace("s", int(seconds * RATE), sent, events, stopped_at=stopped_at, reported_at=stopped_at + 0.4)


def _step(**changes) -> StepFigures:
    step = StepFigures(
        sessions=4,
        session_s=240.0,
        wall_s=62.0,
        delay_p50_s=1.1,
        delay_p95_s=1.4,
        delay_p99_s=1.6,
        report_max_s=0.5,
        report_p95_s=0.4,
        without_report=0,
        error_events=0,
        dropped_updates=0,
        missing_steps=0,
        unpaired_events=0,
        send_lag_max_s=0.0,
        cpu={"worker-segment-0": 0.6, "worker-segment-1": 0.3, "worker-embed-0": 0.2, "gateway": 0.05, "kafka": 0.1},
        rss_peak_mb={"worker-segment-0": 900.0, "worker-embed-0": 700.0, "worker-cluster-0": 300.0, "kafka": 600.0},
        worker_rss_idle_mb=1800.0,
        changelog_bytes={"speakerflow-segment-segment-sessions-changelog": 48_000_000},
        changelog_records={"speakerflow-segment-segment-sessions-changelog": 1200},
    )
    return replace(step, **changes)


def test_percentile_interpolates_and_is_nan_without_values():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert math.isnan(percentile([], 95))


def test_sent_at_is_when_the_frame_reaching_the_position_left():
    sent = [(3200, 1.0), (6400, 1.2), (9600, 1.4)]
    assert sent_at(sent, 3200) == 1.0
    assert sent_at(sent, 3201) == 1.2  # inside the second frame
    assert sent_at(sent, 100_000) == 1.4  # beyond the audio: the last frame


def test_updates_pair_in_order_and_a_drop_pairs_with_the_earliest_alike():
    updates = [_update(1000, 0), _update(1500, 0), _update(2000, 500), _update(2500, 1000)]
    events = [_event(u) for u in updates]
    assert pair_updates(events, updates) == [0, 1, 2, 3]
    # The gateway dropped the second (silent) update: the silent event pairs with the first, the rest in order.
    assert pair_updates([events[0], events[2], events[3]], updates) == [0, 2, 3]
    # An event nothing on the bus reads as pairs with nothing; fields the bus has not (names) do not matter.
    stranger = _event(_update(9000, 7000))
    assert pair_updates([events[0] | {"speakerName": "Ada"}, stranger], updates) == [0, None]


def test_missing_steps_counts_the_gaps_between_updates():
    assert missing_steps([500, 1000, 1500, 2000], 500, 3000) == 0
    assert missing_steps([500, 1000, 2500], 500, 3000) == 2  # 1500 and 2000
    assert missing_steps([2500, 500, 1000], 500, 3000) == 2  # in any order
    assert missing_steps([500, 1000, 1500, 3000], 500, 3000) == 0  # the stop settles the rest at the end
    assert missing_steps([], 500, 3000) == 6  # no update at all: every step


def test_delay_is_arrival_minus_when_the_audio_up_to_the_position_was_sent():
    # Positions on frame boundaries (0.2 s), so the audio up to each left exactly at its position's time.
    updates = [_update(ms, max(0, ms - 1000)) for ms in range(1200, 3201, 400)]
    figures = session_figures(_trace(updates, arrival_lag_s=1.2), updates, step_s=0.4)
    assert figures.delays_s == pytest.approx([1.2] * len(updates))
    # Mid-frame, the audio up to the position left with the frame that holds it, up to 0.2 s later.
    mid = [_update(1300, 300)]
    assert session_figures(_trace(mid, 1.2), mid, step_s=0.5).delays_s == pytest.approx([1.1])
    assert figures.report_after_stop_s == pytest.approx(0.4)
    assert (figures.dropped_updates, figures.unpaired_events, figures.missing_steps) == (0, 0, 0)
    assert figures.error_codes == [] and figures.failure is None


def test_an_update_the_client_never_got_is_dropped_and_an_error_is_counted():
    updates = [_update(ms, ms) for ms in range(1000, 3001, 500)]
    trace = _trace(updates[:2] + updates[3:], arrival_lag_s=1.0)
    trace.events.insert(1, (101.5, {"event": "error", "code": "report_timeout", "message": "late"}))
    figures = session_figures(trace, updates, step_s=0.5)
    assert figures.dropped_updates == 1 and figures.updates_after_report == 0
    assert figures.error_codes == ["report_timeout"]
    assert len(figures.delays_s) == 4


def test_updates_that_reach_the_gateway_after_the_report_are_not_lost():
    updates = [_update(ms, ms) for ms in range(1000, 3001, 500)]
    figures = session_figures(_trace(updates[:-1], arrival_lag_s=1.0), updates, step_s=0.5)
    assert figures.dropped_updates == 0 and figures.updates_after_report == 1


def test_step_figures_pool_sessions_and_a_session_without_report_counts():
    updates = [_update(ms, max(0, ms - 1000)) for ms in range(1000, 3001, 500)]
    late = _trace(updates, arrival_lag_s=2.0)
    late.session_id = "late"
    late.reported_at = None
    step = step_figures(
        [_trace(updates, arrival_lag_s=1.0), late],
        {"s": updates, "late": updates},
        ACCURATE,
        wall_s=5.0,
        cpu={},
        rss_peak_mb={},
        worker_rss_idle_mb=0.0,
        changelog={"t-changelog": (10, 8000)},
    )
    assert step.sessions == 2 and step.session_s == 8.0
    # Delays 0.9-1.0 s (positions mid-frame are 0.1 s shorter) and 1.9-2.0 s: the median lies between.
    assert step.delay_p50_s == pytest.approx(1.45)
    assert step.without_report == 1 and step.report_max_s == pytest.approx(0.4)
    assert step.changelog_kb_per_session_s == pytest.approx(1.0)
    assert step.lost == 1


def test_send_lag_is_how_far_frames_fell_behind_real_time():
    on_time = [(3200, 10.0), (6400, 10.2), (9600, 10.4)]
    assert send_lag(on_time) == pytest.approx(0.0)
    assert send_lag([(3200, 10.0), (6400, 10.2), (9600, 10.9)]) == pytest.approx(0.5)


def test_held_needs_the_delay_the_reports_and_nothing_lost():
    assert not_held(_step(), latency_s=1.0) == []
    assert not_held(_step(delay_p95_s=1.5), latency_s=1.0) == []  # exactly latency + 0.5 s holds
    assert "p95 delay" in not_held(_step(delay_p95_s=1.51), latency_s=1.0)[0]
    assert not_held(_step(delay_p95_s=math.nan), latency_s=1.0)  # no update at all
    assert not_held(_step(report_max_s=REPORT_WITHIN_S + 0.1), latency_s=1.0)
    assert "without a report" in not_held(_step(without_report=1), latency_s=1.0)[0]
    assert not_held(_step(dropped_updates=1), latency_s=1.0)
    assert not_held(_step(missing_steps=2), latency_s=1.0)


def test_largest_held_stops_at_the_first_step_not_held():
    steps = [_step(sessions=2), _step(sessions=4), _step(sessions=8, delay_p95_s=9.0), _step(sessions=12)]
    assert largest_held(steps, latency_s=1.0) == 4
    assert largest_held(steps[2:], latency_s=1.0) == 0


def test_table_rows_line_up_with_the_header_and_sum_each_stage():
    header = format_header().splitlines()
    row = format_row(_step(), latency_s=1.0)
    assert len(header) == 2 and len(row) == len(header[1])
    for title in ("update delay s", "report s", "CPU s per s", "RSS MB", "changelog"):
        assert title in header[0]
    cells = row.split()
    named = dict(zip(header[1].split(), cells))
    assert named["sessions"] == "4" and named["lost"] == "0"
    assert named["segment"] == "0.90"  # both segment workers
    assert named["workers"] == "1900"  # stage workers only, not kafka
    assert named["+/session"] == "25.0"  # (1900 - 1800) / 4
    assert named["KB/session-s"] == "200.0"  # 48 MB over 240 session-seconds
    assert cells[-1] == "yes"
    assert format_row(_step(error_events=1), latency_s=1.0).split()[-1] == "no"
    assert format_table([_step(), _step(sessions=8)], 1.0).count("\n") == 3


def test_options_parse_or_say_what_is_wrong():
    assert parse_sessions("1, 2,4") == [1, 2, 4]
    assert parse_workers("segment=2,embed=3") == {"segment": 2, "embed": 3, "cluster": 1}
    assert parse_workers(None) == {"segment": 1, "embed": 1, "cluster": 1}
    for bad in ("", "0,2", "two"):
        with pytest.raises(ValueError, match="--sessions"):
            parse_sessions(bad)
    for bad in ("vad=2", "segment=0", "segment"):
        with pytest.raises(ValueError, match="--workers"):
            parse_workers(bad)


def test_reference_count_is_who_talks_within_the_cut(tmp_path: Path):
    rttm = tmp_path / "a.rttm"
    rttm.write_text(
        "SPEAKER a 1 0.0 5.0 <NA> <NA> A <NA> <NA>\n"
        "SPEAKER a 1 4.0 3.0 <NA> <NA> B <NA> <NA>\n"
        "SPEAKER a 1 70.0 3.0 <NA> <NA> C <NA> <NA>\n"
    )
    assert reference_count(rttm, 60.0) == 2
    assert reference_count(rttm, 100.0) == 3
    assert reference_count(rttm, 1.0) == 1
