"""Resumable sessions: the token a client resumes with, and where a session stands on the bus.

A client that loses its connection may come back within the grace period
(SPEAKERFLOW_RESUME_GRACE_S) with ``{"action": "resume", "session_id": ..., "token": ...}``.

- **The token** is an HMAC of the session id (and of the client's audio format, which only the
  gateway that started the session heard) under SPEAKERFLOW_RESUME_SECRET. Every gateway of a
  deployment shares that secret, so any of them can check a token; none needs to remember it.
- **The position** is read back from the audio topic: the session's last record (its partition
  is the key's, its age at most the grace period) gives the seq and the offset of the next one.
  That is the one truth that survives the gateway which fed the session being SIGKILLed; the
  gateway that resumes the session continues the numbering from there, and the workers, which
  only ever see records in seq order, cannot tell.
- **The old feeder** of the session, if it is alive and was waiting for the client, learns of a
  resume elsewhere the same way: when its grace period ends it reads the last record back, and
  stops the session only if that record is still its own.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from pipeline.bus import PLAINTEXT, new_consumer
from pipeline.gateway.audio_input import AudioFormat, Encoding
from pipeline.gateway.protocol import ErrorCode, ProtocolError
from pipeline.settings import KafkaSecurity
from topics import AUDIO, AudioChunk, DecodeError, SessionStart, SessionStop, decode
from topics.messages import SAMPLE_RATE

__all__ = ["SessionPosition", "resume_token", "read_position", "verify_resume_token"]

log = logging.getLogger(__name__)

_MAC_CHARS = 32  # 128 bits of HMAC-SHA256: far beyond guessing, short enough for a URL


def _mac(secret: str, session_id: str, audio_format: AudioFormat) -> str:
    message = f"speakerflow-resume\n{session_id}\n{audio_format.sample_rate}\n{audio_format.encoding}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:_MAC_CHARS]


def resume_token(secret: str, session_id: str, audio_format: AudioFormat) -> str:
    """What `started` hands the client: the audio format it named, signed together with the session id."""
    return f"{audio_format.sample_rate}.{audio_format.encoding}.{_mac(secret, session_id, audio_format)}"


def verify_resume_token(secret: str, session_id: str, token: str) -> AudioFormat:
    """The client's audio format if `token` was issued for `session_id` under `secret`; else ProtocolError."""
    refused = ProtocolError(ErrorCode.INVALID_RESUME, f"the token was not issued for session {session_id}")
    try:
        rate, encoding, mac = token.split(".")
        audio_format = AudioFormat(int(rate), Encoding(encoding))
    except ValueError:
        raise refused from None
    if not hmac.compare_digest(mac.encode(), _mac(secret, session_id, audio_format).encode()):
        raise refused
    return audio_format


@dataclass(frozen=True)
class SessionPosition:
    """Where a session stands on the audio topic: its last record, and the numbering of the next."""

    seq: int  # of the next record
    offset: int  # 16 kHz samples published so far
    producer: str  # who published the last record
    stopped: bool
    age_s: float  # since the last record was written

    @property
    def offset_ms(self) -> int:
        return self.offset * 1000 // SAMPLE_RATE


def _partition(session_id: str) -> int:
    # The producers' default partitioner (murmur2 of the key, as Java's), over the declared partition count.
    return (murmur2(session_id.encode()) & 0x7FFFFFFF) % AUDIO.partitions


async def read_position(
    bootstrap: str, session_id: str, lookback_s: float, security: KafkaSecurity = PLAINTEXT
) -> SessionPosition | None:
    """The session's position from its last record on the audio topic within `lookback_s`; None if it has none.

    Reads the records of the session's partition written in that window: at most the grace period
    of every session that shares the partition, a few MB at full load.
    """
    tp = TopicPartition(AUDIO.name, _partition(session_id))
    key = session_id.encode()
    consumer = new_consumer(bootstrap, security, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        since = await consumer.offsets_for_times({tp: int((time.time() - lookback_s) * 1000)})
        end = (await consumer.end_offsets([tp]))[tp]
        if since[tp] is None:
            return None
        consumer.seek(tp, since[tp].offset)
        last = None
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, []):
                if record.key == key and record.offset < end:
                    last = record
    finally:
        await consumer.stop()
    if last is None:
        return None
    try:
        message = decode(last.key, last.value, last.headers)
    except DecodeError:
        log.warning("the last audio record of session %s does not decode; it cannot be resumed", session_id)
        return None
    age_s = max(0.0, time.time() - last.timestamp / 1000)
    if isinstance(message, SessionStart):
        return SessionPosition(message.seq + 1, 0, message.producer, False, age_s)
    if isinstance(message, AudioChunk):
        return SessionPosition(message.seq + 1, message.offset + message.num_samples, message.producer, False, age_s)
    if isinstance(message, SessionStop):
        return SessionPosition(message.seq + 1, message.offset, message.producer, True, age_s)
    return None
