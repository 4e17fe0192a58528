"""`speakerflow export`: a session's report read back from the real broker, in each format."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator

import pytest

from pipeline.bus import ensure_topics, new_producer, publish
from pipeline.cli import main
from pipeline.export import ReportNotFound, fetch_report, format_report
from topics import SESSION_REPORTS, LabeledSpan, ReportedSpeaker, SessionReport

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


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    from pipeline.devstack.broker import KafkaBroker

    with KafkaBroker() as broker:
        asyncio.run(ensure_topics(broker.bootstrap_servers))
        yield broker.bootstrap_servers


async def _publish(bootstrap: str, *reports: SessionReport) -> None:
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        for report in reports:
            await publish(producer, SESSION_REPORTS, report)
    finally:
        await producer.stop()


@pytest.mark.integration
def test_export_reads_the_newest_report_of_the_session(bootstrap, monkeypatch, capsys):
    earlier = REPORT.model_copy(update={"duration_ms": 1})
    other = REPORT.model_copy(update={"session_id": "call-8"})
    asyncio.run(_publish(bootstrap, earlier, other, REPORT))
    assert asyncio.run(fetch_report(bootstrap, "call-7")) == REPORT
    with pytest.raises(ReportNotFound):
        asyncio.run(fetch_report(bootstrap, "never-ran"))

    monkeypatch.setenv("SPEAKERFLOW_KAFKA", bootstrap)
    assert main(["export", "call-8", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["session_id"] == "call-8"
    with pytest.raises(SystemExit, match="no report"):
        main(["export", "never-ran"])
