"""What a stack serves, scored like the harness: two dev-set conversations in-process and through the gateway.

Both ways run the accurate profile with the speaker count given (oracle). Through the stack
the conversations are live sessions of the seed protocol, sent as fast as possible, and
what their clients are served is scored (`speakerflow eval --through`): the spans of the
speaker updates and the report event. The same stages on the same audio must score the
same: DER within one point, pooled and per file, and the report's talk time per speaker
within one step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile

from pipeline.config import load_profile
from pipeline.evaluation.chain import ChainResult
from pipeline.evaluation.der import (
    Condition,
    Recording,
    conditions,
    evaluate_conditions,
    find_recordings,
    format_summary,
)
from pipeline.evaluation.served import ServedSession, evaluate_served

DEVSET = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "devset").resolve()
DER_POINTS = 1.0


@pytest.fixture(scope="module")
def all_but_two_shortest() -> tuple[str, ...]:
    """The dev set's recordings left out: every one but its two shortest conversations."""
    if not DEVSET.is_dir():
        pytest.skip(f"no dev set at {DEVSET} (the shared data folder beside the repository)")
    recordings = sorted(find_recordings(DEVSET), key=lambda r: soundfile.info(str(r.audio)).duration)
    return tuple(r.uri for r in recordings[2:])


def test_served_labels_score_as_the_in_process_chain(local_stack, all_but_two_shortest):
    profile = load_profile("accurate")
    rows = conditions(profile, counts=("oracle",), labels=("live", "report"))
    in_process_reports = {}

    def keep_report(recording: Recording, row: Condition, result: ChainResult) -> None:
        if row.labels == "report":
            in_process_reports[recording.uri] = result.report

    in_process = evaluate_conditions(
        DEVSET, profile, rows, progress=False, exclude=all_but_two_shortest, on_result=keep_report
    )
    sessions: list[ServedSession] = []
    with local_stack("served", report_timeout_s=600, profile=profile.name) as stack:
        served = evaluate_served(
            DEVSET,
            profile,
            rows,
            stack.session_url,
            stack.settings.kafka,
            speed=0,
            progress=False,
            exclude=all_but_two_shortest,
            on_session=sessions.append,
        )
    for expected, got in zip(in_process, served):
        print(f"\nin-process\n{format_summary(expected)}\nserved\n{format_summary(got)}")

    for expected, got in zip(in_process, served, strict=True):
        assert (got["labels"], got["num_speakers"]) == (expected["labels"], expected["num_speakers"])
        assert got["files"].keys() == expected["files"].keys()
        scored = [("pooled", got["pooled"], expected["pooled"])]
        scored += [(uri, got["files"][uri], expected["files"][uri]) for uri in expected["files"]]
        for name, served_scores, in_process_scores in scored:
            assert abs(served_scores["der"] - in_process_scores["der"]) * 100 <= DER_POINTS, (got["labels"], name)

    step_ms = round(profile.segmentation.step_s * 1000)
    assert sorted(s.recording.uri for s in sessions) == sorted(in_process_reports)
    for session in sessions:
        expected_talk = {s.id: s.total_time_ms for s in in_process_reports[session.recording.uri].speakers}
        served_talk = {s.id: s.total_time_ms for s in session.report.speakers}
        assert served_talk.keys() == expected_talk.keys(), (session.recording.uri, served_talk, expected_talk)
        for speaker, talk_ms in expected_talk.items():
            assert abs(served_talk[speaker] - talk_ms) <= step_ms, (session.recording.uri, served_talk, expected_talk)
