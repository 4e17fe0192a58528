"""Every Prometheus metric of the project, declared once, and the helpers that feed them.

Each process keeps its metrics in prometheus-client's default registry, which also
carries the client's process_* metrics. A stage worker serves them on its own port
(:func:`serve_worker_metrics`); the gateway serves them on its HTTP port at /metrics.
Dashboards use these names and labels: renaming one is a contract change.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from topics import AudioChunk, BusMessage, SessionReport, SpeakerUpdate
from topics.messages import SAMPLE_RATE

log = logging.getLogger(__name__)

STAGE_MESSAGES = Counter(
    "speakerflow_stage_messages_total", "Bus messages a stage handled, by message type", ["stage", "type"]
)
STAGE_AUDIO_SECONDS = Counter(
    "speakerflow_stage_audio_seconds_total", "Seconds of session audio a stage advanced through", ["stage"]
)
STAGE_PROCESSING_SECONDS = Histogram(
    "speakerflow_stage_processing_seconds",
    "Time to handle one message (one batch for embed)",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
END_TO_END_LATENCY = Histogram(
    "speakerflow_end_to_end_latency_seconds",
    "From an audio chunk's arrival on the bus to the speaker update that covers it",
    # A live stream's floor is about one step plus the segmenter's look-ahead (1 s in the fast profile).
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0),
)
EMBEDDING_BATCH_SIZE = Histogram(
    "speakerflow_embedding_batch_size", "Records per embedding batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
EMBEDDING_BATCH_WAIT = Histogram(
    "speakerflow_embedding_batch_wait_seconds",
    "How long a batch's oldest record waited in the worker before the batch was handled",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5),
)
ACTIVE_SESSIONS = Gauge(
    "speakerflow_active_sessions", "Sessions whose state this process holds (partitions it owns)", ["stage"]
)
SESSION_SPEAKERS = Histogram(
    "speakerflow_session_speakers", "Speakers per session in its report", buckets=(0, 1, 2, 3, 4, 5, 6, 8, 10)
)
ERRORS = Counter("speakerflow_errors_total", "Errors by stage and kind", ["stage", "kind"])
CONSUMER_LAG = Gauge(
    "speakerflow_consumer_lag_messages",
    "Records of an input partition this worker owns not yet committed (highwater minus committed offset)",
    ["stage", "topic", "partition"],
)
ASSIGNED_PARTITIONS = Gauge(
    "speakerflow_assigned_partitions", "Input-topic partitions assigned to this worker", ["stage", "topic"]
)
MODEL_INFO = Gauge(
    "speakerflow_model_info", "The model a stage runs, and where (value 1)", ["stage", "model", "device"]
)
GATEWAY_CONNECTIONS = Gauge("speakerflow_gateway_connections", "Open WebSocket connections on the gateway")
GATEWAY_SESSIONS = Counter("speakerflow_gateway_sessions_total", "Gateway sessions by how they ended", ["outcome"])

# Fixed per-stage ports, so that one stack of each stage on one host is scraped without configuration.
STAGE_METRICS_PORTS = {"segment": 9101, "embed": 9102, "cluster": 9103}
# Consumer lag needs a broker round trip; assignment and session counts are local.
REFRESH_INTERVAL_S = 2.0


def audio_seconds(message: BusMessage) -> float:
    """The span of session audio a message advances its stage by (0 for control messages)."""
    if isinstance(message, AudioChunk):
        return message.num_samples / SAMPLE_RATE
    start, end = getattr(message, "start", None), getattr(message, "end", None)
    if isinstance(start, int) and isinstance(end, int):
        return (end - start) / SAMPLE_RATE
    return 0.0


def observe_output(message: BusMessage) -> None:
    """Record what a result says about the whole pipeline, whichever stage sends it."""
    if isinstance(message, SpeakerUpdate):
        END_TO_END_LATENCY.observe(max(0.0, time.time() - message.ingest_ms / 1000))
    elif isinstance(message, SessionReport):
        SESSION_SPEAKERS.observe(len(message.speakers))


class StageMetrics:
    """The metrics of one stage, bound to its label."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._processing = STAGE_PROCESSING_SECONDS.labels(stage)
        self._audio = STAGE_AUDIO_SECONDS.labels(stage)

    def model_info(self, model: str, device: str) -> None:
        MODEL_INFO.labels(self.stage, model, device).set(1)

    def error(self, kind: str) -> None:
        ERRORS.labels(self.stage, kind).inc()

    def count(self, messages: Iterable[BusMessage]) -> None:
        for message in messages:
            STAGE_MESSAGES.labels(self.stage, message.TYPE).inc()
            self._audio.inc(audio_seconds(message))

    @contextlib.contextmanager
    def handling(self, message: BusMessage) -> Iterator[None]:
        self.count([message])
        with self._processing.time():
            yield

    @contextlib.contextmanager
    def batch(self, events: list[Any]) -> Iterator[None]:
        """Times one batch; its wait is measured from when the worker received its oldest record."""
        received = [e.message.time_in for e in events if e.message.time_in is not None]
        if received:
            # Faust stamps time_in with time.monotonic when the record leaves the consumer.
            EMBEDDING_BATCH_WAIT.observe(max(0.0, time.monotonic() - min(received)))
        EMBEDDING_BATCH_SIZE.observe(len(events))
        try:
            with self._processing.time():
                yield
        except Exception:
            self.error("processing")
            raise


def resolve_metrics_port(stage: str, configured: int | None) -> int | None:
    """The port a stage worker serves /metrics on: configured, else the stage's fixed port; None when off (0)."""
    if configured is None:
        return STAGE_METRICS_PORTS.get(stage)
    return configured or None


def serve_worker_metrics(app: faust.App, stage: str, configured_port: int | None) -> int | None:
    """Serve /metrics for a stage worker and keep its consumer-side gauges fresh; returns the port."""
    port = resolve_metrics_port(stage, configured_port)
    if port is not None:
        try:
            start_http_server(port)
        except OSError as exc:
            if configured_port is not None or exc.errno != errno.EADDRINUSE:
                raise
            # A second worker of the stage on this host: it still serves, on a port the log names.
            server, _ = start_http_server(0)
            log.warning("metrics port %d is taken; serving /metrics on %d", port, server.server_port)
            port = server.server_port
        log.info("serving /metrics on port %d", port)
    refresher = _ConsumerGauges(app, stage)
    app.timer(REFRESH_INTERVAL_S, name=f"{stage}-metrics")(refresher.refresh)
    return port


class _ConsumerGauges:
    """Assigned partitions, consumer lag and held sessions, read from the Faust consumer and tables."""

    def __init__(self, app: faust.App, stage: str) -> None:
        self.app = app
        self.stage = stage
        self._lag_labels: set[tuple[str, str, str]] = set()

    def _input_topics(self) -> set[str]:
        return {name for agent in self.app.agents.values() for name in getattr(agent.channel, "topics", ())}

    async def refresh(self) -> None:
        try:
            await self._refresh()
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a rebalance in progress must not crash the worker
            log.debug("metrics refresh skipped: %r", exc)

    async def _refresh(self) -> None:
        consumer = self.app.consumer
        inputs = self._input_topics()
        owned = sorted(
            (tp for tp in consumer.assignment() if tp.topic in inputs), key=lambda tp: (tp.topic, tp.partition)
        )
        for topic in inputs:
            ASSIGNED_PARTITIONS.labels(self.stage, topic).set(sum(tp.topic == topic for tp in owned))
        self._count_sessions({tp.partition for tp in owned})
        highwaters = await consumer.highwaters(*owned) if owned else {}
        labels = set()
        for tp in owned:
            committed = consumer._committed_offset.get(tp)
            if committed is None:
                committed = await consumer.position(tp)
            highwater = highwaters.get(tp)
            if highwater is None or committed is None:
                continue
            label = (self.stage, tp.topic, str(tp.partition))
            CONSUMER_LAG.labels(*label).set(max(0, highwater - committed))
            labels.add(label)
        # Partitions that moved to another worker are that worker's to report.
        for label in self._lag_labels - labels:
            CONSUMER_LAG.remove(*label)
        self._lag_labels = labels

    def _count_sessions(self, partitions: set[int]) -> None:
        tables = list(self.app.tables.values())
        if not tables:
            return
        # The in-memory store also holds standby copies of other workers' partitions: count only
        # keys whose partition (the producers' murmur2 partitioner) this worker owns.
        held = {
            key
            for table in tables
            for key in list(table.data.keys())
            if isinstance(key, bytes) and (murmur2(key) & 0x7FFFFFFF) % table.partitions in partitions
        }
        ACTIVE_SESSIONS.labels(self.stage).set(len(held))
