"""Ingest from LiveKit rooms: every participant's audio track becomes a session on the bus.

`speakerflow livekit` joins rooms as a hidden participant with the ``livekit`` SDK, subscribes
to every audio track and publishes each as its own session, through the same records as every
other producer (start, 0.2 s chunks of 16 kHz s16le, stop; :mod:`pipeline.producers.chunking`).
The SDK converts the room's 48 kHz Opus to 16 kHz mono (``AudioStream(sample_rate=16000)``).
A session stops when its track is unsubscribed or its participant leaves: the SDK's stream
does not end by itself, so the ingest closes it.

Labels. The bus knows sessions and speaker numbers, not people, and its contract does not
change; the ingest knows which participant a session is. So the label is formed here, from the
results this process reads back for its own sessions: speaker k of alice's track is ``alice#k``
(two voices on one shared microphone are ``alice#0`` and ``alice#1``). :class:`RoomView` merges
a room's sessions into one view, which goes back into the room as data messages on the topic
``speakerflow`` when asked (``--publish-results``) and into the log when a session reports.

Scale-out: a lease per room, held through LiveKit itself. Every ingest instance joins with the
same identity (:data:`AGENT_IDENTITY`), and LiveKit admits one participant per identity in a
room: a second join displaces the first, whose sessions end there. So no two instances ever
feed one track side by side (beyond the instant of a handover), whatever they do. To keep displacement rare, an instance only joins a room in which
no ingest participant is present (:func:`rooms_to_join`); the room service lists hidden
participants too. The lease ends with the connection, so an instance that dies frees its rooms
once LiveKit drops it, and the next poll of another instance takes them over. A consumer group
over room events was the alternative: it needs LiveKit's webhooks bridged onto a new topic (a
contract change, and an HTTP endpoint to run), and a partition rebalance would hand a room to a
new owner while the old one is still connected to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiokafka import AIOKafkaProducer
from livekit import api, rtc

from pipeline.bus import PLAINTEXT, ensure_topics, new_producer, publish
from pipeline.gateway.fanout import ResultFanout, Subscription
from pipeline.metrics import LIVEKIT_FRAME_SECONDS, LIVEKIT_FRAMES, LIVEKIT_ROOMS, LIVEKIT_TRACKS
from pipeline.producers.chunking import CHUNK_SAMPLES
from pipeline.settings import KafkaSecurity
from topics import AUDIO, AudioChunk, SessionReport, SessionStart, SessionStop, SpeakerUpdate
from topics.messages import BYTES_PER_SAMPLE, SAMPLE_RATE

__all__ = [
    "AGENT_IDENTITY",
    "DATA_TOPIC",
    "LiveKitIngest",
    "RoomView",
    "TrackFeed",
    "rooms_to_join",
    "session_id_for",
    "speaker_label",
]

log = logging.getLogger(__name__)

# The identity every ingest instance joins with: LiveKit's one-participant-per-identity rule is the room's lease.
AGENT_IDENTITY = "speakerflow-ingest"
# The data topic results go back into the room on.
DATA_TOPIC = "speakerflow"
# What a session id may hold (topics.messages.SessionId) besides the escape character.
_UNESCAPED = re.compile(r"[^A-Za-z0-9_-]")
_MAX_SESSION_ID = 128


def _escape(text: str) -> str:
    # "." introduces the hex of each UTF-8 byte of a character a session id may not hold, so distinct
    # names stay distinct ("a.b" and "a:b" both differ from "a_b") and ":" stays free as the separator.
    return _UNESCAPED.sub(lambda m: "".join(f".{b:02x}" for b in m.group().encode()), text)


def session_id_for(room: str, identity: str, track_sid: str, holder: str) -> str:
    """The session of one published track as one ingest instance (`holder`) feeds it, readable where it fits.

    The track's sid is part of it because a participant may publish again (a new track is a new
    session, as a new recording is); the holder because an instance that takes a room over starts
    the room's tracks again, as sessions of its own. Those two identify the session, so a room and
    identity too long to spell out are shortened without two sessions ever sharing an id.
    """
    tail = f":{_escape(track_sid)}:{_escape(holder)}"
    head = f"lk:{_escape(room)}:{_escape(identity)}"
    return head[: _MAX_SESSION_ID - len(tail)] + tail


def speaker_label(identity: str, speaker: int) -> str:
    """How a speaker of a participant's track is named to people: ``alice#0``, ``alice#1``."""
    return f"{identity}#{speaker}"


def rooms_to_join(participants: Mapping[str, Iterable[str]], held: Iterable[str]) -> list[str]:
    """The rooms an instance should join, given each listed room's participant identities.

    A room is taken when someone is in it and no ingest instance is: one this instance holds,
    or another's agent (the identity is the lease). Sorted, so a log reads the same each poll.
    """
    held = set(held)
    return sorted(
        room
        for room, identities in participants.items()
        if room not in held and (present := set(identities)) and AGENT_IDENTITY not in present
    )


class TrackFeed:
    """One track's session: 16 kHz s16le frames from the SDK in, the bus's records out.

    The SDK hands out 10 ms frames; they are gathered into chunks of `chunk_samples` (0.2 s, as
    every producer sends) so the bus carries as many records per second as from any other source.
    """

    def __init__(self, start: SessionStart, chunk_samples: int = CHUNK_SAMPLES) -> None:
        self.start = start
        self.chunk_bytes = chunk_samples * BYTES_PER_SAMPLE
        self.seq = start.seq + 1  # of the next record
        self.offset = 0  # samples published so far
        self._pending = bytearray()

    @property
    def session_id(self) -> str:
        return self.start.session_id

    def frame(self, pcm: bytes) -> list[AudioChunk]:
        """The chunks a frame completes (often none)."""
        if len(pcm) % BYTES_PER_SAMPLE:
            raise ValueError(f"a frame of {len(pcm)} bytes is not whole s16le samples")
        self._pending += pcm
        chunks = []
        while len(self._pending) >= self.chunk_bytes:
            chunks.append(self._chunk(bytes(self._pending[: self.chunk_bytes])))
            del self._pending[: self.chunk_bytes]
        return chunks

    def stop(self) -> list[AudioChunk | SessionStop]:
        """What ends the session: the last, shorter chunk if samples are pending, then the stop."""
        records: list[AudioChunk | SessionStop] = []
        if self._pending:
            records.append(self._chunk(bytes(self._pending)))
            self._pending.clear()
        records.append(
            SessionStop(session_id=self.session_id, seq=self.seq, offset=self.offset, producer=self.start.producer)
        )
        return records

    def _chunk(self, pcm: bytes) -> AudioChunk:
        chunk = AudioChunk(
            session_id=self.session_id, seq=self.seq, offset=self.offset, producer=self.start.producer, pcm=pcm
        )
        self.seq += 1
        self.offset += chunk.num_samples
        return chunk


@dataclass
class _TrackResults:
    identity: str
    speaking_ms: dict[int, int] = field(default_factory=dict)
    active: list[int] = field(default_factory=list)


class RoomView:
    """A room's sessions merged: who speaks now and how long each labelled speaker has spoken.

    Fed the results of the room's sessions (:meth:`update`, :meth:`report`); each returns the
    message that goes back into the room, a JSON object in which speakers are labels.
    """

    def __init__(self, room: str) -> None:
        self.room = room
        self._tracks: dict[str, _TrackResults] = {}

    def add(self, session_id: str, identity: str) -> None:
        self._tracks[session_id] = _TrackResults(identity)

    def update(self, message: SpeakerUpdate) -> dict[str, object]:
        track = self._tracks[message.session_id]
        track.speaking_ms = dict(message.speaking_time_ms)
        track.active = list(message.active_speakers)
        # Where in the participant's track the update stands, so a client can line it up with its audio.
        return {
            "type": "speakers",
            "sessionId": message.session_id,
            "participant": track.identity,
            "positionMs": message.position_ms,
            **self.snapshot(),
        }

    def report(self, message: SessionReport) -> dict[str, object]:
        track = self._tracks[message.session_id]
        track.speaking_ms = {s.id: s.total_time_ms for s in message.speakers}
        track.active = []
        return {
            "type": "report",
            "sessionId": message.session_id,
            "participant": track.identity,
            "durationMs": message.duration_ms,
            "speakers": {speaker_label(track.identity, s.id): s.total_time_ms for s in message.speakers},
        }

    def snapshot(self) -> dict[str, object]:
        """Every labelled speaker's time so far and those talking now, over all the room's sessions."""
        speaking: dict[str, int] = {}
        active: list[str] = []
        for track in self._tracks.values():
            for speaker, ms in track.speaking_ms.items():
                label = speaker_label(track.identity, speaker)
                # A participant's second audio track (a screen share's) lands on the same labels.
                speaking[label] = speaking.get(label, 0) + ms
            active += [speaker_label(track.identity, s) for s in track.active]
        return {"room": self.room, "activeSpeakers": sorted(set(active)), "speakingTimeMs": speaking}


class _RoomIngest:
    """This instance's hold on one room: its tracks' sessions, for as long as it stays connected."""

    def __init__(self, ingest: LiveKitIngest, name: str) -> None:
        self.ingest = ingest
        self.name = name
        self.room = rtc.Room()
        self.view = RoomView(name)
        self.left = asyncio.Event()
        # Per subscribed track sid: its stream (closed to end the session) and the task feeding it.
        self._streams: dict[str, rtc.AudioStream] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._by_participant: dict[str, set[str]] = {}
        # Closes started by room events; held so they are not collected before they finish.
        self._closing: set[asyncio.Task[None]] = set()
        self.task = asyncio.create_task(self.run(), name=f"room-{name}")

    async def run(self) -> None:
        self.room.on("track_subscribed", self._on_track_subscribed)
        self.room.on("track_unsubscribed", self._on_track_unsubscribed)
        self.room.on("participant_disconnected", self._on_participant_disconnected)
        self.room.on("disconnected", self._on_disconnected)
        try:
            await self.room.connect(self.ingest.url, self.ingest.token(self.name))
        except rtc.ConnectError as exc:
            # The room may have closed since it was listed; a later poll tries again if it is still there.
            log.warning("could not join room %s: %s", self.name, exc)
            return
        LIVEKIT_ROOMS.inc()
        log.info("joined room %s", self.name)
        try:
            # Tracks published before the join are subscribed like later ones (auto-subscribe).
            await self.left.wait()
        finally:
            LIVEKIT_ROOMS.dec()
            for sid in list(self._streams):
                await self._close(sid)
            with contextlib.suppress(Exception):
                await self.room.disconnect()
            if self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            log.info("left room %s: %s", self.name, json.dumps(self.view.snapshot()))

    def _on_track_subscribed(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO or publication.sid in self._tasks:
            return
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        self._streams[publication.sid] = stream
        self._by_participant.setdefault(participant.identity, set()).add(publication.sid)
        self._tasks[publication.sid] = asyncio.create_task(
            self._ingest_track(stream, participant.identity, publication.sid), name=f"livekit-{publication.sid}"
        )

    def _on_track_unsubscribed(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        self._close_soon(publication.sid)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        for sid in self._by_participant.pop(participant.identity, set()):
            self._close_soon(sid)

    def _on_disconnected(self, reason: object) -> None:
        # DUPLICATE_IDENTITY: another instance took the room's lease; its sessions start where ours stop.
        log.info("disconnected from room %s (%s)", self.name, reason)
        self.left.set()

    def _close_soon(self, sid: str) -> None:
        task = asyncio.create_task(self._close(sid))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, sid: str) -> None:
        stream = self._streams.pop(sid, None)
        if stream is not None:
            # Ends the stream's iteration in _ingest_track, which then stops the session.
            await stream.aclose()

    async def _ingest_track(self, stream: rtc.AudioStream, identity: str, sid: str) -> None:
        ingest = self.ingest
        start = SessionStart(
            session_id=session_id_for(self.name, identity, sid, ingest.holder),
            producer=ingest.producer_id,
            **ingest.counts,
        )
        feed = TrackFeed(start)
        self.view.add(start.session_id, identity)
        # Subscribed before the start goes out, so none of the session's results precede us.
        subscription = ingest.fanout.subscribe(start.session_id)
        results = asyncio.create_task(self._forward_results(subscription), name=f"results-{sid}")
        LIVEKIT_TRACKS.inc()
        log.info("track %s of %s in room %s is session %s", sid, identity, self.name, start.session_id)
        try:
            await publish(ingest.producer, AUDIO, start)
            async for event in stream:
                began = time.perf_counter()
                LIVEKIT_FRAMES.inc()
                for chunk in feed.frame(bytes(event.frame.data)):
                    await publish(ingest.producer, AUDIO, chunk)
                LIVEKIT_FRAME_SECONDS.observe(time.perf_counter() - began)
            for record in feed.stop():
                await publish(ingest.producer, AUDIO, record)
            log.info("session %s stopped after %d samples", start.session_id, feed.offset)
            if not ingest.stopping:
                await asyncio.wait_for(asyncio.shield(results), ingest.report_timeout_s)
        except TimeoutError:
            log.warning("no report for session %s within %gs", start.session_id, ingest.report_timeout_s)
        except Exception:
            log.exception("ingest of session %s failed", start.session_id)
            raise
        finally:
            LIVEKIT_TRACKS.dec()
            results.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await results
            ingest.fanout.unsubscribe(subscription)
            self._tasks.pop(sid, None)
            self._streams.pop(sid, None)

    async def _forward_results(self, subscription: Subscription) -> None:
        while True:
            message = await subscription.get()
            if isinstance(message, SpeakerUpdate):
                await self._tell_room(self.view.update(message))
            elif isinstance(message, SessionReport):
                view = self.view.report(message)
                log.info("session %s reported: %s", message.session_id, json.dumps(view["speakers"]))
                await self._tell_room(view)
                return

    async def _tell_room(self, message: dict[str, object]) -> None:
        if not self.ingest.publish_results or not self.room.isconnected():
            return
        try:
            await self.room.local_participant.publish_data(json.dumps(message), reliable=True, topic=DATA_TOPIC)
        except Exception as exc:  # the room may be closing; results still reach the bus's readers
            log.debug("data message to room %s failed: %r", self.name, exc)


class LiveKitIngest:
    """Joins one named room, or every room no other instance holds, and ingests their audio tracks.

    With `room` None it polls the room service every `poll_s` seconds; with a name it joins that
    room (when no other instance holds it) and returns once it has left it.
    """

    def __init__(
        self,
        url: str,
        bootstrap: str,
        api_key: str | None = None,
        api_secret: str | None = None,
        room: str | None = None,
        counts: Mapping[str, int | None] | None = None,
        publish_results: bool = False,
        poll_s: float = 5.0,
        report_timeout_s: float = 120.0,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.url = url
        self.bootstrap = bootstrap
        self.security = security
        # None: the SDK reads LIVEKIT_API_KEY / LIVEKIT_API_SECRET, as every LiveKit tool does.
        self.api_key = api_key
        self.api_secret = api_secret
        self.room = room
        self.counts = dict(counts or {})
        self.publish_results = publish_results
        self.poll_s = poll_s
        self.report_timeout_s = report_timeout_s
        self.holder = uuid.uuid4().hex[:8]
        self.producer_id = f"livekit-{self.holder}"
        self.rooms: dict[str, _RoomIngest] = {}
        # Set once the ingest is leaving: closed tracks then stop their sessions without awaiting reports.
        self.stopping = False
        self._stop = asyncio.Event()
        self.producer: AIOKafkaProducer
        self.fanout: ResultFanout

    def token(self, room: str) -> str:
        grants = api.VideoGrants(
            room_join=True, room=room, hidden=True, can_subscribe=True, can_publish=False, can_publish_data=True
        )
        return (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(AGENT_IDENTITY)
            .with_name("speakerflow")
            .with_grants(grants)
            .to_jwt()
        )

    def stop(self) -> None:
        """Leave every room (each session stopped on the bus) and return from :meth:`run`; safe from a signal handler."""
        self.stopping = True
        self._stop.set()

    async def run(self) -> None:
        await ensure_topics(self.bootstrap, security=self.security)
        self.producer = new_producer(self.bootstrap, self.security)
        await self.producer.start()
        self.fanout = ResultFanout(self.bootstrap, security=self.security)
        try:
            await self.fanout.start()
            async with api.LiveKitAPI(self.url, self.api_key, self.api_secret) as service:
                polling = asyncio.create_task(self._poll(service), name="livekit-rooms")
                stopped = asyncio.create_task(self._stop.wait())
                await asyncio.wait({polling, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not polling.done():
                    polling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await polling  # raises what the polling raised
        finally:
            # Leaving, not cancelling: each room's sessions are stopped on the bus before the producer closes.
            self.stopping = True
            for room in self.rooms.values():
                room.left.set()
            await asyncio.gather(*(room.task for room in self.rooms.values()), return_exceptions=True)
            await self.fanout.stop()
            await self.producer.stop()

    async def _poll(self, service: api.LiveKitAPI) -> None:
        while True:
            self.rooms = {name: room for name, room in self.rooms.items() if not room.task.done()}
            try:
                participants = await self._participants(service)
            except (api.TwirpError, aiohttp.ClientError, TimeoutError) as exc:
                # The rooms already held stay connected (media does not pass the room service); try again next poll.
                log.warning("listing the rooms of %s failed: %r", self.url, exc)
                participants = {}
            for name in rooms_to_join(participants, self.rooms):
                self.rooms[name] = _RoomIngest(self, name)
            if self.room is not None and self.room in self.rooms:
                await self.rooms[self.room].task
                return
            await asyncio.sleep(self.poll_s)

    async def _participants(self, service: api.LiveKitAPI) -> dict[str, list[str]]:
        names = [self.room] if self.room is not None else []
        listed = await service.room.list_rooms(api.ListRoomsRequest(names=names))
        participants = {}
        for room in listed.rooms:
            if room.name in self.rooms:
                continue
            found = await service.room.list_participants(api.ListParticipantsRequest(room=room.name))
            participants[room.name] = [p.identity for p in found.participants]
        return participants
