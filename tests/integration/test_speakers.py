"""Known speakers on real parts: enrolment through the gateway's API, names in live sessions over the WebSocket.

The voices are readers of the enrolment dev set (../shared/data/enrollment): an enrolled reader's
clip is enrolled, and a conversation in which that reader talks with one who was never enrolled
is streamed as a client would stream it.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.producers.audio_file import load_pcm16
from pipeline.producers.gateway_client import stream_session
from pipeline.rttm import read_rttm
from topics import SPEAKER_PROFILES

DATA = Path(__file__).parents[2] / ".." / "shared" / "data" / "enrollment"
# The first 27 s of each conversation: every reader in it has several turns by then.
SESSION_S = 27.0


@pytest.fixture(scope="module")
def stack(local_stack):
    with local_stack("speakers", report_timeout_s=180) as running:
        yield running


@pytest.fixture
def api(stack):
    with httpx.Client(base_url=stack.gateway_url, timeout=120) as client:
        yield client


def enrol(api, name: str, *clips: Path) -> dict:
    files = [("clips", (clip.name, clip.read_bytes())) for clip in clips]
    response = api.post("/v1/speakers", data={"name": name}, files=files)
    assert response.status_code == 201, response.text
    return response.json()


def conversation(uri: str) -> tuple[np.ndarray, list]:
    pcm = load_pcm16(DATA / "audio" / f"{uri}.flac")[: int(SESSION_S * 16_000)]
    reference = [t for t in read_rttm(DATA / "rttm" / f"{uri}.rttm") if t.start_s < SESSION_S]
    return pcm, reference


def run_session(stack, pcm: np.ndarray) -> tuple[list[dict], dict]:
    events: list[dict] = []
    report = asyncio.run(
        stream_session(stack.session_url, pcm, realtime=False, on_event=events.append, report_timeout_s=180)
    )
    return [e for e in events if e["event"] == "speaker"], report


def names_by_reader(report: dict, reference: list) -> dict[str, str | None]:
    """Each reader's name in the report: that of the report speaker who covers most of the reader's speech."""
    covered: dict[str, dict[int, float]] = {}
    for turn in report["turns"]:
        for ref in reference:
            shared = min(turn["endMs"] / 1000, ref.end_s) - max(turn["startMs"] / 1000, ref.start_s)
            if shared > 0:
                by_speaker = covered.setdefault(ref.speaker, {})
                by_speaker[turn["speakerId"]] = by_speaker.get(turn["speakerId"], 0.0) + shared
    names = {s["id"]: s.get("speakerName") for s in report["speakers"]}
    return {reader: names[max(speakers, key=speakers.get)] for reader, speakers in covered.items()}


def live_names(events: list[dict]) -> set[str]:
    return {n["speakerName"] for e in events for n in e.get("namedSpeakers", {}).values()}


def profile_records(bootstrap: str) -> int:
    """How many records the profile topic holds (its end offsets, summed)."""

    async def count() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            partitions = [TopicPartition(SPEAKER_PROFILES.name, p) for p in range(SPEAKER_PROFILES.partitions)]
            return sum((await consumer.end_offsets(partitions)).values())
        finally:
            await consumer.stop()

    return asyncio.run(count())


def wav(audio: np.ndarray, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, audio, rate, format="WAV")
    return out.getvalue()


def test_every_bad_upload_gets_its_4xx_and_nothing_is_stored(stack, api, bootstrap):
    before_records, before_list = profile_records(bootstrap), api.get("/v1/speakers").json()
    clip = (DATA / "enroll" / "LS1116.flac").read_bytes()
    two_readers = np.concatenate(
        [soundfile.read(DATA / "enroll" / f"{r}.flac", dtype="float32")[0] for r in ("LS1116", "LS5390")]
    )
    cases = [
        ({"name": "Ada"}, [("clips", ("notes.txt", b"not audio at all " * 200))], 415, "unsupported_format"),
        ({"name": "Ada"}, [("clips", ("quiet.wav", wav(np.zeros(16_000 * 8, np.float32))))], 422, "too_little_speech"),
        ({"name": "Ada"}, [("clips", ("two.wav", wav(two_readers)))], 422, "several_voices"),
        ({"name": "Ada"}, [("clips", ("big.wav", b"\0" * (stack.settings.enrol_max_clip_bytes + 1)))], 413, None),
        ({}, [("clips", ("LS1116.flac", clip))], 422, "bad_name"),
        ({"name": "Ada"}, [], 415, "unsupported_format"),  # a form that is not multipart
        ({"name": "Ada"}, [("other", ("LS1116.flac", clip))], 422, "no_clips"),
        # One good clip and one bad: the whole request is refused.
        ({"name": "Ada"}, [("clips", ("LS1116.flac", clip)), ("clips", ("notes.txt", b"text" * 300))], 415, None),
    ]
    for data, files, status, code in cases:
        response = api.post("/v1/speakers", data=data, files=files or None)
        assert response.status_code == status, (files, response.text)
        if code is not None:
            assert response.json()["detail"]["code"] == code
    assert api.get("/v1/speakers/no-such-id").status_code == 404
    assert api.delete("/v1/speakers/no-such-id").status_code == 404
    assert api.get("/v1/speakers").json() == before_list
    assert profile_records(bootstrap) == before_records


def test_an_enrolled_voice_is_named_live_and_in_the_report_an_unknown_one_is_not_and_a_deleted_one_no_more(stack, api):
    ada = enrol(api, "Ada", DATA / "enroll" / "LS1116.flac")
    assert (ada["name"], ada["clips"], sorted(ada["models"])) == ("Ada", 1, ["campplus", "resemblyzer-ge2e"])
    assert api.get(f"/v1/speakers/{ada['id']}").json() == ada
    assert ada in api.get("/v1/speakers").json()["speakers"]
    try:
        pcm, reference = conversation("enc01")  # LS1116 (enrolled as Ada) and LS6476 (never enrolled)
        events, report = run_session(stack, pcm)
        assert names_by_reader(report, reference) == {"LS1116": "Ada", "LS6476": None}
        assert [s["profileId"] for s in report["speakers"] if s.get("speakerName")] == [ada["id"]]
        assert live_names(events) == {"Ada"}
        named = [e for e in events if e.get("speakerName") == "Ada"]
        assert named and all(e["profileId"] == ada["id"] for e in named)
    finally:
        assert api.delete(f"/v1/speakers/{ada['id']}").status_code == 204
    # The running worker has the tombstone: the same conversation again names nobody.
    events, report = run_session(stack, pcm)
    assert names_by_reader(report, reference) == {"LS1116": None, "LS6476": None}
    assert live_names(events) == set()


def test_a_deleted_profile_names_nobody_and_the_registry_is_whole_after_a_worker_restart(stack, api):
    # enc03: LS6818 and LS8108, both enrolled here, and LS7447, never enrolled.
    kept = enrol(api, "Grace", DATA / "enroll" / "LS6818.flac")
    gone = enrol(api, "Alan", DATA / "enroll" / "LS8108.flac")
    assert api.delete(f"/v1/speakers/{gone['id']}").status_code == 204
    assert api.get(f"/v1/speakers/{gone['id']}").status_code == 404
    assert gone["id"] not in {s["id"] for s in api.get("/v1/speakers").json()["speakers"]}
    # A cluster worker that starts now reads the whole registry, the deletion included.
    (old,) = [name for name in stack.processes if name.startswith("worker-cluster-")]
    stack.kill(old)
    stack.add_worker("cluster")
    try:
        pcm, reference = conversation("enc03")
        events, report = run_session(stack, pcm)
        assert names_by_reader(report, reference) == {"LS6818": "Grace", "LS8108": None, "LS7447": None}
        assert live_names(events) == {"Grace"}
    finally:
        api.delete(f"/v1/speakers/{kept['id']}")


def test_the_command_line_enrols_lists_and_deletes(stack, api, capsys):
    from pipeline.cli import main

    url = ["speakers", "--url", stack.gateway_url]
    assert main([*url, "enroll", "Marie", str(DATA / "enroll" / "LS669.flac")]) == 0
    enrolled = capsys.readouterr().out
    assert enrolled.startswith("enrolled Marie as ")
    profile_id = enrolled.split()[3]
    assert main([*url, "list"]) == 0
    assert f"{profile_id}  Marie" in capsys.readouterr().out
    assert main([*url, "delete", profile_id]) == 0
    assert api.get(f"/v1/speakers/{profile_id}").status_code == 404
    with pytest.raises(SystemExit, match="no speaker"):
        main([*url, "delete", profile_id])
    with pytest.raises(SystemExit, match="too_little_speech|unsupported_format"):
        empty = DATA / "rttm" / "enc01.rttm"  # not audio
        main([*url, "enroll", "Nobody", str(empty)])
