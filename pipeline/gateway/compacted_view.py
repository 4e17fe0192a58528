"""A gateway's copy of a compacted topic: read from its beginning at start, then followed.

Every gateway holds the whole topic (the speaker registry, the batch jobs), so any of them
serves any record; a tombstone removes its key. `start` returns once the copy has caught up
with the topic's end, so a read right after start sees every record written before it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.bus import PLAINTEXT, new_consumer, stop_following
from pipeline.settings import KafkaSecurity
from topics import TopicSpec


class CompactedView:
    def __init__(
        self,
        bootstrap: str,
        spec: TopicSpec,
        security: KafkaSecurity = PLAINTEXT,
        on_change: Callable[[bytes, bytes | None], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.spec = spec
        self.security = security
        self.records: dict[bytes, bytes] = {}
        self.on_change = on_change
        # Values this process wrote, per key, that the consumer has not read back yet.
        self._unread: dict[bytes, deque[bytes | None]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = new_consumer(self.bootstrap, self.security, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            partitions = [TopicPartition(self.spec.name, p) for p in range(self.spec.partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                self._apply(await consumer.getmany(timeout_ms=500))
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(), name=f"view-{self.spec.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        # The consumer is cleared only once the task has ended: the task reads it until then.
        await stop_following(task, self._consumer)
        self._consumer = None

    def put(self, key: bytes, value: bytes | None) -> None:
        """A record this process wrote, applied at once (read your own writes before the consumer sees it)."""
        self._unread.setdefault(key, deque()).append(value)
        self._set(key, value)

    def _read(self, key: bytes, value: bytes | None) -> None:
        """A record read from the topic. Read back, an earlier write of this process would undo a later one."""
        unread = self._unread.get(key)
        if unread is not None and value in unread:
            while unread.popleft() != value:
                pass
            if unread:
                return  # a later write of ours is held already
            del self._unread[key]
            return
        self._unread.pop(key, None)  # another writer's record: it is the newest
        self._set(key, value)

    def _set(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.records.pop(key, None)
        else:
            self.records[key] = value
        if self.on_change is not None:
            self.on_change(key, value)

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            self._apply(await self._consumer.getmany(timeout_ms=1000))

    def _apply(self, batches: dict) -> None:
        for records in batches.values():
            for record in records:
                self._read(record.key, record.value)
