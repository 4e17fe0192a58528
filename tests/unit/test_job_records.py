"""Batch jobs without Kafka: the job record, its progress, its results under job-wide labels, every export, the view."""

from __future__ import annotations

import csv
import io
import json

import pytest

from pipeline.gateway.compacted_view import CompactedView
from pipeline.gateway.jobs_api import EXPORT_FORMATS, JobOut, export, results_of
from topics import JOBS, DecodeError, ReportedSpeaker, SessionReport
from topics.jobs import BatchJob, JobClip, JobVoice, decode_job, encode_job, encode_job_tombstone
from topics.messages import ReportedTurn


def job(**changes) -> BatchJob:
    base = BatchJob(
        job_id="j1",
        created_ms=1,
        updated_ms=2,
        clips=[
            JobClip(name="monday.wav", session_id="job-j1-0", duration_ms=10_000, progress_ms=10_000, status="done"),
            JobClip(
                name="tuesday.flac", session_id="job-j1-1", duration_ms=30_000, progress_ms=6_000, status="running"
            ),
        ],
    )
    return base.model_copy(update=changes)


def reports() -> dict[str, SessionReport]:
    def report(session: str, names: dict[int, str | None]) -> SessionReport:
        return SessionReport(
            session_id=session,
            duration_ms=10_000,
            speakers=[ReportedSpeaker(id=i, total_time_ms=1000, speaker_name=n) for i, n in names.items()],
            turns=[ReportedTurn(speaker=i, start_ms=1000 * i, end_ms=1000 * i + 800) for i in names],
        )

    return {"job-j1-0": report("job-j1-0", {0: None, 1: "Ada"}), "job-j1-1": report("job-j1-1", {0: "Ada", 1: None})}


VOICES = [
    JobVoice(label="speaker 1", members=[("job-j1-0", 0)]),
    JobVoice(label="Ada", profile_id="p1", members=[("job-j1-0", 1), ("job-j1-1", 0)]),
    JobVoice(label="speaker 2", members=[("job-j1-1", 1)]),
]


def test_a_job_record_round_trips_and_a_tombstone_deletes():
    record = job()
    key, value, headers = encode_job(record)
    assert key == b"default/j1"
    assert decode_job(key, value, headers) == record
    assert decode_job(*encode_job_tombstone(key)) is None
    with pytest.raises(DecodeError):
        decode_job(b"default/other", value)


def test_progress_counts_the_audio_labelled_per_clip_and_overall():
    out = JobOut.of(job()).model_dump(mode="json")
    assert out["progress"] == pytest.approx((10_000 + 6_000) / 40_000)
    assert [c["progress"] for c in out["clips"]] == [1.0, 0.2]
    assert out["clips"][1]["sessionId"] == "job-j1-1"


def test_results_label_one_voice_alike_in_every_clip():
    results = results_of(job(voices=VOICES, status="done"), reports())
    assert results.labels == ["speaker 1", "Ada", "speaker 2"]
    first, second = results.clips
    assert [s.label for s in first.speakers] == ["speaker 1", "Ada"]
    assert [s.label for s in second.speakers] == ["Ada", "speaker 2"]
    assert [t.label for t in second.turns] == ["Ada", "speaker 2"]


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_export_format_carries_the_labels(fmt):
    results = results_of(job(voices=VOICES, status="done"), reports())
    text = export(results, fmt)
    if fmt == "json":
        assert json.loads(text)["labels"] == results.labels
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["clip"], r["label"]) for r in rows][:2] == [("monday.wav", "speaker 1"), ("monday.wav", "Ada")]
    elif fmt == "rttm":
        fields = [line.split() for line in text.splitlines()]
        assert {f[1] for f in fields} == {"monday", "tuesday"}
        assert {f[7] for f in fields} == {"speaker_1", "Ada", "speaker_2"}
    else:
        assert text.startswith("job j1: 2 clips, 3 voices") and "Ada" in text
    with pytest.raises(ValueError):
        export(results, "xml")


def test_the_view_is_not_undone_when_its_own_earlier_writes_are_read_back():
    seen = []
    view = CompactedView("unused:9092", JOBS, on_change=lambda key, value: seen.append(value))
    view.put(b"k", b"v1")
    view.put(b"k", b"v2")
    view._read(b"k", b"v1")  # the topic echoes the first write after the second was applied
    assert view.records[b"k"] == b"v2"
    view._read(b"k", b"v2")
    assert view.records[b"k"] == b"v2"
    view._read(b"k", b"v3")  # another gateway's write is the newest
    assert view.records[b"k"] == b"v3"
    view.put(b"k", None)
    view._read(b"k", None)
    assert b"k" not in view.records
    assert seen == [b"v1", b"v2", b"v3", None]
