"""The WebSocket gateway end to end against the session's broker (its rules without one: tests/unit/test_gateway_*.py).

The test itself plays the worker: it reads what the gateway published on the audio
topic and publishes results onto the result topics. The last test runs a whole stack,
to show that a client's own audio format changes nothing the workers report.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest
import soxr
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pipeline.bus import new_producer, publish, tail_consumer
from pipeline.devstack.synthetic import TWO_SPEAKER_SCRIPT, synthesize
from pipeline.evaluation.talktime import compare
from pipeline.gateway import create_app, server_config
from pipeline.gateway.protocol import events_url, session_url
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.gateway_client import report_from_event, stream_session
from pipeline.settings import Settings
from topics import (
    AUDIO,
    SESSION_REPORTS,
    SPEAKER_TURNS,
    SPEAKER_UPDATES,
    AudioChunk,
    BusMessage,
    ReportedSpeaker,
    SessionReport,
    SessionStart,
    SessionStop,
    SpeakerTurn,
    SpeakerUpdate,
    decode,
)
from topics.messages import ReportedTurn


class RunningGateway:
    """A gateway served by uvicorn on a free port, in a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.server = uvicorn.Server(server_config(settings, create_app(settings), log_level="warning"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> RunningGateway:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"gateway on {self.base} did not start")
            time.sleep(0.02)
        self.id = httpx.get(f"http://{self.base}/health").json()["gatewayId"]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._socket.close()

    def session(self) -> connect:
        return connect(session_url("127.0.0.1", self.port))

    def events(self, session_id: str) -> connect:
        return connect(events_url("127.0.0.1", self.port, session_id))


@pytest.fixture(scope="module")
def gateways(bootstrap: str) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    # One deployment: a session started on either may resume on either; a client gone 3 s is gone.
    shared = Settings(kafka=bootstrap, report_timeout_s=2.0, resume_grace_s=3.0, resume_secret="test-deployment")
    first = RunningGateway(shared).start()
    # The second accepts frames beyond the producer's 1 MiB request limit, so a publish can really fail.
    second = RunningGateway(dataclasses.replace(shared, max_frame_bytes=2 << 20)).start()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


class AudioTap:
    """Reads the audio topic from its end, keeping each session's decoded records."""

    def __init__(self, consumer) -> None:
        self.consumer = consumer
        self.records: dict[str, list[BusMessage]] = defaultdict(list)

    async def wait_for(self, session_id: str, count: int, timeout: float = 10.0) -> list[BusMessage]:
        deadline = time.monotonic() + timeout
        while len(self.records[session_id]) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"got {self.records[session_id]} for {session_id}, expected {count} records"
            batches = await self.consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            for records in batches.values():
                for record in records:
                    message = decode(record.key, record.value, record.headers)
                    self.records[message.session_id].append(message)
        return self.records[session_id]


@contextlib.asynccontextmanager
async def audio_tap(bootstrap: str) -> AsyncIterator[AudioTap]:
    consumer = await tail_consumer(bootstrap, [AUDIO])
    try:
        yield AudioTap(consumer)
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def worker(bootstrap: str) -> AsyncIterator:
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def receive(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def expect_error(ws: ClientConnection, code: str) -> None:
    event = await receive(ws)
    assert event["event"] == "error" and event["code"] == code, event
    assert event["message"]


async def expect_nothing(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        got = await asyncio.wait_for(ws.recv(), seconds)
        pytest.fail(f"unexpected message {got}")


async def start_session(ws: ClientConnection, **fields: object) -> str:
    await ws.send(json.dumps({"action": "start", **fields}))
    started = await receive(ws)
    assert started["event"] == "started", started
    return started["sessionId"]


def report_for(session_id: str, totals: dict[int, int]) -> SessionReport:
    return SessionReport(
        session_id=session_id,
        duration_ms=sum(totals.values()),
        speakers=[ReportedSpeaker(id=k, total_time_ms=v) for k, v in totals.items()],
        turns=[],
    )


def assert_stream(records: list[BusMessage], session_id: str, frames: list[bytes], producer: str) -> None:
    """start, the frames in order with consecutive seq and running offsets, stop."""
    assert isinstance(records[0], SessionStart) and records[0].seq == 0
    offset = 0
    for seq, (record, frame) in enumerate(zip(records[1:-1], frames, strict=True), start=1):
        assert isinstance(record, AudioChunk)
        assert (record.seq, record.offset, record.pcm) == (seq, offset, frame)
        offset += len(frame) // 2
    stop = records[-1]
    assert isinstance(stop, SessionStop) and (stop.seq, stop.offset) == (len(frames) + 1, offset)
    assert all(r.session_id == session_id and r.producer == producer for r in records)


async def test_health_ok(gateways):
    first, _ = gateways
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{first.base}/health")
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body.pop("sessions"), int)
    assert body == {"status": "ok", "gatewayId": first.id, "producer": True, "fanout": True}


async def test_bad_input_is_refused_and_the_stream_continues(bootstrap, gateways, pcm):
    gateway, _ = gateways
    async with (
        audio_tap(bootstrap) as audio,
        worker(bootstrap) as bus,
        gateway.session() as ws,
        gateway.session() as neighbour,
    ):
        await ws.send("this is not json")
        await expect_error(ws, "bad_json")
        await ws.send("[1, 2, 3]")
        await expect_error(ws, "bad_json")
        await ws.send(json.dumps({"action": "dance"}))
        await expect_error(ws, "unknown_action")
        await ws.send(pcm(100))
        await expect_error(ws, "not_started")
        await ws.send(json.dumps({"action": "stop"}))
        await expect_error(ws, "not_started")
        await ws.send(json.dumps({"action": "start", "num_speakers": 0}))
        await expect_error(ws, "invalid_start")
        await ws.send(json.dumps({"action": "start", "min_speakers": 4, "max_speakers": 3}))
        await expect_error(ws, "invalid_start")
        await ws.send(json.dumps({"action": "start", "num_speakers": 5, "max_speakers": 4}))
        await expect_error(ws, "invalid_start")

        await ws.send(json.dumps({"action": "start", "num_speakers": 3, "session_id": "bad-input-1"}))
        started = await receive(ws)
        assert started.pop("resumeToken")
        assert started == {"event": "started", "num_speakers": 3, "sessionId": "bad-input-1"}
        other = await start_session(neighbour, min_speakers=2, max_speakers=4)
        await ws.send(json.dumps({"action": "start"}))
        await expect_error(ws, "already_started")
        async with gateway.session() as intruder:
            await intruder.send(json.dumps({"action": "start", "session_id": "bad-input-1"}))
            await expect_error(intruder, "session_in_use")

        frames = [pcm(320, seed=1), pcm(480, seed=2), pcm(160, seed=3)]
        neighbour_frames = [pcm(200, seed=7), pcm(200, seed=8)]
        await ws.send(frames[0])
        await neighbour.send(neighbour_frames[0])
        await ws.send(pcm(100) + b"\x01")
        await expect_error(ws, "odd_length_pcm")
        await ws.send(frames[1])
        await ws.send(bytes(gateway.settings.max_frame_bytes + 2))
        await expect_error(ws, "frame_too_large")
        await neighbour.send(neighbour_frames[1])
        await ws.send(json.dumps({"action": "what"}))
        await expect_error(ws, "unknown_action")
        await ws.send(frames[2])
        await ws.send(json.dumps({"action": "stop"}))

        records = await audio.wait_for("bad-input-1", len(frames) + 2)
        assert_stream(records, "bad-input-1", frames, gateway.id)
        assert (records[0].num_speakers, records[0].min_speakers, records[0].max_speakers) == (3, 3, 3)
        await publish(bus, SESSION_REPORTS, report_for("bad-input-1", {0: 300, 1: 200}))
        assert await receive(ws) == {
            "event": "report",
            "speakers": [{"id": 0, "totalTimeMs": 300}, {"id": 1, "totalTimeMs": 200}],
            "turns": [],
        }

        # The neighbour saw none of this and its stream is intact.
        await expect_nothing(neighbour, 0.1)
        await neighbour.send(json.dumps({"action": "stop"}))
        neighbour_records = await audio.wait_for(other, 4)
        assert_stream(neighbour_records, other, neighbour_frames, gateway.id)
        assert (neighbour_records[0].num_speakers, neighbour_records[0].min_speakers) == (None, 2)
        assert (neighbour_records[0].speaker_floor, neighbour_records[0].speaker_limit) == (2, 4)
        await publish(bus, SESSION_REPORTS, report_for(other, {0: 25}))
        assert (await receive(neighbour))["speakers"] == [{"id": 0, "totalTimeMs": 25}]

        # After its report the socket may run another session, numbered from zero again.
        again = await start_session(ws)
        assert again != "bad-input-1" and len(again) == 32
        await ws.send(frames[0])
        await ws.send(json.dumps({"action": "stop"}))
        assert_stream(await audio.wait_for(again, 3), again, frames[:1], gateway.id)


async def test_results_reach_the_session_and_its_subscribers_only(bootstrap, gateways):
    first, second = gateways
    update = SpeakerUpdate(
        session_id="fan-s", position_ms=1700, current_speaker=0, speaking_time_ms={0: 1200, 1: 500}, ingest_ms=5
    )
    turn = SpeakerTurn(session_id="fan-s", speaker=0, start_ms=0, end_ms=1200, final=True)
    speaker_event = {
        "event": "speaker",
        "currentSpeakerId": 0,
        "activeSpeakerIds": [],
        "speakingTimeMs": {"0": 1200, "1": 500},
    }
    turn_event = {"event": "turn", "speakerId": 0, "startMs": 0, "endMs": 1200, "final": True}
    report_event = {
        "event": "report",
        "speakers": [{"id": 0, "totalTimeMs": 45000}, {"id": 1, "totalTimeMs": 12000}],
        "turns": [{"speakerId": 0, "startMs": 0, "endMs": 1200}],
    }

    async with (
        audio_tap(bootstrap) as audio,
        worker(bootstrap) as bus,
        first.session() as session_ws,
        first.events("fan-s") as local_watcher,
        second.events("fan-s") as remote_watcher,
        second.session() as other_ws,
    ):
        await start_session(session_ws, session_id="fan-s")
        await start_session(other_ws, session_id="fan-t")

        # Records that break the contract are skipped by every fan-out, which keeps going.
        await bus.send_and_wait(SPEAKER_UPDATES.name, key=b"fan-s", value=b"{not json", headers=[])
        await publish(bus, SPEAKER_UPDATES, SessionStop(session_id="fan-s", seq=9, offset=0))
        await publish(bus, SPEAKER_UPDATES, update)
        await publish(bus, SPEAKER_TURNS, turn)

        assert await receive(session_ws) == speaker_event
        for watcher in (local_watcher, remote_watcher):
            assert await receive(watcher) == speaker_event
            assert await receive(watcher) == turn_event

        # The second gateway has dispatched fan-s's results by now; its own session got none of them.
        await publish(
            bus,
            SPEAKER_UPDATES,
            SpeakerUpdate(
                session_id="fan-t", position_ms=900, current_speaker=None, speaking_time_ms={0: 900}, ingest_ms=0
            ),
        )
        assert await receive(other_ws) == {
            "event": "speaker",
            "currentSpeakerId": None,
            "activeSpeakerIds": [],
            "speakingTimeMs": {"0": 900},
        }
        await expect_nothing(other_ws)

        await session_ws.send(json.dumps({"action": "stop"}))
        assert isinstance((await audio.wait_for("fan-s", 2))[-1], SessionStop)
        await publish(
            bus,
            SESSION_REPORTS,
            SessionReport(
                session_id="fan-s",
                duration_ms=60000,
                speakers=[ReportedSpeaker(id=0, total_time_ms=45000), ReportedSpeaker(id=1, total_time_ms=12000)],
                turns=[ReportedTurn(speaker=0, start_ms=0, end_ms=1200)],
            ),
        )
        # The session socket got no turn: the report is the next thing it sees.
        assert await receive(session_ws) == report_event
        for watcher in (local_watcher, remote_watcher):
            assert await receive(watcher) == report_event
        await expect_nothing(other_ws, 0.1)

        other_health = httpx.get(f"http://{second.base}/health")
        assert other_health.status_code == 200 and other_health.json()["sessions"] == 1


async def test_disconnect_mid_session_publishes_stop_after_the_grace_period(bootstrap, gateways, pcm):
    gateway, _ = gateways
    async with audio_tap(bootstrap) as audio:
        async with gateway.session() as ws:
            session_id = await start_session(ws)
            await ws.send(pcm(240))
        left = time.monotonic()
        records = await audio.wait_for(session_id, 3)
        assert time.monotonic() - left >= gateway.settings.resume_grace_s - 0.1
        assert_stream(records, session_id, [pcm(240)], gateway.id)


async def test_without_a_grace_period_a_lost_client_is_stopped_at_once(bootstrap, pcm):
    gateway = RunningGateway(Settings(kafka=bootstrap, resume_grace_s=0)).start()
    try:
        async with audio_tap(bootstrap) as audio:
            async with gateway.session() as ws:
                session_id = await start_session(ws)
                await ws.send(pcm(240))
            left = time.monotonic()
            records = await audio.wait_for(session_id, 3)
            assert time.monotonic() - left < 2.0
            assert_stream(records, session_id, [pcm(240)], gateway.id)
    finally:
        gateway.stop()


async def resume(ws: ClientConnection, session_id: str, token: str) -> dict:
    await ws.send(json.dumps({"action": "resume", "session_id": session_id, "token": token}))
    return await receive(ws)


async def test_a_session_resumes_on_its_gateway_and_on_another(bootstrap, gateways, pcm):
    first, second = gateways
    frames = [pcm(320, seed=seed) for seed in range(4)]
    async with audio_tap(bootstrap) as audio:
        async with first.session() as ws:
            await ws.send(json.dumps({"action": "start", "session_id": "resumed-twice"}))
            token = (await receive(ws))["resumeToken"]
            await ws.send(frames[0])
            await audio.wait_for("resumed-twice", 2)
        # Back on the gateway that holds it: the numbering goes on where the bus left off.
        async with first.session() as ws:
            assert await resume(ws, "resumed-twice", token) == {
                "event": "resumed",
                "sessionId": "resumed-twice",
                "offset": 320,
                "offsetMs": 20,
            }
            await ws.send(frames[1])
            await audio.wait_for("resumed-twice", 3)
        # On the other gateway, which never saw the session: it reads the position off the bus.
        async with second.session() as ws:
            resumed = await resume(ws, "resumed-twice", token)
            assert (resumed["event"], resumed["offset"]) == ("resumed", 640)
            await ws.send(frames[2])
            await ws.send(frames[3])
            # The first gateway's grace period ends meanwhile: it sees the session resumed and leaves it be.
            await asyncio.sleep(first.settings.resume_grace_s + 1.0)
            await ws.send(json.dumps({"action": "stop"}))
            records = await audio.wait_for("resumed-twice", 6)
            await expect_error(ws, "report_timeout")
    assert [type(r) for r in records] == [SessionStart, AudioChunk, AudioChunk, AudioChunk, AudioChunk, SessionStop]
    assert [(r.seq, getattr(r, "offset", 0)) for r in records] == [
        (0, 0),
        (1, 0),
        (2, 320),
        (3, 640),
        (4, 960),
        (5, 1280),
    ]
    assert [r.producer for r in records] == [first.id] * 3 + [second.id] * 3
    assert [r.pcm for r in records[1:5]] == frames


async def test_what_cannot_be_resumed_is_refused(bootstrap, gateways, pcm):
    first, second = gateways
    async with audio_tap(bootstrap) as audio:
        async with first.session() as stale:
            await stale.send(json.dumps({"action": "start", "session_id": "resume-refusals"}))
            token = (await receive(stale))["resumeToken"]
            await stale.send(pcm(160))
            await audio.wait_for("resume-refusals", 2)
            assert (await resume(stale, "resume-refusals", token))["code"] == "already_started"
            forged = token[:-1] + ("0" if token[-1] != "0" else "1")
            async with first.session() as newer:
                assert (await resume(newer, "resume-refusals", forged))["code"] == "invalid_resume"
                # The client's new connection takes the session from its old one, which the gateway then closes.
                resumed = await resume(newer, "resume-refusals", token)
                assert (resumed["event"], resumed["offset"]) == ("resumed", 160)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(stale.recv(), 5)
                await newer.send(json.dumps({"action": "stop"}))
                records = await audio.wait_for("resume-refusals", 3)
        async with second.session() as ws:
            assert (await resume(ws, "resume-refusals", token))["code"] == "resume_expired"  # it was stopped
            assert (await resume(ws, "never-started", token))["code"] == "invalid_resume"
    assert [type(r) for r in records] == [SessionStart, AudioChunk, SessionStop]
    assert (records[-1].seq, records[-1].offset) == (2, 160)


async def test_report_timeout_is_an_error_and_the_socket_goes_on(bootstrap, gateways, pcm):
    gateway, _ = gateways
    async with audio_tap(bootstrap) as audio, gateway.session() as ws:
        session_id = await start_session(ws, session_id="never-reported")
        await ws.send(json.dumps({"action": "stop"}))
        began = time.monotonic()
        # While the report is pending the socket still answers.
        await ws.send(pcm(10))
        await expect_error(ws, "not_started")
        await ws.send(json.dumps({"action": "start"}))
        await expect_error(ws, "already_started")
        await expect_error(ws, "report_timeout")
        assert time.monotonic() - began >= gateway.settings.report_timeout_s - 0.5
        await audio.wait_for(session_id, 2)
        # The same id may be started again: the timed-out session no longer holds it.
        assert await start_session(ws, session_id="never-reported") == "never-reported"
        await ws.send(json.dumps({"action": "stop"}))
        records = await audio.wait_for(session_id, 4)
        assert [type(r) for r in records] == [SessionStart, SessionStop, SessionStart, SessionStop]
        assert [r.seq for r in records] == [0, 1, 0, 1]


async def test_leaving_while_the_report_is_pending_frees_the_session(bootstrap, gateways):
    gateway, _ = gateways
    async with audio_tap(bootstrap) as audio:
        async with gateway.session() as ws:
            await start_session(ws, session_id="left-early")
            await ws.send(json.dumps({"action": "stop"}))
            await audio.wait_for("left-early", 2)
        # Freed at once, not when the report would have timed out.
        async with gateway.session() as ws:
            deadline = time.monotonic() + gateway.settings.report_timeout_s / 2
            while True:
                await ws.send(json.dumps({"action": "start", "session_id": "left-early"}))
                event = await receive(ws)
                if event["event"] == "started" or time.monotonic() > deadline:
                    break
                assert event["code"] == "session_in_use"
                await asyncio.sleep(0.05)
            assert event["event"] == "started", event
        records = await audio.wait_for("left-early", 4)
        assert [type(r) for r in records] == [SessionStart, SessionStop, SessionStart, SessionStop]


async def test_failed_publish_is_bus_unavailable_and_changes_no_offsets(bootstrap, gateways, pcm):
    _, gateway = gateways
    async with audio_tap(bootstrap) as audio, gateway.session() as ws:
        session_id = await start_session(ws)
        frames = [pcm(1000, seed=1), pcm(500, seed=2)]
        await ws.send(frames[0])
        # Under the gateway's frame limit but over the producer's 1 MiB request limit.
        await ws.send(bytes(1_200_000))
        await expect_error(ws, "bus_unavailable")
        await ws.send(frames[1])
        await ws.send(json.dumps({"action": "stop"}))
        assert_stream(await audio.wait_for(session_id, 4), session_id, frames, gateway.id)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://{gateway.base}/health")).status_code == 200


async def test_subscriber_with_invalid_session_id_is_refused(gateways):
    gateway, _ = gateways
    async with gateway.events("bad%20id") as ws:
        await expect_error(ws, "invalid_session_id")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1008


async def test_a_48k_float_client_is_published_as_16k_pcm(bootstrap, gateways):
    gateway, _ = gateways
    t = np.arange(48000) / 48000
    wire = (0.5 * np.sin(2 * np.pi * 440 * t)).astype("<f4")
    frames = [wire[i : i + 4800].tobytes() for i in range(0, len(wire), 4800)]  # 0.1 s each
    async with audio_tap(bootstrap) as audio, gateway.session() as ws:
        await ws.send(json.dumps({"action": "start", "sample_rate": 22050, "encoding": "opus"}))
        await expect_error(ws, "invalid_start")
        await ws.send(json.dumps({"action": "start", "sample_rate": 96000}))
        await expect_error(ws, "invalid_start")
        session_id = await start_session(ws, sample_rate=48000, encoding="pcm_f32le")
        await ws.send(frames[0][:-2])
        await expect_error(ws, "odd_length_pcm")
        await ws.send(np.array([0.0, np.nan], "<f4").tobytes())
        await expect_error(ws, "non_finite_pcm")
        for frame in frames:
            await ws.send(frame)
        await ws.send(json.dumps({"action": "stop"}))
        records = await audio.wait_for(session_id, len(frames) + 3)  # start, the frames, their tail, stop

    chunks, stop = records[1:-1], records[-1]
    offset = 0
    for seq, chunk in enumerate(chunks, start=1):
        assert isinstance(chunk, AudioChunk) and (chunk.seq, chunk.offset, chunk.sample_rate) == (seq, offset, 16000)
        offset += chunk.num_samples
    # One second at 48 kHz is one second at 16 kHz, to the sample: the sine resampled as a whole.
    assert isinstance(stop, SessionStop) and (stop.seq, stop.offset) == (len(chunks) + 1, offset) and offset == 16000
    published = np.frombuffer(b"".join(c.pcm for c in chunks), "<i2") / 32768
    assert np.abs(published - soxr.resample(wire, 48000, 16000, quality="HQ")).max() < 1 / 32768


# One step of the live labels: the report's talk times may differ by this much.
STEP_MS = 500


def test_a_conversation_at_48k_float_is_reported_as_at_16k_pcm(local_stack):
    # Captured at 48 kHz, as a browser would; the 16 kHz client resampled it itself.
    conversation = synthesize(TWO_SPEAKER_SCRIPT, sample_rate=48000)
    at_48k = conversation.audio
    at_16k = float_to_pcm16(soxr.resample(at_48k, 48000, 16000, quality="HQ"))

    with local_stack("formats", report_timeout_s=300) as stack:

        async def both() -> list[dict]:
            return await asyncio.gather(
                stream_session(stack.session_url, at_16k, realtime=False, session_id="format-16k-s16le"),
                stream_session(
                    stack.session_url,
                    at_48k,
                    realtime=False,
                    session_id="format-48k-f32le",
                    sample_rate=48000,
                    encoding="pcm_f32le",
                ),
            )

        reports = [report_from_event(name, event) for name, event in zip(("16k", "48k"), asyncio.run(both()))]

    pcm_16k, float_48k = reports
    assert len(pcm_16k.speakers) == len(float_48k.speakers) == 2, reports
    # The same voice of the script is matched in each report, whatever id each gave it.
    reference = conversation.reference_turns()
    for row_16k, row_48k in zip(compare(reference, pcm_16k), compare(reference, float_48k), strict=True):
        assert row_16k.hypothesis is not None and row_48k.hypothesis is not None, (row_16k, row_48k)
        assert abs(row_16k.hypothesis_ms - row_48k.hypothesis_ms) <= STEP_MS, (row_16k, row_48k)
