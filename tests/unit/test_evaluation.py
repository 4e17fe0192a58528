"""The DER harness end to end: a synthesized conversation, its RTTM, both profiles, live and report labels."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.config import load_profile
from pipeline.evaluation.der import (
    EvaluationError,
    conditions,
    evaluate,
    evaluate_conditions,
    find_recordings,
    parse_count,
    with_latency,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, two_speaker_conversation):
    root = tmp_path_factory.mktemp("corpus")
    conversation = two_speaker_conversation
    (root / "audio").mkdir()
    (root / "labels").mkdir()
    conversation.write_wav(root / "audio" / "talk.wav")
    (root / "labels" / "talk.rttm").write_text(conversation.to_rttm("talk"))
    (root / "audio" / "unlabelled.wav").write_bytes((root / "audio" / "talk.wav").read_bytes())
    return root


def test_recordings_pair_with_rttms_of_the_same_name_anywhere(corpus):
    (recording,) = find_recordings(corpus)
    assert recording.uri == "talk"
    assert recording.rttm.parent.name == "labels"
    assert recording.uem is None


def test_excluded_recordings_are_left_out(corpus):
    with pytest.raises(EvaluationError):
        find_recordings(corpus, exclude=("talk",))


def test_a_folder_without_labelled_audio_is_refused(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    with pytest.raises(EvaluationError, match="RTTM"):
        find_recordings(tmp_path)


def test_latency_is_bounded_by_step_and_window():
    accurate = load_profile("accurate")
    assert with_latency(accurate, 2.0).overlap_clustering.latency_s == 2.0
    with pytest.raises(EvaluationError):
        with_latency(accurate, 0.1)
    with pytest.raises(EvaluationError, match="accurate"):
        with_latency(load_profile("fast"), 2.0)
    assert with_latency(load_profile("fast"), 1.0) == load_profile("fast")  # its own latency


@pytest.mark.parametrize("profile, use_report", [("fast", False), ("accurate", False), ("accurate", True)])
def test_harness_scores_a_synthesized_conversation(corpus, tmp_path, profile, use_report):
    summary = evaluate(corpus, load_profile(profile), use_report=use_report, rttm_out=tmp_path, progress=False)
    talk = summary["files"]["talk"]
    assert summary["labels"] == ("report" if use_report else "live")
    # One labelled recording in the corpus: the pooled scores are its own.
    for key in ("der", "der_no_collar", "jer", "missed", "false_alarm", "confusion", "speech_s"):
        assert summary["pooled"][key] == pytest.approx(talk[key]), key
    assert talk["der_no_collar"] >= talk["der"]  # the collar only forgives
    assert talk["der"] == pytest.approx(talk["missed"] + talk["false_alarm"] + talk["confusion"])
    # Two clear synthetic voices: both found, and most speech labelled right.
    assert talk["speakers_found"] == 2
    assert talk["der"] < 0.25
    rttm = (tmp_path / "talk.rttm").read_text().splitlines()
    assert rttm and all(line.startswith("SPEAKER talk 1 ") for line in rttm)


def test_cli_writes_json_summary(corpus, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert main(["eval", str(corpus), "--profile", "fast", "--collar", "0", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert set(summary) >= {"pooled", "files", "profile", "latency", "collar"}
    assert set(summary["pooled"]) >= {"der", "jer", "missed", "false_alarm", "confusion"}
    assert (summary["profile"], summary["collar"], summary["labels"]) == ("fast", 0.0, "live")
    talk = summary["files"]["talk"]
    assert (talk["speakers"], talk["speakers_found"]) == (2, 2)
    # --collar 0 reached the scoring: the DER is the collar-free one.
    assert talk["der"] == pytest.approx(talk["der_no_collar"])
    assert summary["pooled"]["der"] == pytest.approx(talk["der"])
    # The table on stdout shows the scores the file holds.
    printed = capsys.readouterr().out.splitlines()
    row = next(line for line in printed if line.startswith("talk "))
    assert f"{100 * talk['der']:6.2f}%" in row and row.endswith(" 2/2")
    assert any(line.startswith("pooled ") for line in printed)


def test_one_pass_scores_every_condition_as_separate_runs_would(corpus):
    accurate = load_profile("accurate")
    rows = conditions(accurate, latencies=(1.0, 5.0), counts=("none", "oracle"), labels=("live", "report"))
    assert [r.name for r in rows] == [
        "live@1s count=none",
        "live@5s count=none",
        "report count=none",
        "live@1s count=oracle",
        "live@5s count=oracle",
        "report count=oracle",
    ]
    summaries = evaluate_conditions(corpus, accurate, rows, progress=False)
    alone = evaluate(corpus, with_latency(accurate, 5.0), progress=False)
    assert summaries[1]["pooled"] == alone["pooled"]
    alone = evaluate(corpus, accurate, use_report=True, count="oracle", progress=False)
    assert summaries[5]["pooled"] == alone["pooled"]
    # oracle: the session is told the reference's own count (two voices).
    assert [s["num_speakers"] for s in summaries] == ["none"] * 3 + ["oracle"] * 3
    assert all(s["files"]["talk"]["speakers_found"] == 2 for s in summaries[3:])


def test_counts_are_none_oracle_or_a_number():
    assert [parse_count(c) for c in ("none", "oracle", "3")] == ["none", "oracle", "3"]
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(EvaluationError):
            parse_count(bad)


def test_cli_prints_one_pooled_row_per_condition(corpus, tmp_path, capsys):
    out = tmp_path / "grid.json"
    args = ["eval", str(corpus), "--profile", "fast", "--num-speakers", "none,2", "--labels", "live,report"]
    assert main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    names = ["live@1s count=none", "report count=none", "live@1s count=2", "report count=2"]
    assert [line.split("  ")[0].strip() for line in printed[2:]] == names
    assert [s["num_speakers"] for s in json.loads(out.read_text())["conditions"]] == ["none", "none", "2", "2"]
