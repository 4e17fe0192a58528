"""Batch jobs on real parts: clips submitted to the gateway, run through the workers, their speakers linked.

dev09 and dev10 of the dev set (../shared/data/devset) share one reader, LS4018; their other
readers are all different. The job must give LS4018 one label in both and no label two readers.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx
import pytest

from pipeline.evaluation.linking import reader_of_speakers
from pipeline.rttm import read_rttm
from topics import ReportedSpeaker, SessionReport
from topics.messages import ReportedTurn

DEVSET = Path(__file__).parents[2] / ".." / "shared" / "data" / "devset"
CLIPS = ("dev09", "dev10")


@pytest.fixture(scope="module")
def stack(local_stack):
    with local_stack("jobs", report_timeout_s=300) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack):
    with httpx.Client(base_url=stack.gateway_url, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def finished_job(api) -> tuple[dict, list[dict]]:
    """A job of both clips, followed over its event stream to the end: (its final status, every event)."""
    files = [("clips", (f"{uri}.flac", (DEVSET / "audio" / f"{uri}.flac").read_bytes())) for uri in CLIPS]
    response = api.post("/v1/jobs", files=files)
    assert response.status_code == 202, response.text
    job = response.json()
    assert [c["name"] for c in job["clips"]] == [f"{uri}.flac" for uri in CLIPS]
    events = []
    with api.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    return api.get(f"/v1/jobs/{job['id']}").json(), events


def test_progress_is_streamed_per_clip_and_overall_until_the_job_is_done(finished_job):
    job, events = finished_job
    assert job["status"] == "done" and job["progress"] == 1.0
    assert all(c["status"] == "done" for c in job["clips"])
    assert events[-1]["status"] == "done" and len(events) >= 4
    overall = [e["progress"] for e in events]
    assert overall == sorted(overall)
    assert any(0 < p < 1 for p in overall)  # seen mid-way, not only at the ends
    for index in range(len(CLIPS)):
        per_clip = [e["clips"][index]["progress"] for e in events]
        assert per_clip == sorted(per_clip) and per_clip[-1] == 1.0


def test_the_recurring_reader_has_one_label_and_no_label_two_readers(api, finished_job):
    job, _ = finished_job
    results = api.get(f"/v1/jobs/{job['id']}/results").json()
    reader_labels: dict[str, set[str]] = {}
    label_readers: dict[str, set[str]] = {}
    for clip, uri in zip(results["clips"], CLIPS):
        report = SessionReport(
            session_id=uri,
            duration_ms=clip["durationMs"],
            speakers=[ReportedSpeaker(id=s["id"], total_time_ms=s["totalTimeMs"]) for s in clip["speakers"]],
            turns=[
                ReportedTurn(speaker=t["speakerId"], start_ms=t["startMs"], end_ms=t["endMs"]) for t in clip["turns"]
            ],
        )
        readers = reader_of_speakers(report, read_rttm(DEVSET / "rttm" / f"{uri}.rttm"))
        main_of_reader: dict[str, tuple[int, str]] = {}
        for speaker in clip["speakers"]:
            reader = readers[speaker["id"]]
            if reader is not None:
                label_readers.setdefault(speaker["label"], set()).add(reader)
                if speaker["totalTimeMs"] > main_of_reader.get(reader, (-1, ""))[0]:
                    main_of_reader[reader] = (speaker["totalTimeMs"], speaker["label"])
        for reader, (_, label) in main_of_reader.items():
            reader_labels.setdefault(reader, set()).add(label)
    assert len(reader_labels["LS4018"]) == 1, reader_labels
    assert all(len(readers) == 1 for readers in label_readers.values()), label_readers
    assert set(results["labels"]) >= {
        label for clip in results["clips"] for label in (s["label"] for s in clip["speakers"])
    }


def test_every_export_format_carries_the_job_wide_labels(api, finished_job):
    job, _ = finished_job
    results = api.get(f"/v1/jobs/{job['id']}/results").json()
    labels = {t["label"] for clip in results["clips"] for t in clip["turns"]}
    exported = {
        fmt: api.get(f"/v1/jobs/{job['id']}/export", params={"format": fmt}) for fmt in ("json", "csv", "text", "rttm")
    }
    assert all(r.status_code == 200 for r in exported.values()), {f: r.text for f, r in exported.items()}
    assert json.loads(exported["json"].text) == results
    rows = list(csv.DictReader(io.StringIO(exported["csv"].text)))
    assert {r["clip"] for r in rows} == {f"{uri}.flac" for uri in CLIPS} and {r["label"] for r in rows} == labels
    assert exported["text"].text.startswith(f"job {job['id']}: 2 clips")
    rttm = [line.split() for line in exported["rttm"].text.splitlines()]
    assert {f[1] for f in rttm} == set(CLIPS)
    assert {f[7] for f in rttm} == {label.replace(" ", "_") for label in labels}
    assert api.get(f"/v1/jobs/{job['id']}/export", params={"format": "xml"}).status_code == 422


def test_a_job_and_its_results_survive_a_gateway_restart(stack, api, finished_job):
    job, _ = finished_job
    before = api.get(f"/v1/jobs/{job['id']}/results").json()
    stack.restart_gateway()
    with httpx.Client(base_url=stack.gateway_url, timeout=300) as fresh:
        assert fresh.get(f"/v1/jobs/{job['id']}").json() == job
        assert fresh.get(f"/v1/jobs/{job['id']}/results").json() == before


def test_the_command_line_submits_waits_and_exports(stack, capsys):
    from pipeline.cli import main

    clip = DEVSET / "audio" / "dev09.flac"
    assert main(["job", "--url", stack.gateway_url, "submit", str(clip), "--export", "rttm"]) == 0
    captured = capsys.readouterr()
    lines = [line.split() for line in captured.out.splitlines()]
    assert lines and {f[1] for f in lines} == {"dev09"} and all(f[0] == "SPEAKER" for f in lines)
    assert "100 %" in captured.err


def test_bad_submissions_get_a_4xx_and_a_deleted_job_is_gone(api, finished_job):
    assert api.post("/v1/jobs", files=[("clips", ("notes.txt", b"not audio" * 100))]).status_code == 415
    assert api.post("/v1/jobs", data={"clips": "x"}).status_code == 415
    assert api.get("/v1/jobs/no-such-job").status_code == 404
    job, _ = finished_job
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 404
