"""Faust app construction and the glue every stage agent shares."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import faust
from faust.types import EventT

from pipeline.metrics import StageMetrics, observe_output
from pipeline.settings import Settings
from topics import BusMessage, DecodeError, TopicSpec, decode, encode
from topics.registry import DEFAULT_PARTITIONS

log = logging.getLogger(__name__)

State = TypeVar("State")


def build_app(stage: str, settings: Settings) -> faust.App:
    return faust.App(
        f"speakerflow-{stage}",
        broker=f"kafka://{settings.kafka.replace(',', ';kafka://')}",
        # Tables live in memory and are rebuilt from their changelog topics when a worker takes a partition.
        store="memory://",
        topic_partitions=DEFAULT_PARTITIONS,
        # Sessions started before the worker came up are still processed.
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        producer_acks=-1,
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


def session_table(app: faust.App, name: str, spec: TopicSpec) -> faust.Table:
    # Co-partitioned with the stage's input topic, so a session's state moves with its partition.
    return app.Table(
        name,
        partitions=spec.partitions,
        key_type=bytes,  # bytes keys and values: raw serializers, our own encoding
        value_type=bytes,
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


async def session_messages(
    stream: faust.StreamT, sessions: faust.Table, load: Callable[[bytes], State], metrics: StageMetrics
) -> AsyncIterator[tuple[EventT, BusMessage, State | None]]:
    """Each valid message of the stream with its session's stored state (None when there is none).

    The agent handles a message between this generator's yield and its next step, so
    that span is the message's processing time.
    """
    async for event in stream.events():
        message = decode_event(event, metrics)
        if message is not None:
            with metrics.handling(message):
                stored = sessions.get(event.key)
                yield event, message, load(stored) if stored is not None else None


def ingest_ms(event: EventT) -> int:
    return int(event.message.timestamp * 1000)


async def send(topic: faust.TopicT, message: BusMessage) -> None:
    key, value, headers = encode(message)
    await topic.send(key=key, value=value, headers=headers)
    observe_output(message)
