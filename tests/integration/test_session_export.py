"""`speakerflow export`: a session's report read back from the real broker (the formats: tests/unit/test_export.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from pipeline.bus import new_producer, publish
from pipeline.cli import main
from pipeline.export import ReportNotFound, fetch_report
from topics import SESSION_REPORTS, LabeledSpan, ReportedSpeaker, SessionReport

REPORT = SessionReport(
    session_id="call-7",
    duration_ms=12_000,
    speakers=[ReportedSpeaker(id=0, total_time_ms=6_500), ReportedSpeaker(id=1, total_time_ms=4_000)],
    turns=[LabeledSpan(speaker=0, start_ms=0, end_ms=5_000), LabeledSpan(speaker=1, start_ms=4_500, end_ms=8_500)],
)


async def _publish(bootstrap: str, *reports: SessionReport) -> None:
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        for report in reports:
            await publish(producer, SESSION_REPORTS, report)
    finally:
        await producer.stop()


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
