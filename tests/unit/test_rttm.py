"""RTTM I/O: reading SPEAKER lines, writing them, and what speakerflow's writers produce."""

from __future__ import annotations

import pytest

from pipeline.devstack.synthetic import Conversation, Segment
from pipeline.rttm import RttmTurn, format_rttm, read_rttm, span_turns, write_rttm
from topics import LabeledSpan

RTTM = """\
SPKR-INFO meeting 1 <NA> <NA> <NA> unknown alice <NA> <NA>
SPEAKER meeting 1 0.500 2.250 <NA> <NA> alice <NA> <NA>
;; a comment line
SPEAKER other 1 0.000 9.000 <NA> <NA> carol <NA> <NA>

SPEAKER meeting 1   3.000   1.500 <NA> <NA> bob <NA> <NA>
SPEAKER meeting 1 4.5
SPEAKER meeting 1 5.000 0.750 <NA> <NA> alice
"""


def test_read_rttm_reads_speaker_lines(tmp_path):
    path = tmp_path / "ref.rttm"
    path.write_text(RTTM)
    assert read_rttm(path) == [
        RttmTurn("alice", 0.5, 2.75),
        RttmTurn("carol", 0.0, 9.0),
        RttmTurn("bob", 3.0, 4.5),
        RttmTurn("alice", 5.0, 5.75),
    ]


def test_read_rttm_filters_by_uri(tmp_path):
    path = tmp_path / "ref.rttm"
    path.write_text(RTTM)
    assert [t.speaker for t in read_rttm(path, uri="meeting")] == ["alice", "bob", "alice"]
    assert read_rttm(path, uri="other") == [RttmTurn("carol", 0.0, 9.0)]
    assert read_rttm(path, uri="absent") == []


def test_read_rttm_reads_what_the_synthesizer_writes(tmp_path):
    conversation = Conversation(
        audio=None,  # only the segments matter for RTTM
        sample_rate=16000,
        segments=[Segment(0, 0.5, 3.33), Segment(1, 3.9485, 6.1285), Segment(0, 6.563375, 9.353375)],
    )
    path = tmp_path / "conv.rttm"
    path.write_text(conversation.to_rttm("conv"))
    turns = read_rttm(path, uri="conv")
    assert [t.speaker for t in turns] == ["spk0", "spk1", "spk0"]
    for got, want in zip(turns, conversation.segments):
        assert got.start_s == pytest.approx(want.start_s, abs=1e-3)
        assert got.end_s == pytest.approx(want.end_s, abs=2e-3)


def test_written_turns_read_back(tmp_path):
    turns = [RttmTurn("spk0", 0.0, 1.25), RttmTurn("spk1", 1.0, 3.5)]
    path = tmp_path / "talk.rttm"
    write_rttm(path, "talk", turns)
    assert path.read_text().splitlines()[1] == "SPEAKER talk 1 1.000 2.500 <NA> <NA> spk1 <NA> <NA>"
    assert read_rttm(path, uri="talk") == turns


@pytest.mark.parametrize("uri", ["", "my meeting", "tab\tbed"])
def test_a_uri_must_be_one_token(uri):
    with pytest.raises(ValueError, match="uri"):
        format_rttm(uri, [])


def test_spans_of_the_bus_become_turns_of_numbered_speakers():
    spans = [LabeledSpan(speaker=0, start_ms=0, end_ms=5_000), LabeledSpan(speaker=3, start_ms=4_500, end_ms=8_500)]
    assert span_turns(spans) == [RttmTurn("spk0", 0.0, 5.0), RttmTurn("spk3", 4.5, 8.5)]
