"""Prometheus metrics: the names, types and labels dashboards rely on, the helpers that feed
them, and the /metrics endpoints of a stage worker and of the gateway. No Kafka needed."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from types import SimpleNamespace

import httpx
import pytest
from aiokafka.partitioner import murmur2
from faust.types import TP
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pipeline import metrics
from pipeline.agents.app import build_app
from pipeline.devstack.stack import free_port
from pipeline.gateway import create_app
from pipeline.metrics import StageMetrics, observe_output, resolve_metrics_port, serve_worker_metrics
from pipeline.settings import Settings
from topics import AudioChunk, ReportedSpeaker, SessionReport, SessionStart, SpeakerUpdate, StepEmbedding

# What the dashboard queries: sample name -> (type, label names).
CONTRACT = {
    "speakerflow_stage_messages_total": ("counter", {"stage", "type"}),
    "speakerflow_stage_audio_seconds_total": ("counter", {"stage"}),
    "speakerflow_stage_processing_seconds": ("histogram", {"stage"}),
    "speakerflow_end_to_end_latency_seconds": ("histogram", set()),
    "speakerflow_embedding_batch_size": ("histogram", set()),
    "speakerflow_embedding_batch_wait_seconds": ("histogram", set()),
    "speakerflow_active_sessions": ("gauge", {"stage"}),
    "speakerflow_session_speakers": ("histogram", set()),
    "speakerflow_errors_total": ("counter", {"stage", "kind"}),
    "speakerflow_consumer_lag_messages": ("gauge", {"stage", "topic", "partition"}),
    "speakerflow_assigned_partitions": ("gauge", {"stage", "topic"}),
    "speakerflow_model_info": ("gauge", {"stage", "model", "device"}),
    "speakerflow_gateway_connections": ("gauge", set()),
    "speakerflow_gateway_sessions_total": ("counter", {"outcome"}),
}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def chunk(samples: int) -> AudioChunk:
    return AudioChunk(session_id="s1", seq=1, offset=0, producer="test", pcm=b"\x00\x00" * samples)


def feed_every_metric() -> None:
    """One observation on each metric, so every label set shows up in an exposition."""
    stage = StageMetrics("contract")
    with stage.handling(chunk(160)):
        pass
    with stage.batch([SimpleNamespace(message=SimpleNamespace(time_in=time.monotonic()))]):
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


def assert_contract(exposition: str) -> None:
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    for name, (kind, labels) in CONTRACT.items():
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
    events = [SimpleNamespace(message=SimpleNamespace(time_in=t)) for t in (now - 0.2, now - 0.05, None)]
    with stage.batch(events):
        pass
    assert value("speakerflow_embedding_batch_size_count") == size_count + 1
    assert value("speakerflow_embedding_batch_size_sum") == size_sum + 3
    # The oldest record had waited 0.2 s when the batch began.
    assert 0.2 <= value("speakerflow_embedding_batch_wait_seconds_sum") - wait_sum < 1.0
    with pytest.raises(RuntimeError), stage.batch(events):
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
    def __init__(self, assignment: set[TP], committed: dict[TP, int | None], highwater: int, position: int) -> None:
        self._assignment = assignment
        self._committed_offset = committed
        self._highwater = highwater
        self._position = position

    def assignment(self) -> set[TP]:
        return self._assignment

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self._highwater for tp in tps}

    async def position(self, tp: TP) -> int:
        return self._position


def test_consumer_gauges_report_input_partitions_lag_and_owned_sessions():
    audio0, audio3 = TP("speakerflow.audio", 0), TP("speakerflow.audio", 3)
    changelog = TP("speakerflow-segment-segment-sessions-changelog", 0)
    consumer = FakeConsumer(
        {audio0, audio3, changelog}, {audio0: 5, audio3: None, changelog: 0}, highwater=12, position=10
    )
    # One session in an owned partition, one standby copy of a partition another worker owns.
    table = SimpleNamespace(partitions=8, data={key_in_partition(0): b"{}", key_in_partition(5): b"{}"})
    app = SimpleNamespace(
        consumer=consumer,
        agents={"segment": SimpleNamespace(channel=SimpleNamespace(topics=("speakerflow.audio",)))},
        tables={"sessions": table},
    )
    gauges = metrics._ConsumerGauges(app, "t-consumer")
    asyncio.run(gauges.refresh())
    assert value("speakerflow_assigned_partitions", stage="t-consumer", topic="speakerflow.audio") == 2
    assert (
        REGISTRY.get_sample_value("speakerflow_assigned_partitions", {"stage": "t-consumer", "topic": changelog.topic})
        is None
    )
    assert value("speakerflow_consumer_lag_messages", stage="t-consumer", topic="speakerflow.audio", partition="0") == 7
    # Nothing committed yet on partition 3: lag counts from the consumer's position.
    assert value("speakerflow_consumer_lag_messages", stage="t-consumer", topic="speakerflow.audio", partition="3") == 2
    assert value("speakerflow_active_sessions", stage="t-consumer") == 1

    # Partition 0 moves to another worker: its lag is no longer this worker's to report.
    consumer._assignment = {audio3}
    asyncio.run(gauges.refresh())
    assert (
        REGISTRY.get_sample_value(
            "speakerflow_consumer_lag_messages", {"stage": "t-consumer", "topic": "speakerflow.audio", "partition": "0"}
        )
        is None
    )
    assert value("speakerflow_assigned_partitions", stage="t-consumer", topic="speakerflow.audio") == 1
    assert value("speakerflow_active_sessions", stage="t-consumer") == 0


def test_a_failing_refresh_leaves_the_worker_running():
    class Broken(FakeConsumer):
        def assignment(self):
            raise RuntimeError("rebalancing")

    app = SimpleNamespace(consumer=Broken(set(), {}, 0, 0), agents={}, tables={})
    asyncio.run(metrics._ConsumerGauges(app, "t-broken").refresh())


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


def test_worker_serves_the_contract_on_its_metrics_port():
    feed_every_metric()
    port = free_port()
    assert serve_worker_metrics(build_app("cluster", Settings()), "cluster", port) == port
    assert_contract(scrape(port))


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


async def test_gateway_serves_the_contract_on_its_http_port():
    feed_every_metric()
    app = create_app(Settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert_contract(response.text)
    # No gateway running in this app (its lifespan did not run): it feeds no sessions.
    assert value("speakerflow_active_sessions", stage="gateway") == 0
