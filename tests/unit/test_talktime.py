"""Talk-time evaluation: optimal speaker mapping, comparison rows and the table."""

from __future__ import annotations

import pytest

from pipeline.evaluation.talktime import SpeakerComparison, compare, format_table, report_turns
from pipeline.rttm import RttmTurn
from topics.messages import ReportedSpeaker, ReportedTurn, SessionReport


def report(turns: list[tuple[int, float, float]], totals: dict[int, int] | None = None) -> SessionReport:
    """A report with the given turns (speaker, start s, end s); totals default to the turns' lengths."""
    if totals is None:
        totals = {}
        for speaker, start, end in turns:
            totals[speaker] = totals.get(speaker, 0) + round((end - start) * 1000)
    return SessionReport(
        session_id="talktime-test",
        duration_ms=round(max([end for _, _, end in turns], default=0) * 1000),
        speakers=[ReportedSpeaker(id=i, total_time_ms=ms) for i, ms in sorted(totals.items())],
        turns=[ReportedTurn(speaker=s, start_ms=round(a * 1000), end_ms=round(b * 1000)) for s, a, b in turns],
    )


def rows_of(rows: list[SpeakerComparison]) -> list[tuple[str, int | None, int, int]]:
    return [(r.reference, r.hypothesis, r.reference_ms, r.hypothesis_ms) for r in rows]


def test_report_turns_are_the_turns_in_seconds():
    r = report([(0, 0.0, 1.5), (1, 1.5, 2.25)])
    assert report_turns(r) == [RttmTurn("0", 0.0, 1.5), RttmTurn("1", 1.5, 2.25)]


# ---- compare ---------------------------------------------------------------------------------

REFERENCE = [RttmTurn("A", 0.0, 2.0), RttmTurn("B", 2.0, 4.0), RttmTurn("A", 4.0, 5.0)]


def test_matching_labels_compare_directly():
    rows = compare(REFERENCE, report([(0, 0.0, 2.0), (1, 2.0, 4.0), (0, 4.0, 5.0)]))
    assert rows_of(rows) == [("A", 0, 3000, 3000), ("B", 1, 2000, 2000)]
    assert all(r.relative_error == 0 for r in rows)


def test_swapped_labels_are_mapped_by_overlap():
    # The hypothesis calls A "1" and B "0", with talk times a little off.
    hyp = report([(1, 0.0, 2.0), (0, 2.0, 4.0), (1, 4.0, 5.0)], totals={0: 2500, 1: 2700})
    rows = compare(REFERENCE, hyp)
    assert rows_of(rows) == [("A", 1, 3000, 2700), ("B", 0, 2000, 2500)]
    assert rows[0].relative_error == pytest.approx(0.1)
    assert rows[1].relative_error == pytest.approx(0.25)


def test_mapping_is_optimal_not_greedy():
    # Overlaps: A-0 10 s, A-1 9 s, B-0 8 s, B-1 0 s. Greedy (A takes 0) would leave B unmatched;
    # the optimal one-to-one mapping (A-1, B-0) covers 17 s.
    reference = [RttmTurn("A", 0.0, 10.0), RttmTurn("B", 10.0, 18.0)]
    hyp = report([(0, 0.0, 18.0), (1, 1.0, 10.0)], totals={0: 18000, 1: 9000})
    assert rows_of(compare(reference, hyp)) == [("A", 1, 10000, 9000), ("B", 0, 8000, 18000)]


def test_rows_follow_first_appearance_in_the_reference():
    reference = [
        RttmTurn("late", 6.0, 7.0),
        RttmTurn("early", 0.0, 1.0),
        RttmTurn("middle", 3.0, 4.0),
        RttmTurn("early", 8.0, 9.0),
    ]
    rows = compare(reference, report([(0, 0.0, 1.0), (1, 3.0, 4.0), (2, 6.0, 7.0), (0, 8.0, 9.0)]))
    assert rows_of(rows) == [("early", 0, 2000, 2000), ("middle", 1, 1000, 1000), ("late", 2, 1000, 1000)]


def test_a_missing_speaker_has_no_hypothesis_and_full_error():
    reference = REFERENCE + [RttmTurn("C", 5.0, 6.5)]
    rows = compare(reference, report([(0, 0.0, 2.0), (1, 2.0, 4.0), (0, 4.0, 5.0)]))
    assert rows_of(rows) == [("A", 0, 3000, 3000), ("B", 1, 2000, 2000), ("C", None, 1500, 0)]
    assert rows[2].relative_error == 1.0


def test_a_speaker_without_overlap_is_not_matched():
    # The assignment must pair B with someone, but speaker 1 never talks while B does.
    reference = [RttmTurn("A", 0.0, 2.0), RttmTurn("B", 5.0, 6.0)]
    rows = compare(reference, report([(0, 0.0, 2.0), (1, 8.0, 9.0)]))
    assert rows_of(rows) == [("A", 0, 2000, 2000), ("B", None, 1000, 0)]


def test_an_empty_report_matches_nobody():
    rows = compare(REFERENCE, report([]))
    assert rows_of(rows) == [("A", None, 3000, 0), ("B", None, 2000, 0)]
    assert compare([], report([(0, 0.0, 1.0)])) == []


def test_hypothesis_time_comes_from_the_reported_totals():
    # Totals are what users see; turns only decide the mapping.
    rows = compare(REFERENCE, report([(0, 0.0, 2.0), (1, 2.0, 4.0)], totals={0: 2900, 1: 2100}))
    assert rows_of(rows) == [("A", 0, 3000, 2900), ("B", 1, 2000, 2100)]


def test_overlapping_reference_segments_count_once():
    reference = [RttmTurn("A", 0.0, 2.0), RttmTurn("A", 1.0, 3.0)]
    assert rows_of(compare(reference, report([(0, 0.0, 3.0)]))) == [("A", 0, 3000, 3000)]


def test_reference_time_is_exact_for_times_on_the_grid():
    reference = [RttmTurn("A", 0.0, 0.58), RttmTurn("A", 1.0, 1.15)]
    rows = compare(reference, report([(0, 0.0, 0.58), (0, 1.0, 1.15)]))
    assert rows_of(rows) == [("A", 0, 730, 730)]


def test_relative_error_of_an_empty_reference_does_not_divide_by_zero():
    assert SpeakerComparison("A", 0, 0, 250).relative_error == 250.0
    assert SpeakerComparison("A", 0, 0, 0).relative_error == 0.0


# ---- format_table ----------------------------------------------------------------------------


def test_format_table():
    rows = [SpeakerComparison("spk0", 1, 2000, 2500), SpeakerComparison("spk1", None, 1500, 0)]
    lines = format_table(rows).splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["reference", "speaker", "reference", "s", "reported", "s", "error"]
    assert lines[1].split() == ["spk0", "1", "2.0", "2.5", "25.0%"]
    assert lines[2].split() == ["spk1", "-", "1.5", "0.0", "100.0%"]
    # Columns line up: every line is as wide as the header.
    assert len({len(line) for line in lines}) == 1


def test_format_table_of_a_comparison():
    hyp = report([(1, 0.0, 2.0), (0, 2.0, 4.0), (1, 4.0, 5.0)], totals={0: 2500, 1: 2700})
    table = format_table(compare(REFERENCE + [RttmTurn("C", 6.0, 7.0)], hyp))
    assert [line.split() for line in table.splitlines()[1:]] == [
        ["A", "1", "3.0", "2.7", "10.0%"],
        ["B", "0", "2.0", "2.5", "25.0%"],
        ["C", "-", "1.0", "0.0", "100.0%"],
    ]
