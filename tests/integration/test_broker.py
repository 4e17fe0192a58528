"""Integration tests for the local Kafka broker in pipeline.devstack.broker.runtime (real JVM, no mocks).

The client tests use the session's broker (conftest.py); the lifecycle tests start their own.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline.devstack.broker import runtime
from pipeline.devstack.broker.runtime import (
    KAFKA_VERSION,
    BrokerError,
    KafkaBroker,
    assemble,
    detached_info,
    pid_alive,
    stop_detached,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _create_topics(bootstrap: str, *topics: NewTopic) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(list(topics))
    finally:
        await admin.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pids_using(data_dir: Path) -> list[int]:
    """Live processes whose command line mentions data_dir (Linux /proc; empty elsewhere)."""
    needle = str(data_dir).encode()
    pids: list[int] = []
    if not Path("/proc").is_dir():
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


# --------------------------------------------------------------------------- assembly


def test_assemble_is_cached_and_skips_maven_when_warm(broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fixture already assembled; a warm call must neither look for nor run Maven.
    monkeypatch.setattr(runtime.shutil, "which", lambda _name: pytest.fail("mvn looked up"))
    monkeypatch.setattr(runtime.subprocess, "run", lambda *a, **k: pytest.fail("subprocess run"))
    started = time.monotonic()
    libs = assemble(broker.cache_dir)
    assert time.monotonic() - started < 1.0
    assert (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    assert (libs / ".complete").is_file()
    assert not (REPO_ROOT / "pipeline" / "devstack" / "broker" / "target").exists()


def test_assemble_reports_maven_failure(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"(?s)mvn failed.*Could not (find|resolve)"):
        assemble(version="0.0.0-does-not-exist", cache_dir=tmp_path)
    assert not (tmp_path / "kafka-0.0.0-does-not-exist" / "libs").exists()


def test_assemble_without_maven_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.shutil, "which", lambda _name: None)
    with pytest.raises(BrokerError, match="Maven"):
        assemble(cache_dir=tmp_path)


# --------------------------------------------------------------------------- clients


def test_round_trip_with_headers_and_group_commit(broker: KafkaBroker) -> None:
    topic = _unique("roundtrip")
    group = _unique("group")

    async def scenario() -> None:
        await _create_topics(broker.bootstrap_servers, NewTopic(topic, 1, 1))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello", key=b"spk-1", headers=[("speaker", b"alice"), ("seq", b"1")])
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap_servers,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), timeout=30)
            await consumer.commit()
            committed = await consumer.committed(TopicPartition(topic, 0))
        finally:
            await consumer.stop()

        assert (record.key, record.value) == (b"spk-1", b"hello")
        assert list(record.headers) == [("speaker", b"alice"), ("seq", b"1")]
        assert committed == 1

    asyncio.run(scenario())


def test_topic_configs_are_applied(broker: KafkaBroker) -> None:
    topic = _unique("compacted")

    async def scenario() -> dict[str, str]:
        await _create_topics(
            broker.bootstrap_servers,
            NewTopic(topic, 2, 1, topic_configs={"retention.ms": "3600000", "cleanup.policy": "compact"}),
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        await admin.start()
        try:
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            partitions = await admin.describe_topics([topic])
        finally:
            await admin.close()
        assert len(partitions[0]["partitions"]) == 2
        (resource,) = responses[0].resources
        error_code, _message, _type, name, entries = resource[:5]
        assert (error_code, name) == (0, topic)
        return {entry[0]: entry[1] for entry in entries}

    configs = asyncio.run(scenario())
    assert configs["retention.ms"] == "3600000"
    assert configs["cleanup.policy"] == "compact"


def test_transactions_hide_aborted_records(broker: KafkaBroker) -> None:
    topic = _unique("tx")

    async def scenario() -> list[bytes]:
        await _create_topics(broker.bootstrap_servers, NewTopic(topic, 1, 1))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, transactional_id=_unique("txid"))
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send(topic, b"committed")
            await producer.begin_transaction()
            await producer.send(topic, b"aborted")
            await producer.abort_transaction()
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap_servers,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=5000)
        finally:
            await consumer.stop()
        return [record.value for records in batches.values() for record in records]

    assert asyncio.run(scenario()) == [b"committed"]


# --------------------------------------------------------------------------- lifecycle


def test_stop_kills_jvm_frees_port_and_removes_temp_dir() -> None:
    own = KafkaBroker().start()
    pid, port, data_dir = own.pid, own.port, own.data_dir
    assert pid is not None and pid_alive(pid)
    assert not _port_is_free(port)
    assert (own.log_path).read_text().strip(), "broker should log to its file"

    own.stop()

    assert not pid_alive(pid)
    assert _pids_using(data_dir) == []
    assert _port_is_free(port)
    assert not data_dir.exists()


def test_start_failure_raises_with_log_tail(broker: KafkaBroker, tmp_path: Path) -> None:
    # The session's broker already holds this port, so the second JVM must die and say why.
    clash = KafkaBroker(data_dir=tmp_path / "clash", port=broker.port)
    with pytest.raises(BrokerError, match=r"(?s)exited with code.*last lines of"):
        clash.start(timeout=60)
    assert not clash.is_running()
    assert _pids_using(tmp_path / "clash") == []


def test_detached_broker_survives_its_launcher(tmp_path: Path) -> None:
    data_dir = tmp_path / "detached"
    launcher = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from pipeline.devstack.broker.runtime import KafkaBroker
        broker = KafkaBroker(data_dir=Path({str(data_dir)!r})).start(detach=True)
        print(broker.bootstrap_servers)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", launcher],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    info = detached_info(data_dir)
    try:
        assert info is not None, out.stderr
        assert info.bootstrap_servers == out.stdout.strip()
        assert runtime._probe_metadata("127.0.0.1", info.port, timeout=5.0)[1] == {1}
        with pytest.raises(BrokerError, match="already uses"):
            KafkaBroker(data_dir=data_dir).start()
    finally:
        stopped = stop_detached(data_dir)

    assert stopped is True
    assert not pid_alive(info.pid)
    assert _port_is_free(info.port)
    assert detached_info(data_dir) is None
    assert stop_detached(data_dir) is False
    assert (data_dir / "kraft-logs" / "meta.properties").exists(), "detached data is kept"
