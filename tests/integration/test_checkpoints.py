"""Session checkpoints on the real broker: a long session's checkpoint fits its changelog."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from pipeline.agents.app import build_app, changelog_specs
from pipeline.agents.session_states import CHECKPOINT_MAX_BYTES, session_states
from pipeline.bus import ensure_topics, new_consumer, new_producer
from pipeline.settings import Settings
from topics import STEP_EMBEDDINGS

# The accurate cluster stage's state after about half an hour of a session (it grows ~120 KB a minute).
LONG_SESSION_STATE = b"\x00" * (3 * 1024 * 1024)


async def send_and_read_back(bootstrap: str, topic: str, value: bytes) -> bytes:
    producer = new_producer(bootstrap, max_request_size=CHECKPOINT_MAX_BYTES)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, key=b"long-session", value=value, partition=0)
    finally:
        await producer.stop()
    consumer = new_consumer(bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.subscribe([topic])
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
        assert record.offset == sent.offset
        return record.value
    finally:
        await consumer.stop()


def test_a_changelog_takes_a_checkpoint_past_kafkas_default_record_size(bootstrap):
    settings = Settings(kafka=bootstrap)
    app = build_app("cluster", settings)
    session_states(app, "cluster-sessions", STEP_EMBEDDINGS, bytes, settings)
    (declared,) = changelog_specs(app)
    # Topics of their own, declared as the workers declare the changelog, and once with the broker's default.
    spec = dataclasses.replace(declared, name=f"checkpoints-{uuid.uuid4().hex[:8]}")
    default = dataclasses.replace(spec, name=f"{spec.name}-default", max_message_bytes=None)
    asyncio.run(ensure_topics(bootstrap, [spec, default]))

    assert asyncio.run(send_and_read_back(bootstrap, spec.name, LONG_SESSION_STATE)) == LONG_SESSION_STATE
    with pytest.raises(MessageSizeTooLargeError):
        asyncio.run(send_and_read_back(bootstrap, default.name, LONG_SESSION_STATE))
