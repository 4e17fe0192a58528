"""Prometheus metrics: the names, types and labels dashboards rely on, the helpers that feed
them, the worker's consumer-side gauges, and the /metrics endpoints of a stage worker and of
the gateway. No Kafka needed."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from types import SimpleNamespace

import pytest
from aiokafka.partitioner import murmur2
from faust.sensors import Monitor
from faust.types import TP
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pipeline import metrics
from pipeline.agents.app import build_app
from pipeline.agents.worker_metrics import ConsumerGauges, serve_worker_metrics
from pipeline.devstack.stack import free_port
from pipeline.metrics import StageMetrics, observe_output, resolve_metrics_port
from pipeline.settings import Settings
from topics import AudioChunk, ReportedSpeaker, SessionReport, SessionStart, SpeakerUpdate, StepEmbedding


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def chunk(samples: int) -> AudioChunk:
    return AudioChunk(session_id="s1", seq=1, offset=0, producer="test", pcm=b"\x00\x00" * samples)


def feed_every_metric() -> None:
    """One observation on each metric, so every label set shows up in an exposition."""
    stage = StageMetrics("contract")
    with stage.handling(chunk(160)):
        pass
    with stage.batch([time.monotonic()]):
        pass
    stage.error("decode")
    stage.model_info("silero-vad", "cpu")
    observe_output(
        SpeakerUpdate(session_id="s1", position_ms=500, current_speaker=0, speaking_time_ms={0: 500}, ingest_ms=0)
    )
    observe_output(SessionReport(session_id="s1", duration_ms=500, speakers=[], turns=[]))
    metrics.ACTIVE_SESSIONS.labels("contract").set(0)
    metrics.CONSUMER_LAG.labels("contract", "speakerflow.audio", "0").set(0)
    metrics.ASSIGNED_PARTITIONS.labels("contract", "speakerflow.audio").set(0)
    metrics.GATEWAY_SESSIONS.labels("reported").inc(0)


def assert_contract(exposition: str, contract: dict[str, tuple[str, frozenset[str]]]) -> None:
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    for name, (kind, labels) in contract.items():
        family = families.get(name.removesuffix("_total"))
        assert family is not None, f"{name} not exposed"
        assert family.type == kind, (name, family.type)
        sample_name = f"{name}_bucket" if kind == "histogram" else name
        samples = [s for s in family.samples if s.name == sample_name]
        assert samples, f"no {sample_name} sample"
        assert all(set(s.labels) - {"le"} == labels for s in samples), (name, samples[0].labels)
    # prometheus-client's own process metrics ride along.
    assert "process_cpu_seconds" in families and "process_resident_memory_bytes" in families


def test_stage_helpers_count_messages_audio_time_and_errors():
    stage = StageMetrics("t-handle")
    with stage.handling(chunk(8000)):
        time.sleep(0.01)
    stage.count(
        [
            SessionStart(session_id="s1"),
            StepEmbedding(session_id="s1", step=0, start=8000, end=16000, voiced=0, ingest_ms=0, embedding=None),
        ]
    )
    assert value("speakerflow_stage_messages_total", stage="t-handle", type="audio.chunk") == 1
    assert value("speakerflow_stage_messages_total", stage="t-handle", type="step.embedding") == 1
    assert value("speakerflow_stage_messages_total", stage="t-handle", type="session.start") == 1
    # Half a second of audio in the chunk, half a second of stream in the step; a start covers none.
    assert value("speakerflow_stage_audio_seconds_total", stage="t-handle") == pytest.approx(1.0)
    assert value("speakerflow_stage_processing_seconds_count", stage="t-handle") == 1
    assert value("speakerflow_stage_processing_seconds_sum", stage="t-handle") >= 0.01
    stage.error("unknown_session")
    stage.error("unknown_session")
    assert value("speakerflow_errors_total", stage="t-handle", kind="unknown_session") == 2


def test_batch_records_size_wait_and_failures():
    stage = StageMetrics("t-batch")
    size_count, wait_sum = (
        value("speakerflow_embedding_batch_size_count"),
        value("speakerflow_embedding_batch_wait_seconds_sum"),
    )
    size_sum = value("speakerflow_embedding_batch_size_sum")
    now = time.monotonic()
    received = [now - 0.2, now - 0.05, None]  # the last record's arrival is unknown
    with stage.batch(received):
        pass
    assert value("speakerflow_embedding_batch_size_count") == size_count + 1
    assert value("speakerflow_embedding_batch_size_sum") == size_sum + 3
    # The oldest record had waited 0.2 s when the batch began.
    assert 0.2 <= value("speakerflow_embedding_batch_wait_seconds_sum") - wait_sum < 1.0
    with pytest.raises(RuntimeError), stage.batch(received):
        raise RuntimeError("model failed")
    assert value("speakerflow_errors_total", stage="t-batch", kind="processing") == 1
    assert value("speakerflow_stage_processing_seconds_count", stage="t-batch") == 2


def test_results_record_latency_and_speakers_per_session():
    latency_sum, latency_count = (
        value("speakerflow_end_to_end_latency_seconds_sum"),
        value("speakerflow_end_to_end_latency_seconds_count"),
    )
    speakers_sum = value("speakerflow_session_speakers_sum")
    ingest_ms = int(time.time() * 1000) - 1500
    observe_output(
        SpeakerUpdate(session_id="s1", position_ms=500, current_speaker=None, speaking_time_ms={}, ingest_ms=ingest_ms)
    )
    observe_output(
        SessionReport(
            session_id="s1",
            duration_ms=1000,
            speakers=[ReportedSpeaker(id=i, total_time_ms=100) for i in range(3)],
            turns=[],
        )
    )
    assert value("speakerflow_end_to_end_latency_seconds_count") == latency_count + 1
    assert 1.5 <= value("speakerflow_end_to_end_latency_seconds_sum") - latency_sum < 2.5
    assert value("speakerflow_session_speakers_sum") == speakers_sum + 3


def key_in_partition(partition: int, partitions: int = 8) -> bytes:
    return next(
        key
        for key in (f"session-{i}".encode() for i in range(1000))
        if (murmur2(key) & 0x7FFFFFFF) % partitions == partition
    )


class FakeConsumer:
    """The part of a Faust consumer the gauges read; `failure`, when set, is raised by `assignment`."""

    def __init__(self, assignment: set[TP], highwater: int, position: int) -> None:
        self.current = assignment
        self.failure: BaseException | None = None
        self._highwater = highwater
        self._position = position

    def assignment(self) -> set[TP]:
        if self.failure is not None:
            raise self.failure
        return self.current

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self._highwater for tp in tps}

    async def position(self, tp: TP) -> int:
        return self._position


def segment_worker(consumer: FakeConsumer, monitor: Monitor, tables: dict | None = None) -> SimpleNamespace:
    """A stand-in for a segment worker's Faust app: its consumer, its monitor, its agent's input topic, its tables."""
    return SimpleNamespace(
        consumer=consumer,
        monitor=monitor,
        agents={"segment": SimpleNamespace(channel=SimpleNamespace(topics=("speakerflow.audio",)))},
        tables=tables or {},
    )


def lag(stage: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "speakerflow_consumer_lag_messages", {"stage": stage, "topic": "speakerflow.audio", "partition": str(partition)}
    )


AUDIO0, AUDIO3 = TP("speakerflow.audio", 0), TP("speakerflow.audio", 3)


def test_consumer_gauges_report_input_partitions_lag_and_owned_sessions():
    changelog = TP("speakerflow-segment-segment-sessions-changelog", 0)
    consumer = FakeConsumer({AUDIO0, AUDIO3, changelog}, highwater=12, position=10)
    monitor = Monitor()
    monitor.on_tp_commit({AUDIO0: 5, changelog: 0})
    # One session in an owned partition, one standby copy of a partition another worker owns.
    table = SimpleNamespace(partitions=8, data={key_in_partition(0): b"{}", key_in_partition(5): b"{}"})
    gauges = ConsumerGauges(segment_worker(consumer, monitor, {"sessions": table}), "t-consumer")
    asyncio.run(gauges.refresh())
    assert value("speakerflow_assigned_partitions", stage="t-consumer", topic="speakerflow.audio") == 2
    assert (
        REGISTRY.get_sample_value("speakerflow_assigned_partitions", {"stage": "t-consumer", "topic": changelog.topic})
        is None
    )
    assert lag("t-consumer", 0) == 7
    # Nothing committed yet on partition 3: lag counts from the consumer's position.
    assert lag("t-consumer", 3) == 2
    assert value("speakerflow_active_sessions", stage="t-consumer") == 1

    # Partition 0 moves to another worker: its lag is no longer this worker's to report.
    monitor.on_rebalance_start(SimpleNamespace(rebalancing_count=1))
    consumer.current = {AUDIO3}
    asyncio.run(gauges.refresh())
    assert lag("t-consumer", 0) is None
    assert value("speakerflow_assigned_partitions", stage="t-consumer", topic="speakerflow.audio") == 1
    assert value("speakerflow_active_sessions", stage="t-consumer") == 0

    # It comes back: the offset this worker committed before the rebalance is stale (another
    # worker has moved it since), so until it commits again the lag counts from the position.
    monitor.on_rebalance_start(SimpleNamespace(rebalancing_count=2))
    consumer.current = {AUDIO0, AUDIO3}
    asyncio.run(gauges.refresh())
    assert lag("t-consumer", 0) == 2
    monitor.on_tp_commit({AUDIO0: 11})
    asyncio.run(gauges.refresh())
    assert lag("t-consumer", 0) == 1


def test_a_failing_refresh_leaves_the_worker_running_with_its_last_readings():
    consumer = FakeConsumer({AUDIO0}, highwater=12, position=10)
    gauges = ConsumerGauges(segment_worker(consumer, Monitor()), "t-broken")
    asyncio.run(gauges.refresh())
    assert lag("t-broken", 0) == 2
    consumer.failure = RuntimeError("rebalancing")
    asyncio.run(gauges.refresh())  # returns, so the worker's timer keeps calling it
    # Nothing is cleared or zeroed: the last readings stand until a refresh succeeds.
    assert lag("t-broken", 0) == 2
    assert value("speakerflow_assigned_partitions", stage="t-broken", topic="speakerflow.audio") == 1
    # A worker shutting down still cancels it.
    consumer.failure = asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(gauges.refresh())


def test_metrics_port_setting(monkeypatch):
    assert resolve_metrics_port("segment", None) == 9101
    assert resolve_metrics_port("embed", None) == 9102
    assert resolve_metrics_port("cluster", None) == 9103
    assert resolve_metrics_port("cluster", 9100) == 9100
    assert resolve_metrics_port("cluster", 0) is None
    for raw, parsed in [("", None), ("off", 0), ("0", 0), ("9100", 9100)]:
        monkeypatch.setenv("SPEAKERFLOW_METRICS_PORT", raw)
        assert Settings.from_env().metrics_port == parsed


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_worker_serves_the_contract_on_its_metrics_port(metric_contract):
    feed_every_metric()
    port = free_port()
    assert serve_worker_metrics(build_app("cluster", Settings()), "cluster", port) == port
    assert_contract(scrape(port), metric_contract)


def test_a_taken_default_port_falls_back_to_a_free_one_but_a_configured_one_fails(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setitem(metrics.STAGE_METRICS_PORTS, "segment", busy)
        served = serve_worker_metrics(build_app("segment", Settings()), "segment", None)
        assert served not in (None, busy)
        assert "speakerflow_stage_messages_total" in scrape(served)
        with pytest.raises(OSError):
            serve_worker_metrics(build_app("segment", Settings()), "segment", busy)
    assert serve_worker_metrics(build_app("embed", Settings()), "embed", 0) is None


async def test_gateway_serves_the_contract_on_its_http_port(gateway_client, metric_contract):
    feed_every_metric()
    response = await gateway_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert_contract(response.text, metric_contract)
    # No gateway running in this app (its lifespan did not run): it feeds no sessions.
    assert value("speakerflow_active_sessions", stage="gateway") == 0
