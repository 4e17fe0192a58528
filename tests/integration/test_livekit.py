"""`speakerflow livekit` against a real LiveKit server on loopback, feeding a whole stack.

Two participants publish 48 kHz tracks in real time: alice's is a synthesized two-voice
conversation (a shared microphone), bob's a single voice. The ingest runs as its own process,
as it is deployed; a third participant watches the data messages it sends back into the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from livekit import api, rtc

from pipeline.bus import tail_consumer
from pipeline.devstack.stack import free_port
from pipeline.devstack.synthetic import TWO_SPEAKER_SCRIPT, VOICES, Turn, synthesize
from pipeline.evaluation.talktime import compare
from pipeline.producers.livekit import DATA_TOPIC
from pipeline.settings import Settings
from topics import AUDIO, SESSION_REPORTS, SessionReport, SessionStart, SessionStop, decode

ROOM = "interview"
RATE = 48_000
FRAME = RATE // 100  # 10 ms, as WebRTC sends
TOLERANCE = 0.15
BOB_SCRIPT = [
    Turn(0, "Thanks for having me. I have been working on speech systems for a few years now."),
    Turn(0, "Most of that time went into making them run on small devices without a network."),
]


def _token(server, identity: str, room: str = ROOM) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return api.AccessToken(server.api_key, server.api_secret).with_identity(identity).with_grants(grants).to_jwt()


class _Publisher:
    """A participant with one microphone track at 48 kHz."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.room = rtc.Room()
        self.source: rtc.AudioSource | None = None
        self.started: float | None = None

    async def join(self, server, room: str = ROOM) -> None:
        await self.room.connect(server.url, _token(server, self.identity, room))
        # A short queue: capture_frame then waits for playout, so frames leave at the pace they are spoken.
        self.source = rtc.AudioSource(RATE, 1, queue_size_ms=50)
        track = rtc.LocalAudioTrack.create_audio_track("mic", self.source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)

    async def speak(self, audio: np.ndarray) -> None:
        assert self.source is not None
        pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
        self.started = time.monotonic()
        for offset in range(0, len(pcm) - FRAME + 1, FRAME):
            frame = pcm[offset : offset + FRAME]
            await self.source.capture_frame(rtc.AudioFrame(frame.tobytes(), RATE, 1, FRAME))
        await self.source.wait_for_playout()


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _run(server, bootstrap: str, metrics_port: int) -> dict[str, object]:
    conversation = synthesize(TWO_SPEAKER_SCRIPT, sample_rate=RATE)
    single = synthesize(BOB_SCRIPT, sample_rate=RATE, voices=VOICES[2:3])
    reports = await tail_consumer(bootstrap, [SESSION_REPORTS])
    alice, bob = _Publisher("alice"), _Publisher("bob")
    await alice.join(server)
    await bob.join(server)
    viewer = rtc.Room()
    messages: list[tuple[float, dict]] = []
    viewer.on(
        "data_received",
        lambda packet: (
            messages.append((time.monotonic(), json.loads(packet.data))) if packet.topic == DATA_TOPIC else None
        ),
    )
    await viewer.connect(server.url, _token(server, "viewer"))

    ingest = _ingest_process(server, bootstrap, metrics_port, "--room", ROOM, "--publish-results")
    try:
        # Frames sent before the ingest subscribes would never reach it.
        await _wait_for(
            lambda: _scrape_or_empty(metrics_port).get("speakerflow_livekit_tracks") == 2, 60, "both tracks"
        )
        cpu_before = _scrape(metrics_port)["process_cpu_seconds_total"]
        await asyncio.gather(alice.speak(conversation.audio), bob.speak(single.audio))
        cpu = _scrape(metrics_port)["process_cpu_seconds_total"] - cpu_before
        # Leaving ends both sessions; their reports follow.
        await alice.room.disconnect()
        await bob.room.disconnect()
        found: dict[str, SessionReport] = {}
        async with asyncio.timeout(150):
            async for record in reports:
                message = decode(record.key, record.value, record.headers)
                if isinstance(message, SessionReport) and message.session_id.startswith(f"lk:{ROOM}:"):
                    found[message.session_id] = message
                    if len(found) == 2:
                        break
        # Both reports reach the room too: they travel apart, so one may land well after the other.
        await _wait_for(
            lambda: len({m["sessionId"] for _, m in messages if m["type"] == "report"}) == 2,
            30,
            "both reports in the room",
        )
        async with api.LiveKitAPI(server.url, server.api_key, server.api_secret) as service:
            await service.room.delete_room(api.DeleteRoomRequest(room=ROOM))
        # With the room gone the ingest has nothing left to hold and exits.
        assert await asyncio.to_thread(ingest.wait, 30) == 0
    finally:
        if ingest.poll() is None:
            ingest.terminate()
            ingest.wait(10)
        await viewer.disconnect()
        await reports.stop()
    return {
        "conversation": conversation,
        "single_s": single.duration_s,
        "reports": found,
        "messages": messages,
        "alice_started": alice.started,
        "cpu_s": cpu,
    }


def _ingest_process(server, bootstrap: str, metrics_port: int, *options: str) -> subprocess.Popen:
    settings = Settings(kafka=bootstrap, metrics_port=metrics_port, report_timeout_s=120)
    command = [sys.executable, "-m", "pipeline.cli", "-v", "livekit", "--url", server.url, *options]
    command += ["--api-key", server.api_key, "--api-secret", server.api_secret]
    return subprocess.Popen(command, env={**os.environ, **settings.to_env()})


def _scrape_or_empty(port: int) -> dict[str, float]:
    try:
        return _scrape(port)
    except OSError:
        return {}


@pytest.fixture(scope="module")
def stack(local_stack):
    with local_stack("livekit", report_timeout_s=120) as running:
        yield running


def test_each_track_of_a_room_is_a_session_labelled_by_participant(stack, livekit_server, bootstrap):
    result = asyncio.run(_run(livekit_server, bootstrap, free_port()))
    reports: dict[str, SessionReport] = result["reports"]
    by_identity = {session_id.split(":")[2]: report for session_id, report in reports.items()}
    assert set(by_identity) == {"alice", "bob"}, reports

    conversation = result["conversation"]
    shared = by_identity["alice"]
    assert len(shared.speakers) == 2, shared
    rows = compare(conversation.reference_turns(), shared)
    for row in rows:
        assert row.relative_error <= TOLERANCE, rows
    assert len(by_identity["bob"].speakers) == 1, by_identity["bob"]

    messages = [m for _, m in result["messages"]]
    report_labels = {label for m in messages if m["type"] == "report" for label in m["speakers"]}
    assert report_labels == {"alice#0", "alice#1", "bob#0"}, messages
    assert {label for m in messages if m["type"] == "speakers" for label in m["activeSpeakers"]} >= {
        "alice#0",
        "alice#1",
    }

    # The closing note's figures: from a frame leaving alice to the room's update that covers it,
    # and the ingest's CPU per track per second of audio.
    delays = [
        received - (result["alice_started"] + m["positionMs"] / 1000)
        for received, m in result["messages"]
        if m["type"] == "speakers" and m["participant"] == "alice"
    ]
    audio_s = conversation.duration_s + result["single_s"]
    print(
        f"\nlivekit ingest: update delay median {np.median(delays):.2f} s (p90 {np.percentile(delays, 90):.2f} s, "
        f"{len(delays)} updates); CPU {result['cpu_s'] / audio_s:.3f} s per second of track audio"
    )


async def _held(port: int) -> tuple[float | None, float | None]:
    values = await asyncio.to_thread(_scrape_or_empty, port)
    return values.get("speakerflow_livekit_rooms"), values.get("speakerflow_livekit_tracks")


async def _lease(server, bootstrap: str) -> dict[str, object]:
    room = "standup"
    audio = await tail_consumer(bootstrap, [AUDIO])
    carol = _Publisher("carol")
    await carol.join(server, room)
    first_port, second_port = free_port(), free_port()
    first = _ingest_process(server, bootstrap, first_port, "--all-rooms")
    second = None
    held: list[tuple[object, object]] = []
    try:
        await _wait_for(lambda: _scrape_or_empty(first_port).get("speakerflow_livekit_tracks") == 1, 60, "the first")
        second = _ingest_process(server, bootstrap, second_port, "--all-rooms")
        await _wait_for(lambda: "speakerflow_livekit_rooms" in _scrape_or_empty(second_port), 60, "the second")
        # Two polls (5 s apart) of the second instance while the first holds the room.
        for _ in range(11):
            held.append((await _held(first_port), await _held(second_port)))
            await asyncio.sleep(1)
        first.send_signal(signal.SIGTERM)
        first_exit = await asyncio.to_thread(first.wait, 30)
        await _wait_for(lambda: _scrape_or_empty(second_port).get("speakerflow_livekit_tracks") == 1, 30, "takeover")
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        await carol.room.disconnect()
    records = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            async for record in audio:
                message = decode(record.key, record.value, record.headers)
                if isinstance(message, SessionStart | SessionStop) and message.session_id.startswith(f"lk:{room}:"):
                    records.append((record.timestamp, message))
                    if len(records) == 4:
                        break
    await audio.stop()
    return {"held": held, "first_exit": first_exit, "records": records}


def test_instances_hold_a_room_one_at_a_time_and_take_it_over_when_its_holder_leaves(livekit_server, bootstrap):
    result = asyncio.run(_lease(livekit_server, bootstrap))
    # While the first instance held the room, the second never joined it.
    assert result["held"] and all(h == ((1, 1), (0, 0)) for h in result["held"]), result["held"]
    assert result["first_exit"] == 0
    # The track was one session at a time: the first's, stopped when it left, then the second's.
    # Two sessions may sit on two partitions, so they are put in order by their records' timestamps.
    sessions: dict[str, list[tuple[int, str, str]]] = {}
    for timestamp, message in sorted(result["records"], key=lambda r: r[0]):
        sessions.setdefault(message.session_id, []).append((timestamp, message.TYPE, message.producer))
    first, second = sorted(sessions.values())
    assert [kind for _, kind, _ in first] == [kind for _, kind, _ in second] == ["session.start", "session.stop"]
    assert first[1][0] <= second[0][0], sessions
    assert first[0][2] != second[0][2]  # two holders
    # One track (room, participant, track sid), a session per holder.
    tracks = {":".join(session_id.split(":")[:4]) for session_id in sessions}
    assert len(tracks) == 1 and tracks.pop().startswith("lk:standup:carol:"), sessions
