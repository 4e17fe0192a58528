"""The demo's conversation has overlapped speech, and its final timeline puts the report under the reference."""

from __future__ import annotations

import pytest

from pipeline.devstack.demo import DEMO_OVERLAPS, demo_script, format_timeline, overlapped_s, overlaps
from pipeline.devstack.synthetic import TWO_SPEAKER_SCRIPT, synthesize
from pipeline.rttm import RttmTurn
from topics import ReportedSpeaker, SessionReport
from topics.messages import ReportedTurn


@pytest.fixture(scope="module")
def conversation():
    return synthesize(demo_script(2))


def test_the_demo_conversation_has_its_interruptions(conversation):
    segments = conversation.segments
    assert len(segments) == len(TWO_SPEAKER_SCRIPT)
    for index, seconds in DEMO_OVERLAPS.items():
        previous, turn = segments[index - 1], segments[index]
        assert turn.speaker != previous.speaker
        assert previous.end_s - turn.start_s == pytest.approx(seconds, abs=1e-3)
    assert overlapped_s(conversation.reference_turns()) == pytest.approx(sum(DEMO_OVERLAPS.values()), abs=1e-3)
    assert conversation.duration_s == pytest.approx(segments[-1].end_s + 0.5, abs=1e-3)


def test_overlaps_are_where_two_talk():
    turns = [RttmTurn("a", 0.0, 3.0), RttmTurn("b", 2.0, 5.0), RttmTurn("a", 4.5, 6.0), RttmTurn("b", 7.0, 8.0)]
    assert [(t.start_s, t.end_s) for t in overlaps(turns)] == [(2.0, 3.0), (4.5, 5.0)]
    assert overlapped_s(turns) == pytest.approx(1.5)
    assert overlaps([RttmTurn("a", 0.0, 1.0), RttmTurn("b", 1.0, 2.0)]) == []


def test_the_timeline_puts_each_reported_speaker_under_its_reference():
    reference = [RttmTurn("spk0", 0.0, 4.0), RttmTurn("spk1", 3.0, 8.0)]
    report = SessionReport(
        session_id="demo",
        duration_ms=8000,
        speakers=[ReportedSpeaker(id=0, total_time_ms=5000), ReportedSpeaker(id=1, total_time_ms=4000)],
        turns=[ReportedTurn(speaker=1, start_ms=0, end_ms=4000), ReportedTurn(speaker=0, start_ms=4000, end_ms=8000)],
    )
    lines = format_timeline(reference, report, duration_s=8.0).splitlines()
    rows = {line[:18].strip(): line[19:] for line in lines[1:-1]}
    assert lines[0].split() == ["0s"]
    # One character per 0.25 s: spk0 talks 0-4 s, matched to reported speaker 1 (0-4 s).
    assert rows["reference spk0"] == "█" * 16
    assert rows["report  1"] == "█" * 16
    assert rows["reference spk1"] == " " * 12 + "█" * 20
    assert rows["report  0"] == " " * 16 + "█" * 16
    assert rows["reference overlap"] == " " * 12 + "█" * 4
    assert rows["report  overlap"] == ""  # the report heard no overlap
    assert lines[-1].startswith("one character = 0.25 s")
