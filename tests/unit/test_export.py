"""`speakerflow export`'s formats: one session report written as RTTM, JSON, CSV and text."""

from __future__ import annotations

import csv
import io

import pytest

from pipeline.export import format_report
from topics import LabeledSpan, ReportedSpeaker, SessionReport

REPORT = SessionReport(
    session_id="call-7",
    duration_ms=12_000,
    speakers=[ReportedSpeaker(id=0, total_time_ms=6_500), ReportedSpeaker(id=1, total_time_ms=4_000)],
    turns=[
        LabeledSpan(speaker=0, start_ms=0, end_ms=5_000),
        LabeledSpan(speaker=1, start_ms=4_500, end_ms=8_500),  # overlaps speaker 0's turn
        LabeledSpan(speaker=0, start_ms=9_000, end_ms=10_500),
    ],
)


def test_rttm_has_one_line_per_turn_in_seconds():
    lines = format_report(REPORT, "rttm").splitlines()
    assert lines[1] == "SPEAKER call-7 1 4.500 4.000 <NA> <NA> spk1 <NA> <NA>"
    assert len(lines) == 3


def test_json_round_trips():
    assert SessionReport.model_validate_json(format_report(REPORT, "json")) == REPORT


def test_csv_has_a_header_and_durations():
    rows = list(csv.DictReader(io.StringIO(format_report(REPORT, "csv"))))
    assert [r["speaker"] for r in rows] == ["0", "1", "0"]
    assert rows[2]["duration_s"] == "1.500"


def test_text_names_talk_time_per_speaker():
    text = format_report(REPORT, "text")
    assert "2 speakers" in text and "speaker 1: 4.0 s" in text


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="known"):
        format_report(REPORT, "xml")
