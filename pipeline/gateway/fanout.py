"""Delivery of result records to the sockets that want them.

Every gateway instance reads *all* results (a group-less tail consumer, see
:func:`pipeline.bus.tail_consumer`) and keeps those of the sessions its sockets
watch, so any number of gateways can run side by side without coordinating
partitions with the workers that produce the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from pipeline.bus import PLAINTEXT, stop_following, tail_consumer
from pipeline.gateway.protocol import ResultMessage
from pipeline.gateway.running_sessions import RunningSessions
from pipeline.settings import KafkaSecurity
from topics import SESSION_REPORTS, SPEAKER_TURNS, SPEAKER_UPDATES, DecodeError, SpeakerTurn, SpeakerUpdate, decode

__all__ = ["RESULT_TOPICS", "ResultFanout", "Subscription"]

log = logging.getLogger(__name__)

RESULT_TOPICS = (SPEAKER_UPDATES, SPEAKER_TURNS, SESSION_REPORTS)

DEFAULT_QUEUE_SIZE = 256


class Subscription:
    """One reader's bounded queue of one session's results.

    When the reader falls behind, the oldest speaker update is dropped first (a later
    update supersedes it), then the oldest turn; reports are never dropped, so a full
    queue of nothing but reports may grow past ``maxsize`` (one report per session).
    """

    def __init__(self, session_id: str, maxsize: int = DEFAULT_QUEUE_SIZE) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.session_id = session_id
        self.maxsize = maxsize
        self.dropped = 0
        self._items: deque[ResultMessage] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, message: ResultMessage) -> None:
        if len(self._items) >= self.maxsize:
            self._evict()
        self._items.append(message)
        self._ready.set()

    async def get(self) -> ResultMessage:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def _evict(self) -> None:
        for kind in (SpeakerUpdate, SpeakerTurn):
            for index, queued in enumerate(self._items):
                if isinstance(queued, kind):
                    del self._items[index]
                    self.dropped += 1
                    # Warn on the first drop and then sparsely: a stuck reader would flood the log.
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        log.warning(
                            "slow subscriber of session %s: dropped %d result(s) so far", self.session_id, self.dropped
                        )
                    return


class ResultFanout:
    """Reads the result topics from their end and hands each record to its session's subscriptions.

    Start it (which positions the consumer at the end of every partition) before
    accepting sessions: a result published after :meth:`start` returns is never missed
    by a subscription taken before the result was read.
    """

    def __init__(
        self, bootstrap: str, queue_size: int = DEFAULT_QUEUE_SIZE, security: KafkaSecurity = PLAINTEXT
    ) -> None:
        self._bootstrap = bootstrap
        self._security = security
        self._queue_size = queue_size
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._topic_messages = {spec.name: spec.messages for spec in RESULT_TOPICS}
        # Every session's results pass here, watched or not: the record of which are running.
        self.running_sessions = RunningSessions()

    async def start(self) -> None:
        if self._consumer is not None:
            raise RuntimeError("fan-out already started")
        self._consumer = await tail_consumer(self._bootstrap, RESULT_TOPICS, self._security)
        self._task = asyncio.create_task(self._run(), name="result-fanout")
        log.info("result fan-out reading %s from their end", ", ".join(self._topic_messages))

    async def stop(self) -> None:
        task, self._task = self._task, None
        # The consumer is cleared only once the task has ended: the task reads it until then.
        await stop_following(task, self._consumer)
        self._consumer = None

    async def __aenter__(self) -> ResultFanout:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(self, session_id: str) -> Subscription:
        subscription = Subscription(session_id, self._queue_size)
        self._subscriptions.setdefault(session_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        watchers = self._subscriptions.get(subscription.session_id)
        if watchers is not None:
            watchers.discard(subscription)
            if not watchers:
                del self._subscriptions[subscription.session_id]

    @contextlib.contextmanager
    def subscription(self, session_id: str) -> Iterator[Subscription]:
        subscription = self.subscribe(session_id)
        try:
            yield subscription
        finally:
            self.unsubscribe(subscription)

    def subscriber_count(self, session_id: str) -> int:
        return len(self._subscriptions.get(session_id, ()))

    def dispatch(self, message: ResultMessage) -> int:
        """Queue a result for every subscription of its session; return how many got it."""
        self.running_sessions.saw(message)
        watchers = self._subscriptions.get(message.session_id, ())
        for subscription in watchers:
            subscription.put_nowait(message)
        return len(watchers)

    async def _run(self) -> None:
        assert self._consumer is not None
        try:
            while True:
                batches = await self._consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        self._handle(record)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not retried here: a dead fan-out turns /health to 503, so the instance gets replaced
            # instead of silently serving sessions that never receive their results.
            log.exception("result fan-out stopped")
            raise

    def _handle(self, record: ConsumerRecord) -> None:
        try:
            message = decode(record.key, record.value, record.headers)
        except DecodeError as exc:
            log.warning("skipping undecodable record %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            return
        if type(message) not in self._topic_messages.get(record.topic, ()):
            log.warning(
                "skipping %s on %s[%d]@%d: not a message of that topic",
                message.TYPE,
                record.topic,
                record.partition,
                record.offset,
            )
            return
        self.dispatch(message)  # type: ignore[arg-type]
