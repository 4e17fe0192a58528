"""Every Prometheus metric of the project, declared once, and the pure helpers that feed them.

Each process keeps its metrics in prometheus-client's default registry, which also
carries the client's process_* metrics. A stage worker serves them on its own port
(`pipeline.agents.worker_metrics`, which also reads the gauges only its Faust consumer
knows); the gateway serves them on its HTTP port at /metrics. Nothing here imports Faust,
so the gateway does not load it. Dashboards use these names and labels: renaming one is
a contract change.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import Counter, Gauge, Histogram

from pipeline.stages.base import STAGES
from topics import AudioChunk, BusMessage, SessionReport, SpeakerUpdate
from topics.messages import SAMPLE_RATE

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
LIVEKIT_ROOMS = Gauge("speakerflow_livekit_rooms", "LiveKit rooms this ingest instance is joined to")
LIVEKIT_TRACKS = Gauge("speakerflow_livekit_tracks", "LiveKit audio tracks this ingest instance feeds as sessions")
LIVEKIT_FRAMES = Counter(
    "speakerflow_livekit_frames_total", "Audio frames (10 ms, 16 kHz) received from LiveKit tracks"
)
LIVEKIT_FRAME_SECONDS = Histogram(
    "speakerflow_livekit_frame_seconds",
    # The SDK resamples 48 kHz to 16 kHz in its native layer as it hands the frame over; this is the Python side.
    "Time to turn one received 16 kHz frame into bus records and publish those it completes",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)

# Fixed per-stage ports (9101, 9102, 9103 in stage order), so that one stack of each stage on
# one host is scraped without configuration.
STAGE_METRICS_PORTS = {stage: 9101 + i for i, stage in enumerate(STAGES)}
# The LiveKit ingest's, next to them.
LIVEKIT_METRICS_PORT = 9104


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
    def handling(self, *messages: BusMessage) -> Iterator[None]:
        """Times the handling of a record, or of records handled together as one batch."""
        self.count(messages)
        with self._processing.time():
            yield

    @contextlib.contextmanager
    def batch(self, received: Sequence[float | None]) -> Iterator[None]:
        """Times one batch, given when (time.monotonic) the worker received each of its records.

        The batch's wait is measured from its oldest record; None marks a record whose arrival is unknown.
        """
        known = [t for t in received if t is not None]
        if known:
            EMBEDDING_BATCH_WAIT.observe(max(0.0, time.monotonic() - min(known)))
        EMBEDDING_BATCH_SIZE.observe(len(received))
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
