"""Kafka plumbing shared by producers, the gateway and the CLI: topics, producers, consumers.

Every client of the project gets its encryption and login from :func:`client_security`
(aiokafka) or :func:`faust_credentials` (the stage workers), both read from one
:class:`~pipeline.settings.KafkaSecurity`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from pipeline.settings import KafkaSecurity
from topics import ALL_TOPICS, BusMessage, TopicSpec, encode

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)

PLAINTEXT = KafkaSecurity()


def client_security(security: KafkaSecurity) -> dict[str, Any]:
    """The keyword arguments that make an aiokafka client (producer, consumer, admin) connect as configured."""
    if not security.enabled:
        return {"security_protocol": "PLAINTEXT"}
    return {
        "security_protocol": security.protocol,
        "ssl_context": tls_context(security),
        "sasl_mechanism": security.sasl_mechanism,
        "sasl_plain_username": security.username,
        "sasl_plain_password": security.resolved_password(),
    }


def faust_credentials(security: KafkaSecurity) -> faust.SASLCredentials | None:
    """A Faust app's `broker_credentials` for the same connection; None for plaintext."""
    if not security.enabled:
        return None
    # Imported here: the gateway and the CLI use this module and never load Faust.
    from faust.auth import SASLCredentials

    # An ssl_context makes the credentials SASL_SSL (without one Faust would log in over plaintext).
    return SASLCredentials(
        username=security.username,
        password=security.resolved_password(),
        mechanism=security.sasl_mechanism,
        ssl_context=tls_context(security),
    )


def tls_context(security: KafkaSecurity) -> ssl.SSLContext:
    """Verifies the brokers against the configured CA (else the system's) and their host names."""
    return create_ssl_context(cafile=security.ca_file, certfile=security.cert_file, keyfile=security.key_file)


async def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec] = ALL_TOPICS,
    timeout_s: float = 30.0,
    security: KafkaSecurity = PLAINTEXT,
) -> list[str]:
    """Create the declared topics that do not exist yet; return the names created.

    Returns only once every partition of every created topic has a leader: with KRaft,
    metadata reaches the broker's listeners a moment after creation, and clients that
    look earlier see the topic missing.
    """
    # One spec per name: a table may use a declared topic as its changelog (the speaker registry).
    specs = list({spec.name: spec for spec in reversed(list(specs))}.values())[::-1]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_security(security))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(s.name, s.partitions, 1, topic_configs=s.kafka_config()) for s in missing]
                )
            except TopicAlreadyExistsError:
                # Another process created them between our listing and our request.
                pass
            log.info("created topics %s", ", ".join(s.name for s in missing))
            await _wait_for_leaders(admin, missing, timeout_s)
        return [s.name for s in missing]
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    wanted = {s.name: s.partitions for s in specs}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics(list(wanted))
        ready = {
            t["topic"]
            for t in described
            if t["error_code"] == 0 and sum(p["leader"] >= 0 for p in t["partitions"]) == wanted[t["topic"]]
        }
        if ready >= wanted.keys():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topics without leaders after {timeout_s}s: {sorted(wanted.keys() - ready)}")
        await asyncio.sleep(0.1)


def new_producer(bootstrap: str, security: KafkaSecurity = PLAINTEXT, **options) -> AIOKafkaProducer:
    # acks=all with idempotence: a retried send never duplicates or reorders a session's records.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        **client_security(security),
        **options,
    )


def new_consumer(bootstrap: str, security: KafkaSecurity = PLAINTEXT, **options) -> AIOKafkaConsumer:
    """A consumer connecting as configured; `options` are aiokafka's (group, offsets, topics to subscribe)."""
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, **client_security(security), **options)


async def publish(producer: AIOKafkaProducer, spec: TopicSpec, message: BusMessage) -> None:
    key, value, headers = encode(message)
    await producer.send_and_wait(spec.name, value=value, key=key, headers=headers)


async def stop_following(task: asyncio.Task[None] | None, consumer: AIOKafkaConsumer | None) -> None:
    """Ends a reader: its task (cancelled, whatever it raised) and then its consumer; either may be absent."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if consumer is not None:
        await consumer.stop()


async def tail_consumer(
    bootstrap: str, specs: Iterable[TopicSpec], security: KafkaSecurity = PLAINTEXT
) -> AIOKafkaConsumer:
    """A group-less consumer on every partition of the topics, starting at their end.

    Each reader of results (a gateway, a replay waiting for its report) sees all
    sessions' results and keeps those it serves, so any number can run at once.
    """
    consumer = new_consumer(bootstrap, security, enable_auto_commit=False, group_id=None)
    try:
        # A failed start (no broker) still leaves a client to close.
        await consumer.start()
        # Topics are created from their declarations, so the declared partition count is the real one.
        partitions = [TopicPartition(spec.name, p) for spec in specs for p in range(spec.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        # seek_to_end is lazy; resolve positions now so nothing published after this call is missed.
        for tp in partitions:
            await consumer.position(tp)
    except BaseException:
        await consumer.stop()
        raise
    return consumer
