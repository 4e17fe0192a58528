"""The WebSocket gateway: live audio from clients onto the bus, each session's results back to them.

Endpoints:

- ``/ws/session``: a client starts a session, streams PCM, stops it and receives the
  report (see :mod:`pipeline.gateway.protocol`); it may then start another session on
  the same socket. Its audio reaches the bus as 16 kHz s16le whatever format it names
  (:mod:`pipeline.gateway.audio_input`).
- ``/ws/sessions/{session_id}/events``: read-only; speaker, turn and report events of a
  session that any producer feeds, for downstream consumers.
- ``GET /health``: 200 while the producer and the result fan-out run, else 503.
- ``GET /metrics``: this process's Prometheus metrics (:mod:`pipeline.metrics`).
- ``GET /v1/sessions``, ``GET /v1/sessions/{session_id}/report``: running sessions and
  reports in export formats (:mod:`pipeline.gateway.sessions_api`).
- ``GET /v1/auth/mode``, ``GET /v1/auth``, ``POST /v1/tokens``: credentials (:mod:`pipeline.gateway.access`).
- ``GET /``: the web console (:mod:`pipeline.gateway.console`).

With SPEAKERFLOW_AUTH_MODE=required every endpoint but ``/health``, ``/metrics``, ``/v1/auth/mode``,
the console's static page and the OpenAPI docs needs a credential
(:mod:`pipeline.gateway.credentials`), and everything a caller reaches is its tenant's
(:mod:`pipeline.gateway.tenants`), within its tenant's quotas (:mod:`pipeline.gateway.tenant_quotas`).

Audio only ever passes through memory on its way to the audio topic; nothing is
written to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnected

from pipeline.bus import ensure_topics, new_producer, publish
from pipeline.gateway import console, sessions_api
from pipeline.gateway.access import auth_router
from pipeline.gateway.api_keys import ApiKeyStore
from pipeline.gateway.audio_input import MAX_SAMPLE_RATE, AudioFormat, Encoding
from pipeline.gateway.credentials import Authenticator, CredentialRefused, Principal, credential_from_headers
from pipeline.gateway.fanout import ResultFanout, Subscription
from pipeline.gateway.jobs_api import jobs_router
from pipeline.gateway.protocol import (
    EVENTS_PATH,
    SESSION_PATH,
    AuthAction,
    AuthenticatedEvent,
    ErrorCode,
    GatewaySession,
    ProtocolError,
    ResumeAction,
    ResumedEvent,
    ServerEvent,
    StartAction,
    StartedEvent,
    StopAction,
    parse_action,
    result_event,
)
from pipeline.gateway.resume import read_position, resume_token, verify_resume_token
from pipeline.gateway.speakers_api import speakers_router
from pipeline.gateway.tenant_quotas import TenantQuotas
from pipeline.gateway.tenants import session_tenant
from pipeline.metrics import ACTIVE_SESSIONS, ERRORS, GATEWAY_CONNECTIONS, GATEWAY_SESSIONS
from pipeline.settings import Settings
from topics import AUDIO, AudioChunk, SessionReport, SessionStart, SessionStop, SpeakerUpdate, encode
from topics.messages import DEFAULT_TENANT, SAMPLE_RATE, SessionId

__all__ = ["Gateway", "GatewayServer", "create_app", "serve", "server_config"]

log = logging.getLogger(__name__)

_SESSION_ID = TypeAdapter(SessionId)
# Policy violation, "service restart" for the sockets of a gateway that is stopping, and "try again later"
# for a gateway that is not (or no longer) serving.
_CLOSE_POLICY = 1008
_CLOSE_RESTART = 1012
_CLOSE_TRY_AGAIN = 1013
# What sending on a socket whose client has left raises.
_SOCKET_GONE = (WebSocketDisconnect, WebSocketDisconnected)
# The format whose frames may be largest.
_LARGEST_FORMAT = AudioFormat(MAX_SAMPLE_RATE, Encoding.PCM_F32LE)
# How long a socket that sent no credential in its handshake has to send an auth message, and how many
# such sockets may wait at once: they belong to no tenant yet, so no tenant's quota bounds them.
AUTH_MESSAGE_TIMEOUT_S = 10.0
MAX_AWAITING_AUTH = 256
# Audio a session may have on its way to the bus, beyond the publish timeout's worth: a client streaming in
# real time never reaches the cap, since by the time it has sent that much its oldest frame was delivered or
# failed. A faster client waits at the cap (its receive loop stops reading) while the bus is slow.
IN_FLIGHT_MARGIN_S = 15.0
# How long a stopping gateway waits for its clients to answer the close (1012) of their sockets.
CLOSE_HANDSHAKE_S = 3.0


class RedactAccessTokens(logging.Filter):
    """Blanks ``access_token=`` values in uvicorn's log lines, which print each socket's path with its query."""

    _TOKEN = re.compile(r"(access_token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                self._TOKEN.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        if isinstance(record.msg, str) and "access_token=" in record.msg:
            record.msg = self._TOKEN.sub(r"\1[redacted]", record.msg)
        return True


def _redact_uvicorn_logs() -> None:
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactAccessTokens) for f in logger.filters):
            logger.addFilter(RedactAccessTokens())


def _new_gateway_id() -> str:
    return f"gateway-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"[:128]


class Gateway:
    """What the connections of one running gateway instance share."""

    def __init__(
        self,
        settings: Settings,
        gateway_id: str,
        producer: AIOKafkaProducer,
        fanout: ResultFanout,
        auth: Authenticator | None = None,
    ) -> None:
        self.settings = settings
        self.auth = auth if auth is not None else Authenticator("open", None, settings.auth_jwt_secret)
        self.quotas = TenantQuotas(
            settings.quota_max_sessions, settings.quota_max_connections, settings.quota_audio_seconds_per_minute
        )
        self.id = gateway_id
        self.producer = producer
        self.fanout = fanout
        self.producer_running = True
        # Sessions this instance feeds right now: two sockets feeding one session id would
        # interleave two seq counters on one stream.
        self.sessions: set[str] = set()
        # The socket feeding each of them, and those whose client left mid-session and that wait out the
        # grace period for it to resume (pipeline.gateway.resume): still in `sessions`, fed by no socket.
        self.feeders: dict[str, _SessionSocket] = {}
        self.held: dict[str, tuple[GatewaySession, asyncio.Task[None]]] = {}
        self.resume_secret = settings.resume_secret or secrets.token_urlsafe(32)
        self.awaiting_auth = 0  # sockets accepted without a credential, waiting for their auth message
        # Set when the server stops (GatewayServer): every socket closes itself with 1012.
        self.stopping = asyncio.Event()

    def session_owner(self, session_id: str) -> str:
        return DEFAULT_TENANT if self.auth.open else session_tenant(session_id)

    def claim_session(self, session_id: str) -> None:
        """Count a session this instance feeds; ProtocolError (too_many_sessions) over its tenant's quota."""
        self.quotas.start_session(self.session_owner(session_id), session_id)
        self.sessions.add(session_id)

    def release_session(self, session_id: str) -> None:
        self.sessions.discard(session_id)
        self.quotas.end_session(self.session_owner(session_id), session_id)

    async def publish(self, record: SessionStart | AudioChunk | SessionStop) -> None:
        """Publish and wait for the broker's ack; ProtocolError (bus_unavailable) when it does not come in time."""
        timeout = self.settings.gateway_publish_timeout_s
        try:
            # Bounded here too: the idempotent producer retries a batch sent to the broker for as long as it takes.
            await asyncio.wait_for(publish(self.producer, AUDIO, record), timeout)
        except (KafkaError, TimeoutError) as exc:
            log.warning("publishing %s of session %s failed: %r", record.TYPE, record.session_id, exc)
            detail = exc if isinstance(exc, KafkaError) else f"no ack within {timeout:g}s"
            raise ProtocolError(ErrorCode.BUS_UNAVAILABLE, f"could not publish {record.TYPE}: {detail}") from exc

    async def send(self, chunk: AudioChunk) -> asyncio.Future[object]:
        """Hand a chunk to the producer; the future it returns resolves once the broker acked it."""
        key, value, headers = encode(chunk)
        return await self.producer.send(AUDIO.name, value=value, key=key, headers=headers)

    def hold(self, state: GatewaySession) -> None:
        """Keep a session whose client left for the grace period; stop it then unless it was resumed."""
        assert state.session_id is not None
        task = asyncio.create_task(self._expire(state), name=f"held-{state.session_id}")
        self.held[state.session_id] = (state, task)

    def take_held(self, session_id: str) -> GatewaySession | None:
        entry = self.held.pop(session_id, None)
        if entry is None:
            return None
        entry[1].cancel()
        return entry[0]

    async def _expire(self, state: GatewaySession) -> None:
        session_id = state.session_id
        assert session_id is not None
        await asyncio.sleep(self.settings.resume_grace_s)
        self.held.pop(session_id, None)
        try:
            try:
                position = await read_position(
                    self.settings.kafka, session_id, self.settings.resume_grace_s + 60, self.settings.kafka_security
                )
            except KafkaError as exc:
                log.warning("could not read back session %s (%r); stopping it as its own", session_id, exc)
                position = None
            # The bus may hold fewer records of ours than `state` numbered: chunks whose delivery failed.
            if position is not None and (position.producer != self.id or position.seq > state.seq):
                log.info("session %s was resumed on %s; no longer held here", session_id, position.producer)
                return
            GATEWAY_SESSIONS.labels("abandoned").inc()
            with contextlib.suppress(ProtocolError):  # a tail that cannot be published is lost; the stop must go out
                tail = state.tail()
                if tail is not None:
                    await self.publish(tail)
                    state.commit(tail)
            stop = state.stop()
            try:
                await self.publish(stop)
                log.info(
                    "session %s not resumed within %gs; published its stop", session_id, self.settings.resume_grace_s
                )
            except ProtocolError:
                log.error("session %s not resumed and its stop could not be published", session_id)
        finally:
            self.release_session(session_id)

    def health(self) -> dict[str, object]:
        fanout_running = self.fanout.running
        return {
            "status": "ok" if self.producer_running and fanout_running else "unavailable",
            "gatewayId": self.id,
            "producer": self.producer_running,
            "fanout": fanout_running,
            "sessions": len(self.sessions),
        }


@dataclass(frozen=True)
class _Outgoing:
    pcm: bytes  # 16 kHz s16le
    deadline: float  # event-loop time by which it must be on the bus


class _AudioPublisher:
    """One session's audio on its way to the bus: in order, without holding up the socket that feeds it.

    The receive loop hands each chunk's PCM to :meth:`put` and reads on, so the client's frames, and
    the pongs to the server's keepalive pings, keep being read while the broker is away (uvicorn stops
    reading a socket whose application does not read: the pongs would go unread and the socket closed).
    A sender task numbers each chunk with the session's seq and offset, advanced once the producer has
    taken the record (``send()``; the producer keeps them in order on the partition), and a delivery
    task checks the acks in the order sent. A chunk not acked within the publish timeout of being put
    is lost, and the client gets one ``bus_unavailable`` event per run of such chunks.

    :attr:`confirmed_offset` is the end of the last chunk the broker acked, which is also what a
    gateway reading the session back from the bus finds: the offset a resume continues from.
    """

    def __init__(
        self, gateway: Gateway, state: GatewaySession, report: Callable[[ProtocolError], Awaitable[None]]
    ) -> None:
        self._gateway = gateway
        self._state = state
        self._report = report
        self._timeout = gateway.settings.gateway_publish_timeout_s
        self._cap = int((self._timeout + IN_FLIGHT_MARGIN_S) * SAMPLE_RATE)
        self._outgoing: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._sent: asyncio.Queue[tuple[AudioChunk, asyncio.Future[object], float]] = asyncio.Queue()
        self._in_flight = 0  # samples put and not yet acked or lost
        self._settled = asyncio.Condition()
        self._failing = False  # the last chunk settled was lost: the client has been told
        self.confirmed_offset = state.offset
        self._tasks = [
            asyncio.create_task(self._send_in_order(), name=f"send-{state.session_id}"),
            asyncio.create_task(self._confirm_in_order(), name=f"confirm-{state.session_id}"),
        ]

    async def put(self, pcm: bytes) -> None:
        """Queue a chunk's samples for the bus; waits only while the session has the cap's worth in flight."""
        if self._in_flight >= self._cap:
            async with self._settled:
                await self._settled.wait_for(lambda: self._in_flight < self._cap)
        self._in_flight += len(pcm) // 2
        self._outgoing.put_nowait(_Outgoing(pcm, asyncio.get_running_loop().time() + self._timeout))

    async def drain(self) -> None:
        """Wait until every chunk put was acked or lost."""
        async with self._settled:
            await self._settled.wait_for(lambda: self._in_flight == 0)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _send_in_order(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._outgoing.get()
            state = self._state
            assert state.session_id is not None
            chunk = AudioChunk(
                session_id=state.session_id, seq=state.seq, offset=state.offset, producer=state.producer, pcm=item.pcm
            )
            try:
                remaining = item.deadline - loop.time()
                if remaining <= 0:
                    raise KafkaTimeoutError("the producer took no record for the whole publish timeout")
                # send() waits while the producer's batch for the partition is full (the broker away).
                delivery = await asyncio.wait_for(self._gateway.send(chunk), remaining)
            except (KafkaError, TimeoutError) as exc:
                # Never taken by the producer: the next chunk gets its numbering, as after a frame the network lost.
                await self._settle(chunk, exc)
                continue
            state.commit(chunk)
            self._sent.put_nowait((chunk, delivery, item.deadline))

    async def _confirm_in_order(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk, delivery, deadline = await self._sent.get()
            try:
                # Shielded: a chunk given up on here may still reach the bus; the producer keeps it.
                await asyncio.wait_for(asyncio.shield(delivery), max(deadline - loop.time(), 0.0))
            except asyncio.CancelledError:
                if not delivery.cancelled():
                    raise  # this task was cancelled, not the delivery (the producer stopping)
                await self._settle(chunk, KafkaError("the producer stopped before the broker acked"))
            except Exception as exc:  # whatever failed the delivery, the chunk is lost and the rest must go on
                await self._settle(chunk, exc)
            else:
                self.confirmed_offset = chunk.offset + chunk.num_samples
                await self._settle(chunk, None)

    async def _settle(self, chunk: AudioChunk, error: BaseException | None) -> None:
        self._in_flight -= chunk.num_samples
        async with self._settled:
            self._settled.notify_all()
        if error is None:
            self._failing = False
        elif not self._failing:
            self._failing = True
            if isinstance(error, TimeoutError):
                error = KafkaTimeoutError(f"no ack within {self._timeout:g}s")
            log.warning("audio of session %s lost from offset %d: %r", chunk.session_id, chunk.offset, error)
            await self._report(
                ProtocolError(
                    ErrorCode.BUS_UNAVAILABLE,
                    f"could not publish audio from offset {chunk.offset}: {error}; it is lost until the bus takes "
                    "audio again",
                )
            )


class _SessionSocket:
    """One client socket on /ws/session, for as many sessions as it runs one after another.

    The receive loop never waits for results: a pump task forwards the session's results
    and delivers its report, and a deadline task gives up on a report that does not come,
    so the client is heard (and a disconnect noticed) while its report is pending.
    """

    def __init__(self, gateway: Gateway, websocket: WebSocket, caller: _SocketCaller) -> None:
        self.gateway = gateway
        self.ws = websocket
        self.caller = caller
        self.principal = caller.principal
        self.state = GatewaySession(gateway.id, gateway.settings.max_frame_bytes)
        # The pump, the deadline and the receive loop all send; frames must not interleave.
        self._send_lock = asyncio.Lock()
        self._subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._deadline: asyncio.Task[None] | None = None
        self._report: SessionReport | None = None
        # Held while a record of the session is built and published, so a resume elsewhere takes the
        # session's numbering between records, never in the middle of one.
        self._publishing = asyncio.Lock()
        self._closing: asyncio.Task[None] | None = None
        self._closed = False  # this side sent the close: nothing more may be sent
        # The running session's audio on its way to the bus; None while no session runs.
        self._publisher: _AudioPublisher | None = None

    async def run(self, revoked: asyncio.Event) -> None:
        if not self.caller.accepted:
            await self.ws.accept()
        stopping = asyncio.create_task(self._close_when_stopping())
        revoking = asyncio.create_task(self._close_when_revoked(revoked))
        try:
            if self.caller.by_message:
                await self._send(_authenticated(self.principal))
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    if message.get("bytes") is not None:
                        await self._on_audio(message["bytes"])
                    elif message.get("text") is not None:
                        await self._on_action(message["text"])
                except ProtocolError as exc:
                    ERRORS.labels("gateway", exc.code.value).inc()
                    log.debug("session socket error %s: %s", exc.code, exc.message)
                    await self._send(exc.event())
        except _SOCKET_GONE:
            pass
        finally:
            stopping.cancel()
            revoking.cancel()
            await self._abandon()

    async def _close_when_stopping(self) -> None:
        await self.gateway.stopping.wait()
        # The receive loop then reads the disconnect, and the session is held for a resume elsewhere.
        await self._close(_CLOSE_RESTART, "gateway shutting down")

    async def _close_when_revoked(self, revoked: asyncio.Event) -> None:
        await revoked.wait()
        # As a dropped connection: the session is held, but only a valid credential may resume it.
        with contextlib.suppress(*_SOCKET_GONE):
            await self._send(_revoked_error().event())
        await self._close(_CLOSE_POLICY, ErrorCode.INVALID_CREDENTIAL.value)

    async def _on_action(self, text: str) -> None:
        action = parse_action(text)
        if isinstance(action, StartAction):
            await self._start(action)
        elif isinstance(action, StopAction):
            await self._stop()
        elif isinstance(action, ResumeAction):
            await self._resume(action)
        elif isinstance(action, AuthAction):
            if not self.principal.open:
                raise ProtocolError(ErrorCode.ALREADY_AUTHENTICATED, "this socket is authenticated already")
            await self._send(_authenticated(self.principal))

    async def _start(self, action: StartAction) -> None:
        start = self.state.start(action, None if self.principal.open else self.principal.tenant)
        if start.session_id in self.gateway.sessions:
            raise ProtocolError(ErrorCode.SESSION_IN_USE, f"session {start.session_id} is being fed by another socket")
        self.gateway.claim_session(start.session_id)
        self.gateway.feeders[start.session_id] = self
        # Subscribe before the start reaches the workers, so no result of the session can precede us.
        subscription = self.gateway.fanout.subscribe(start.session_id)
        try:
            await self.gateway.publish(start)
        except BaseException:
            self.gateway.fanout.unsubscribe(subscription)
            self.gateway.release_session(start.session_id)
            self.gateway.feeders.pop(start.session_id, None)
            raise
        audio_format = action.audio_format()
        self.state.commit(start, audio_format)
        self._publisher = self._new_publisher()
        self._subscription = subscription
        log.info(
            "session %s started (num_speakers=%s, min_speakers=%d, max_speakers=%d, audio %s)",
            start.session_id,
            start.num_speakers,
            start.min_speakers,
            start.max_speakers,
            audio_format,
        )
        token = resume_token(self.gateway.resume_secret, start.session_id, audio_format)
        await self._send(StartedEvent(num_speakers=start.num_speakers, session_id=start.session_id, resume_token=token))
        self._pump = asyncio.create_task(self._forward_results(subscription))

    async def _resume(self, action: ResumeAction) -> None:
        """Continue a session whose connection was lost: held here, fed by a stale socket here, or read off the bus."""
        gateway, session_id = self.gateway, action.session_id
        if not self.principal.owns_session(session_id):
            raise ProtocolError(ErrorCode.WRONG_TENANT, f"session {session_id} belongs to another tenant")
        audio_format = verify_resume_token(gateway.resume_secret, session_id, action.token)
        if self.state.active:
            raise ProtocolError(ErrorCode.ALREADY_STARTED, f"session {self.state.session_id} runs on this connection")
        state = gateway.take_held(session_id)
        feeder = gateway.feeders.get(session_id)
        if state is None and feeder is not None and feeder is not self:
            if feeder.state.stopped:
                raise ProtocolError(ErrorCode.RESUME_EXPIRED, f"session {session_id} was stopped; it awaits its report")
            # The client came back before this gateway noticed its old connection was gone (a half-open TCP).
            state = await feeder.hand_over()
        if state is None:
            state = await self._adopt_from_bus(session_id, audio_format)
        self.state = state
        gateway.claim_session(session_id)
        gateway.feeders[session_id] = self
        self._publisher = self._new_publisher()
        self._subscription = gateway.fanout.subscribe(session_id)
        # Not an outcome: the session ends later, reported or abandoned, and is counted then.
        log.info("session %s resumed at %d samples", session_id, state.offset)
        await self._send(
            ResumedEvent(session_id=session_id, offset=state.offset, offset_ms=state.offset * 1000 // SAMPLE_RATE)
        )
        self._pump = asyncio.create_task(self._forward_results(self._subscription))

    async def _adopt_from_bus(self, session_id: str, audio_format: AudioFormat) -> GatewaySession:
        """A session another gateway fed (one that died, or whose client went elsewhere), continued from the bus."""
        if session_id in self.gateway.sessions:
            raise ProtocolError(ErrorCode.SESSION_IN_USE, f"session {session_id} is being fed by another socket")
        owner = self.gateway.session_owner(session_id)
        # Counted before the bus is read, so two resumes at once cannot both pass the quota.
        self.gateway.quotas.start_session(owner, session_id)
        try:
            return await self._read_back(session_id, audio_format)
        except BaseException:
            self.gateway.quotas.end_session(owner, session_id)
            raise

    async def _read_back(self, session_id: str, audio_format: AudioFormat) -> GatewaySession:
        settings = self.gateway.settings
        try:
            # Twice the grace period: a session left longer ago than that is not resumed, but still stopped.
            position = await read_position(
                settings.kafka, session_id, 2 * settings.resume_grace_s + 10, settings.kafka_security
            )
        except KafkaError as exc:
            raise ProtocolError(ErrorCode.BUS_UNAVAILABLE, f"could not read session {session_id} back: {exc}") from exc
        if position is None or position.stopped:
            raise ProtocolError(ErrorCode.RESUME_EXPIRED, f"session {session_id} has ended or is unknown")
        state = GatewaySession(self.gateway.id, settings.max_frame_bytes)
        state.resume(session_id, position.seq, position.offset, audio_format)
        if position.age_s > settings.resume_grace_s:
            # Its gateway died and the client came back too late: end it as a lost connection ends.
            await self.gateway.publish(state.stop())
            GATEWAY_SESSIONS.labels("abandoned").inc()
            raise ProtocolError(
                ErrorCode.RESUME_EXPIRED,
                f"session {session_id} was left {position.age_s:.0f}s ago, "
                f"over the {settings.resume_grace_s:g}s grace period",
            )
        return state

    async def hand_over(self) -> GatewaySession:
        """Give up this socket's running session to a resume on another socket, and close this one."""
        async with self._publishing:
            await self._settle()
            self._close_publisher()
            state = self.state
            self.state = GatewaySession(self.gateway.id, self.gateway.settings.max_frame_bytes)
            for task in (self._pump, self._deadline):
                if task is not None:
                    task.cancel()
            self._pump = self._deadline = None
            if self._subscription is not None:
                self.gateway.fanout.unsubscribe(self._subscription)
                self._subscription = None
        if state.session_id is not None and self.gateway.feeders.get(state.session_id) is self:
            del self.gateway.feeders[state.session_id]
        self._closing = asyncio.create_task(self._close(1000, "session resumed on another connection"))
        return state

    async def _close(self, code: int, reason: str) -> None:
        async with self._send_lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason)

    async def _on_audio(self, frame: bytes) -> None:
        if not frame:
            return  # a keep-alive at most; a record without samples would tell the workers nothing
        if self.state.active and not self.state.stopped:
            audio_format = self.state.converter.format
            seconds = len(frame) / (audio_format.encoding.bytes_per_sample * audio_format.sample_rate)
            self.gateway.quotas.take_audio(self.gateway.session_owner(self.state.session_id or ""), seconds)
        async with self._publishing:
            # Validated and converted here; numbered once the producer takes it (_AudioPublisher).
            chunk = self.state.audio(frame)
            if chunk is not None:
                assert self._publisher is not None
                await self._publisher.put(chunk.pcm)

    def _new_publisher(self) -> _AudioPublisher:
        self._close_publisher()
        return _AudioPublisher(self.gateway, self.state, self._report_lost_audio)

    def _close_publisher(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    async def _report_lost_audio(self, error: ProtocolError) -> None:
        ERRORS.labels("gateway", error.code.value).inc()
        with contextlib.suppress(*_SOCKET_GONE, RuntimeError):  # a client that left learns nothing
            await self._send(error.event())

    async def _settle(self) -> None:
        """Wait until the session's audio is all on the bus or lost; its offset is then the end of what the bus holds."""
        if self._publisher is not None:
            await self._publisher.drain()
            self.state.offset = self._publisher.confirmed_offset

    async def _publish_tail(self) -> None:
        """What the converter still holds, the session's last samples, then the wait for all its audio to be acked."""
        tail = self.state.tail()
        if tail is not None and self._publisher is not None:
            await self._publisher.put(tail.pcm)
        await self._settle()

    async def _publish(self, record: SessionStop) -> None:
        await self.gateway.publish(record)
        self.state.commit(record)

    async def _stop(self) -> None:
        async with self._publishing:
            # The stop goes out once every chunk before it was acked or lost: it is the session's last record.
            await self._publish_tail()
            stop = self.state.stop()
            await self._publish(stop)
        log.info("session %s stopped after %d samples; awaiting its report", stop.session_id, stop.offset)
        if self._report is not None:
            await self._deliver_report()  # it came before the stop: another producer ended the session
        else:
            self._deadline = asyncio.create_task(self._expire(stop.session_id, self.gateway.settings.report_timeout_s))

    async def _forward_results(self, subscription: Subscription) -> None:
        try:
            while True:
                message = await subscription.get()
                if isinstance(message, SessionReport):
                    # Held until the client's own stop is on the bus: ending the session while the
                    # receive loop is publishing one of its records would corrupt its numbering.
                    self._report = message
                    if self.state.stopped:
                        await self._deliver_report()
                    return
                # Turns are for subscriber sockets; the session socket gets updates and the report.
                if isinstance(message, SpeakerUpdate):
                    await self._send(result_event(message))
        except _SOCKET_GONE:
            pass  # the receive loop sees the disconnect and cleans up

    async def _deliver_report(self) -> None:
        assert self._report is not None
        report = self._report
        # Every update read before the report has been sent; finishing first keeps the report last.
        self._finish()
        GATEWAY_SESSIONS.labels("reported").inc()
        log.info("session %s reported", report.session_id)
        await self._send(result_event(report))

    async def _expire(self, session_id: str, timeout: float) -> None:
        await asyncio.sleep(timeout)
        self._finish()
        GATEWAY_SESSIONS.labels("timeout").inc()
        log.warning("no report for session %s within %gs", session_id, timeout)
        error = ProtocolError(ErrorCode.REPORT_TIMEOUT, f"no report for session {session_id} within {timeout:g}s")
        with contextlib.suppress(*_SOCKET_GONE):
            await self._send(error.event())

    def _finish(self) -> None:
        """Forget the current session; the socket may start another."""
        current = asyncio.current_task()
        for task in (self._pump, self._deadline):
            if task is not None and task is not current:
                task.cancel()
        self._pump = self._deadline = None
        if self._subscription is not None:
            self.gateway.fanout.unsubscribe(self._subscription)
            self._subscription = None
        self._close_publisher()
        self._report = None
        if self.state.session_id is not None:
            self.gateway.release_session(self.state.session_id)
            if self.gateway.feeders.get(self.state.session_id) is self:
                del self.gateway.feeders[self.state.session_id]
        self.state.end()

    async def _abandon(self) -> None:
        """The socket is gone: hold its open session for a resume, or close it on the bus so the workers do not wait."""
        if self.state.active and not self.state.stopped and self.gateway.settings.resume_grace_s > 0:
            async with self._publishing:
                # A resume continues from what reached the bus: the audio in flight is acked (or lost) first.
                await self._settle()
                self._close_publisher()
                state = self.state
                self.state = GatewaySession(self.gateway.id, self.gateway.settings.max_frame_bytes)
            assert state.session_id is not None
            if self.gateway.feeders.get(state.session_id) is self:
                del self.gateway.feeders[state.session_id]
            self.gateway.hold(state)
            log.info("client of session %s left at %d samples; holding it for a resume", state.session_id, state.offset)
        if self.state.active:
            GATEWAY_SESSIONS.labels("abandoned").inc()
        if self.state.active and not self.state.stopped:
            with contextlib.suppress(ProtocolError):  # a tail that cannot be published is lost; the stop must go out
                await self._publish_tail()
            stop = self.state.stop()
            try:
                await self._publish(stop)
                log.info("client of session %s left; published its stop at %d samples", stop.session_id, stop.offset)
            except ProtocolError:
                log.error("client of session %s left and its stop could not be published", stop.session_id)
        tasks = [task for task in (self._pump, self._deadline) if task is not None]
        self._finish()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *_SOCKET_GONE):
                await task

    async def _send(self, event: ServerEvent) -> None:
        async with self._send_lock:
            if self._closed:
                raise WebSocketDisconnect(_CLOSE_RESTART)
            await self.ws.send_text(event.to_json())


@dataclass(frozen=True)
class _SocketCaller:
    """Who a socket is, and whether the handshake is done already (a credential sent as the first message)."""

    principal: Principal
    accepted: bool
    by_message: bool


def _revoked_error() -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_CREDENTIAL, "the API key of this connection was revoked")


def _authenticated(principal: Principal) -> AuthenticatedEvent:
    return AuthenticatedEvent(tenant=principal.tenant, scopes=principal.granted)


async def _refuse_socket(websocket: WebSocket, error: ProtocolError, accepted: bool) -> None:
    """An error event, then close 1008: the client learns why before the socket closes."""
    ERRORS.labels("gateway", error.code.value).inc()
    with contextlib.suppress(*_SOCKET_GONE, RuntimeError):
        if not accepted:
            await websocket.accept()
        await websocket.send_text(error.event().to_json())
        await websocket.close(_CLOSE_POLICY, error.code.value)


async def _first_message_credential(websocket: WebSocket) -> str:
    try:
        message = await asyncio.wait_for(websocket.receive(), AUTH_MESSAGE_TIMEOUT_S)
    except TimeoutError:
        raise ProtocolError(
            ErrorCode.UNAUTHENTICATED, f"no credential within {AUTH_MESSAGE_TIMEOUT_S:g}s of connecting"
        ) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    action = parse_action(text) if text is not None else None
    if not isinstance(action, AuthAction):
        raise ProtocolError(
            ErrorCode.UNAUTHENTICATED,
            'authenticate first: {"action": "auth", "token": ...}, an Authorization header or ?access_token=',
        )
    return action.token


async def _authenticate_socket(gateway: Gateway, websocket: WebSocket, scope: str) -> _SocketCaller | None:
    """The socket's caller if it holds `scope`; None once a refusal was sent and the socket closed (1008)."""
    auth = gateway.auth
    credential = credential_from_headers(websocket.headers)
    from_query = False
    if credential is None and websocket.query_params.get("access_token"):
        credential, from_query = websocket.query_params["access_token"], True
    accepted = by_message = False
    try:
        if credential is None and not auth.open:
            await websocket.accept()
            accepted = by_message = True
            if gateway.awaiting_auth >= MAX_AWAITING_AUTH:
                raise ProtocolError(ErrorCode.UNAUTHENTICATED, "too many sockets await authentication; send a header")
            gateway.awaiting_auth += 1
            try:
                credential = await _first_message_credential(websocket)
            finally:
                gateway.awaiting_auth -= 1
        principal = auth.authenticate(credential, from_query)
        principal.require(scope)
    except CredentialRefused as exc:
        log.info("socket refused: %s", exc)
        await _refuse_socket(websocket, ProtocolError(ErrorCode(exc.code), exc.message), accepted)
        return None
    except ProtocolError as exc:
        await _refuse_socket(websocket, exc, accepted)
        return None
    except _SOCKET_GONE:
        return None
    return _SocketCaller(principal, accepted, by_message)


async def _serve_subscriber(
    gateway: Gateway, websocket: WebSocket, session_id: str, caller: _SocketCaller, revoked: asyncio.Event
) -> None:
    try:
        _SESSION_ID.validate_python(session_id)
    except ValidationError:
        error = ProtocolError(ErrorCode.INVALID_SESSION_ID, f"{session_id!r} is not a valid session id")
        await _refuse_socket(websocket, error, caller.accepted)
        return
    if not caller.principal.owns_session(session_id):
        error = ProtocolError(ErrorCode.WRONG_TENANT, f"session {session_id} belongs to another tenant")
        await _refuse_socket(websocket, error, caller.accepted)
        return

    async def forward(subscription: Subscription) -> None:
        while True:
            await websocket.send_text(result_event(await subscription.get()).to_json())

    async def until_disconnect() -> None:
        # Subscribers have nothing to say; reading is only how a closed socket is noticed.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    # Subscribed before the handshake completes: every result read after the client sees
    # the socket open reaches it.
    with gateway.fanout.subscription(session_id) as subscription:
        if not caller.accepted:
            await websocket.accept()
        if caller.by_message:
            await websocket.send_text(_authenticated(caller.principal).to_json())
        log.info("subscriber watching session %s", session_id)
        stopping = asyncio.create_task(gateway.stopping.wait())
        revoking = asyncio.create_task(revoked.wait())
        tasks = {
            asyncio.create_task(forward(subscription)),
            asyncio.create_task(until_disconnect()),
            stopping,
            revoking,
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, *_SOCKET_GONE):
                    await task
        if stopping.done() and not stopping.cancelled():
            # Nothing else sends on the socket any more.
            with contextlib.suppress(Exception):
                await websocket.close(_CLOSE_RESTART, "gateway shutting down")
        elif revoking.done() and not revoking.cancelled():
            await _refuse_socket(websocket, _revoked_error(), accepted=True)
        log.info("subscriber of session %s left", session_id)


def create_app(settings: Settings) -> FastAPI:
    """The gateway application; its lifespan creates the topics, starts the producer and the fan-out."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ensure_topics(settings.kafka, security=settings.kafka_security)
        # Only a gateway that asks for credentials reads the keys (the whole topic, before serving).
        keys = ApiKeyStore(settings.kafka, settings.kafka_security) if settings.auth_mode == "required" else None
        auth = Authenticator(
            settings.auth_mode,
            keys,
            settings.auth_jwt_secret,
            settings.auth_jwks_file,
            settings.auth_token_ttl_s,
            jwt_issuer=settings.auth_jwt_issuer,
            jwt_audience=settings.auth_jwt_audience,
        )
        if keys is not None:
            await keys.start()
        # The producer's batches wait this long for a partition leader (a broker restarting) before they fail.
        producer = new_producer(
            settings.kafka, settings.kafka_security, request_timeout_ms=int(settings.gateway_publish_timeout_s * 1000)
        )
        fanout = ResultFanout(settings.kafka, security=settings.kafka_security)
        try:
            await producer.start()
            try:
                # Before accepting any session: the fan-out's position at the end of the result
                # topics is what guarantees no session's results are missed.
                await fanout.start()
            except BaseException:
                await producer.stop()
                raise
        except BaseException:
            if keys is not None:
                await keys.stop()
            raise
        gateway = Gateway(settings, _new_gateway_id(), producer, fanout, auth)
        app.state.gateway = gateway
        app.state.auth = auth
        log.info("gateway %s serving on bus %s", gateway.id, settings.kafka)
        try:
            yield
        finally:
            app.state.gateway = None
            app.state.auth = None
            gateway.producer_running = False
            # Held sessions are left open on the bus: their clients may resume them on another gateway.
            for _, expiry in gateway.held.values():
                expiry.cancel()
            await fanout.stop()
            await producer.stop()
            if keys is not None:
                await keys.stop()
            log.info("gateway %s stopped", gateway.id)

    _redact_uvicorn_logs()  # browsers' tokens travel in the query string, which uvicorn logs
    app = FastAPI(title="speakerflow gateway", lifespan=lifespan)
    app.state.gateway = None
    app.state.auth = None
    app.include_router(auth_router)
    app.include_router(speakers_router(settings))
    app.include_router(jobs_router(settings))
    # Read at scrape time; the last gateway app created in a process is the one reported.
    ACTIVE_SESSIONS.labels("gateway").set_function(
        lambda: len(app.state.gateway.sessions) if app.state.gateway is not None else 0
    )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        gateway: Gateway | None = request.app.state.gateway
        if gateway is None:
            return JSONResponse({"status": "unavailable", "producer": False, "fanout": False}, status_code=503)
        body = gateway.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.websocket(SESSION_PATH)
    async def session_socket(websocket: WebSocket) -> None:
        gateway: Gateway | None = websocket.app.state.gateway
        if gateway is None:
            await websocket.close(_CLOSE_TRY_AGAIN)
            return
        caller = await _authenticate_socket(gateway, websocket, "ingest")
        if caller is not None:
            await _serve_counted(gateway, websocket, caller, _SessionSocket(gateway, websocket, caller).run)

    @app.websocket(EVENTS_PATH)
    async def subscriber_socket(websocket: WebSocket, session_id: str) -> None:
        gateway: Gateway | None = websocket.app.state.gateway
        if gateway is None:
            await websocket.close(_CLOSE_TRY_AGAIN)
            return
        caller = await _authenticate_socket(gateway, websocket, "subscribe")
        if caller is not None:
            await _serve_counted(
                gateway,
                websocket,
                caller,
                lambda revoked: _serve_subscriber(gateway, websocket, session_id, caller, revoked),
            )

    app.include_router(sessions_api.router)
    # The web console (docs/console.md): its page at / and its scripts and styles under /console.
    app.include_router(console.router)
    app.mount(console.ASSETS_PATH, console.assets, name="console")
    return app


async def _serve_counted(
    gateway: Gateway,
    websocket: WebSocket,
    caller: _SocketCaller,
    serve_socket: Callable[[asyncio.Event], Awaitable[None]],
) -> None:
    """Serve an authenticated socket within its tenant's connection quota, until its API key is revoked."""
    tenant = caller.principal.tenant
    try:
        gateway.quotas.connect(tenant)
    except ProtocolError as exc:
        await _refuse_socket(websocket, exc, caller.accepted)
        return
    try:
        with GATEWAY_CONNECTIONS.track_inprogress(), gateway.auth.watch_revocation(caller.principal) as revoked:
            await serve_socket(revoked)
    finally:
        gateway.quotas.disconnect(tenant)


def server_config(settings: Settings, app: FastAPI | None = None, **overrides: object) -> uvicorn.Config:
    """The uvicorn configuration :func:`serve` uses; ``overrides`` go to ``uvicorn.Config``."""
    options: dict[str, object] = {
        "host": settings.gateway_host,
        "port": settings.gateway_port,
        "lifespan": "on",  # a gateway that cannot reach the bus must not start serving
        # Frames a little over the limit get a frame_too_large event; far larger ones close the
        # socket (1009) before the whole frame is buffered. The limit of the format with the most
        # bytes per second is the largest.
        "ws_max_size": max(4 * _LARGEST_FORMAT.frame_limit(settings.max_frame_bytes), 1 << 20),
        "log_level": "info",
    }
    if settings.gateway_tls_certfile is not None or settings.gateway_tls_keyfile is not None:
        if settings.gateway_tls_certfile is None or settings.gateway_tls_keyfile is None:
            raise ValueError("SPEAKERFLOW_GATEWAY_TLS_CERTFILE and SPEAKERFLOW_GATEWAY_TLS_KEYFILE go together")
        options["ssl_certfile"] = str(settings.gateway_tls_certfile)
        options["ssl_keyfile"] = str(settings.gateway_tls_keyfile)
    options.update(overrides)
    return uvicorn.Config(app if app is not None else create_app(settings), **options)  # type: ignore[arg-type]


class GatewayServer(uvicorn.Server):
    """uvicorn's server, except that a stopping gateway closes its sockets itself (1012) and waits for the replies.

    uvicorn's own shutdown writes a close frame and drops the TCP connection at once. A client still
    streaming audio then has data unread on the gateway's side (uvicorn stops reading a socket between
    the messages the application reads), so the kernel answers with a reset, and a browser that gets the
    reset before it has read the close frame reports 1006 instead of 1012. Closed by the application,
    the socket is read (and its messages dropped) until the client echoes the close.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        gateway: Gateway | None = self.app.state.gateway
        if gateway is not None and not self.force_exit:
            for server in self.servers:
                server.close()  # no new connections while the old ones close
            gateway.stopping.set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CLOSE_HANDSHAKE_S
            websocket_protocol = self.config.ws_protocol_class
            while loop.time() < deadline and websocket_protocol is not None:
                if not any(isinstance(c, websocket_protocol) for c in self.server_state.connections):
                    break
                await asyncio.sleep(0.05)
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    """Run the gateway until interrupted."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    GatewayServer(server_config(settings, app), app).run()
