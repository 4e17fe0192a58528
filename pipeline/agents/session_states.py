"""Live session states of a stateful agent: objects in memory, checkpoints in the changelog, replay on takeover.

Writing a session's whole state to the changelog after every record made the changelog
the largest stream of the dataflow (the segment stage's rolling audio buffer alone was
about 0.75 MB per session-second) and cost a decode and an encode per record. Here the
worker that owns a partition keeps each session's state as a live object and writes a
*checkpoint* only every `CHECKPOINT_RECORDS` of the session's records (or `CHECKPOINT_S`
of wall time), with the input offset it covers. The input topic is the log in between: a
worker that takes the partition over restores the checkpoint and replays the session's
input records from that offset up to the record it was handed, with their outputs
dropped, because the worker that applied them has already sent them. Stages are
deterministic, so the restored state is the one the dead worker had.

A rebalance revokes every partition and assigns them again. The live states of the
partitions a worker is given back are kept: nobody else can have owned them in between,
and records the consumer delivers again from the committed offset are ones the state has
already applied (stages ignore them). Only the states of partitions that went elsewhere
are dropped, and a worker never keeps or checkpoints a state for a partition it does
not own: a state restored from a checkpoint it no longer owns, kept by mistake, would be
used as is if the partition came back, and miss what the other owner applied meanwhile.

faust 0.15 can also skip records of a partition it has just been given: it resumes fetching
before it seeks to the committed offsets, and records fetched in between may never reach
the agent (faust-streaming#216, #221). A session would then go on with a hole in its audio.
The offsets of a partition are consecutive, so `with_skipped` notices the jump, reads the
records it skipped back from the log and hands them to the agent in their place.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from faust.types import TP, EventT, Message

from pipeline.bus import new_consumer
from pipeline.settings import Settings
from pipeline.stages.base import StateVersionError
from topics import BusMessage, DecodeError, TopicSpec, decode

log = logging.getLogger(__name__)

State = TypeVar("State")

# At real-time pace a segment stage's session applies 5 records a second and a cluster
# stage's 2: a restore replays at most 20 s (segment) or 50 s (cluster) of a session.
CHECKPOINT_RECORDS = 100
# A session that sends slowly is still checkpointed this often, well inside the input topics' retention.
CHECKPOINT_S = 60.0

# The largest checkpoint a changelog takes. The accurate cluster stage keeps every embedding of the
# session for its report, about 120 KB a minute: past Kafka's default 1 MiB after 8 minutes, 32 MiB
# after some four hours.
CHECKPOINT_MAX_BYTES = 32 * 1024 * 1024

# A checkpoint is MAGIC, the input offset from which a restore replays, then the stage's own state bytes.
_MAGIC = b"SFC1"
_HEADER = struct.Struct(">4sq")


def encode_checkpoint(replay_from: int, state: bytes) -> bytes:
    return _HEADER.pack(_MAGIC, replay_from) + state


def decode_checkpoint(value: bytes) -> tuple[int, bytes]:
    if len(value) < _HEADER.size or not value.startswith(_MAGIC):
        # Written by a release before checkpoints: resuming from it would be silently wrong.
        raise StateVersionError(f"stored value is not a session checkpoint (starts {value[:8]!r})")
    _, replay_from = _HEADER.unpack_from(value)
    return replay_from, value[_HEADER.size :]


@dataclass
class _Live(Generic[State]):
    state: State
    partition: int
    since_checkpoint: int = 0
    checkpointed_at: float = 0.0


@dataclass
class SkippedRecord:
    """A record the consumer skipped, read back from the log: shaped as the faust events agents handle."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    message: Message
    _ack: Callable[[Message], object]

    def ack(self) -> None:
        """Acknowledge it to the consumer once handled, so that its partition's commits move past it."""
        self._ack(self.message)


def session_states(
    app: faust.App, name: str, source: TopicSpec, load: Callable[[bytes], State], settings: Settings
) -> SessionStates[State]:
    """The sessions of an agent reading `source`, checkpointed to the changelog of table `name`."""
    table = app.Table(
        name,
        # Co-partitioned with the stage's input topic, so a session's checkpoint moves with its partition.
        partitions=source.partitions,
        key_type=bytes,  # bytes keys and values: raw serializers, our own encoding
        value_type=bytes,
    )
    states = SessionStates(table, source.name, load, settings, ack=lambda message: app.consumer.ack(message))

    @app.on_partitions_revoked.connect
    async def suspend_revoked(app: faust.App, revoked: set[TP], **kwargs: object) -> None:
        states.revoked(revoked)

    @app.on_partitions_assigned.connect
    async def keep_assigned(app: faust.App, assigned: set[TP], **kwargs: object) -> None:
        states.assigned(assigned)

    @app.on_before_shutdown.connect
    async def close_reader(app: faust.App, **kwargs: object) -> None:
        await states.close()

    return states


class SessionStates(Generic[State]):
    """One agent's sessions: `get` a session's state, `applied` after each record, `ended` at its stop."""

    def __init__(
        self,
        table: faust.Table,
        source: str,
        load: Callable[[bytes], State],
        settings: Settings,
        checkpoint_records: int = CHECKPOINT_RECORDS,
        checkpoint_s: float = CHECKPOINT_S,
        ack: Callable[[Message], object] = lambda message: None,
    ) -> None:
        self.table = table
        self.source = source
        self.load = load
        self.settings = settings
        self.checkpoint_records = checkpoint_records
        self.checkpoint_s = checkpoint_s
        self._live: dict[bytes, _Live[State]] = {}
        self._reader: AIOKafkaConsumer | None = None
        self.ack = ack
        # The source partitions this worker owns; None until the first assignment (every partition counts).
        self._owned: set[int] | None = None
        # Per source partition: the offset after the newest record handed to the agent.
        self._next_offset: dict[int, int] = {}

    def revoked(self, partitions: Iterable[TP]) -> None:
        """Partitions being taken away: nothing is kept or checkpointed for them until they are assigned again."""
        if self._owned is not None:
            self._owned -= {tp.partition for tp in partitions if tp.topic == self.source}

    def assigned(self, partitions: Iterable[TP]) -> None:
        """The worker's whole assignment after a rebalance: the live states of partitions now elsewhere are dropped."""
        self._owned = {tp.partition for tp in partitions if tp.topic == self.source}
        for key in [k for k, live in self._live.items() if live.partition not in self._owned]:
            del self._live[key]
        for partition in set(self._next_offset) - self._owned:
            del self._next_offset[partition]

    async def with_skipped(self, events: Sequence[EventT]) -> list[EventT | SkippedRecord]:
        """The events in order, each preceded by the records of its partition the consumer skipped before it."""
        handed: list[EventT | SkippedRecord] = []
        for event in events:
            record = event.message
            if record.topic == self.source:
                expected = self._next_offset.get(record.partition)
                if expected is not None and record.offset > expected:
                    log.warning(
                        "the consumer skipped %s[%s]@%s..%s: reading them back",
                        record.topic,
                        record.partition,
                        expected,
                        record.offset - 1,
                    )
                    async for skipped in self._read_range(record.topic, record.partition, expected, record.offset):
                        handed.append(self._skipped_record(skipped))
                # A record delivered again (after a seek back to the committed offset) moves nothing.
                self._next_offset[record.partition] = max(expected or 0, record.offset + 1)
            handed.append(event)
        return handed

    def _skipped_record(self, record: ConsumerRecord) -> SkippedRecord:
        headers = list(record.headers or ())
        message = Message(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp / 1000,
            record.timestamp_type,
            headers,
            record.key,
            record.value,
            None,
            tp=TP(record.topic, record.partition),
        )
        return SkippedRecord(record.key, record.value, headers, message, self.ack)

    def _owns(self, partition: int) -> bool:
        return self._owned is None or partition in self._owned

    async def get(self, event: EventT, replay: Callable[[State, BusMessage, int], object]) -> State | None:
        """The session's state before this record: the live one, or else the checkpoint brought up to date.

        `replay(state, message, ingest_ms)` applies one earlier record to a restored state; what it returns is dropped.
        """
        live = self._live.get(event.key)
        if live is not None:
            return live.state
        stored = self.table.data.get(event.key)
        if stored is None:
            return None
        replay_from, state_bytes = decode_checkpoint(stored)
        state = self.load(state_bytes)
        record = event.message
        earlier = []
        if replay_from < record.offset:
            earlier = [
                r async for r in self._read_back(record.topic, record.partition, event.key, replay_from, record.offset)
            ]

        def replay_all() -> None:
            for message, ingest_ms in earlier:
                replay(state, message, ingest_ms)

        # Off the event loop: a replay runs the stage's model on every record, seconds of work
        # during which the worker must keep heartbeating and serving its other sessions.
        await asyncio.to_thread(replay_all)
        replayed = len(earlier)
        log.info(
            "restored session %s from its checkpoint at %s[%s]@%s, replaying %d records up to @%s",
            event.key.decode(errors="replace"),
            record.topic,
            record.partition,
            replay_from,
            replayed,
            record.offset,
        )
        if self._owns(record.partition):
            # Until its next checkpoint the session still replays from the stored one.
            self._live[event.key] = _Live(state, record.partition, replayed, time.monotonic())
        return state

    def started(self, event: EventT, state: State) -> None:
        """A new session: checkpointed at once, so that any worker can tell it exists."""
        if self._owns(event.message.partition):
            self._live[event.key] = _Live(state, event.message.partition)
            self._checkpoint(event, self._live[event.key])

    def applied(self, event: EventT) -> None:
        """The session's state now includes this record; checkpoint it if one is due."""
        live = self._live.get(event.key)
        if live is None or not self._owns(live.partition):
            return  # its partition was revoked while the record was handled: its next owner has the record
        live.since_checkpoint += 1
        if (
            live.since_checkpoint >= self.checkpoint_records
            or time.monotonic() - live.checkpointed_at >= self.checkpoint_s
        ):
            self._checkpoint(event, live)

    def ended(self, event: EventT) -> None:
        self._live.pop(event.key, None)
        if self._owns(event.message.partition) and self.table.data.pop(event.key, None) is not None:
            self.table.send_changelog(event.message.partition, event.key, None, value_serializer="raw")

    def _checkpoint(self, event: EventT, live: _Live[State]) -> None:
        value = encode_checkpoint(event.message.offset + 1, live.state.to_bytes())
        # What `table[key] = value` does, given the partition: faust takes it from the record being
        # iterated, and records taken in batches (`take_events`) are not.
        self.table.data[event.key] = value
        self.table.send_changelog(event.message.partition, event.key, value)
        live.since_checkpoint, live.checkpointed_at = 0, time.monotonic()

    async def _read_back(self, topic: str, partition: int, key: bytes, start: int, end: int):
        """The session's decodable records at offsets [start, end) of the partition, with their ingest times."""
        async for record in self._read_range(topic, partition, start, end):
            if record.key != key:
                continue
            try:
                message = decode(record.key, record.value, record.headers or ())
            except DecodeError:
                continue  # the worker that applied this stretch skipped it too
            yield message, record.timestamp

    async def _read_range(self, topic: str, partition: int, start: int, end: int) -> AsyncIterator[ConsumerRecord]:
        """The records at offsets [start, end) of the partition, as far as the log still holds them."""
        reader = await self._reader_started()
        tp = TopicPartition(topic, partition)
        reader.assign([tp])
        earliest = (await reader.beginning_offsets([tp]))[tp]
        if earliest > start:
            # Retention removed records the checkpoint needs: what is left is replayed, and stream
            # positions stay true (a stage fills a gap in the audio with silence).
            log.error("records %s[%s]@%s..%s are gone: reading from @%s", topic, partition, start, earliest, earliest)
            start = earliest
        reader.seek(tp, start)
        position = start
        while position < end:
            batch = await reader.getmany(tp, timeout_ms=5000, max_records=1000)
            records = batch.get(tp, [])
            if not records:
                log.error("no records at %s[%s]@%s while reading up to @%s", topic, partition, position, end)
                return
            for record in records:
                if record.offset >= end:
                    return
                position = record.offset + 1
                yield record

    async def _reader_started(self) -> AIOKafkaConsumer:
        if self._reader is None:
            self._reader = new_consumer(
                self.settings.kafka, self.settings.kafka_security, group_id=None, enable_auto_commit=False
            )
            await self._reader.start()
        return self._reader

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None
