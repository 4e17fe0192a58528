"""Faust app construction and the glue every stage agent shares."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import faust
from faust.types import EventT

from pipeline.agents.session_states import CHECKPOINT_MAX_BYTES, SessionStates, SkippedRecord
from pipeline.bus import faust_credentials
from pipeline.metrics import StageMetrics, observe_output
from pipeline.settings import Settings
from topics import DEAD_LETTERS, BusMessage, DecodeError, TopicSpec, dead_letter_headers, decode, encode
from topics.registry import DEFAULT_PARTITIONS

log = logging.getLogger(__name__)

State = TypeVar("State")


def build_app(stage: str, settings: Settings) -> faust.App:
    return faust.App(
        f"speakerflow-{stage}",
        broker=f"kafka://{settings.kafka.replace(',', ';kafka://')}",
        broker_credentials=faust_credentials(settings.kafka_security),
        # Tables live in memory and are rebuilt from their changelog topics when a worker takes a partition.
        store="memory://",
        topic_partitions=DEFAULT_PARTITIONS,
        # Sessions started before the worker came up are still processed.
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        producer_acks=-1,
        # Checkpoints of long sessions outgrow the default 1 MiB request.
        producer_max_request_size=CHECKPOINT_MAX_BYTES,
        # How long a dead worker's partitions wait for a survivor: Faust's 60 s default stalls
        # every session on a SIGKILLed worker for a minute. Heartbeats stay at 3 s.
        broker_session_timeout=10.0,
        # A survivor rebuilds a dead worker's sessions from the changelog itself rather than
        # promoting a standby copy (faust-streaming#212: standby events can go unapplied).
        table_standby_replicas=0,
    )


def bus_topic(app: faust.App, spec: TopicSpec) -> faust.TopicT:
    """A declared bus topic; values stay bytes so `topics.decode` owns the wire format.

    Workers run `ensure_topics` first; the config here only matters if Faust ever has to create one.
    """
    return app.topic(
        spec.name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=spec.partitions,
        config=spec.kafka_config(),
    )


def changelog_specs(app: faust.App) -> list[TopicSpec]:
    """The app's table changelogs, created up front like the bus topics so Faust never races their metadata."""
    return [
        TopicSpec(
            name=table.changelog_topic.get_topic_name(),
            description=f"changelog of the {table.name} table",
            messages=(),
            retention_ms=None,
            cleanup_policy="compact",
            partitions=table.partitions,
            max_message_bytes=CHECKPOINT_MAX_BYTES,
        )
        for table in app.tables.values()
    ]


def decode_event(event: EventT, metrics: StageMetrics) -> BusMessage | None:
    """The event's message, or None (logged) if it breaks the contract: one bad record never stops a stage."""
    try:
        return decode(event.key, event.value, event.headers or {})
    except DecodeError as exc:
        metrics.error("decode")
        log.warning(
            "skipping record at %s[%s]@%s: %s", event.message.topic, event.message.partition, event.message.offset, exc
        )
        return None


class RecordGuard:
    """Keeps a record that fails from stopping its stage: counted, logged with where it was read, dead-lettered.

    Faust ends an agent on an exception, and with it every session on its partitions, so a
    record that raises is set aside and the agent moves on. It is dead-lettered at once rather
    than retried after a restart: its offset is committed with the records after it, so no
    restart would read it again, and a record that raised once raises again on the same state.
    """

    def __init__(self, stage: str, metrics: StageMetrics, dead_letters: faust.TopicT) -> None:
        self.stage = stage
        self.metrics = metrics
        self.dead_letters = dead_letters

    @contextlib.asynccontextmanager
    async def record(self, event: EventT) -> AsyncIterator[None]:
        """Handles the event's record in the block; an exception there is the record's failure, not the agent's."""
        try:
            yield
        except Exception as exc:
            await self.failed(event, exc)

    async def failed(self, event: EventT, error: Exception) -> None:
        record = event.message
        self.metrics.error("processing")
        log.error(
            "%s failed on record at %s[%s]@%s (dead-lettered, moving on): %s: %s",
            self.stage,
            record.topic,
            record.partition,
            record.offset,
            type(error).__name__,
            error,
            exc_info=error,
        )
        headers = event.headers or {}
        items = list(headers.items() if isinstance(headers, Mapping) else headers)
        await self.dead_letters.send(
            key=event.key,
            value=event.value,
            headers=dead_letter_headers(items, error, self.stage, record.topic, record.partition, record.offset),
        )


def dead_letter_guard(app: faust.App, stage: str, metrics: StageMetrics) -> RecordGuard:
    return RecordGuard(stage, metrics, bus_topic(app, DEAD_LETTERS))


async def handle_session_messages(
    stream: faust.StreamT,
    sessions: SessionStates[State],
    replay: Callable[[State, BusMessage, int], object],
    handle: Callable[[EventT, BusMessage, State | None], Awaitable[None]],
    guard: RecordGuard,
) -> None:
    """Hands each valid message of the stream to `handle` with its session's state (None when there is none).

    Restoring the state and handling the message are guarded together: a session whose state
    cannot be restored loses its records, not its partition's other sessions.
    """
    metrics = guard.metrics
    async for delivered in stream.events():
        for event in await sessions.with_skipped([delivered]):
            message = decode_event(event, metrics)
            if message is not None:
                async with guard.record(event):
                    with metrics.handling(message):
                        await handle(event, message, await sessions.get(event, replay))
            if isinstance(event, SkippedRecord):
                event.ack()  # the delivered event is acknowledged by the stream itself


def ingest_ms(event: EventT) -> int:
    return int(event.message.timestamp * 1000)


async def send(topic: faust.TopicT, message: BusMessage) -> None:
    key, value, headers = encode(message)
    await topic.send(key=key, value=value, headers=headers)
    observe_output(message)
