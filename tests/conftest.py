"""What the whole suite shares: the integration marker, the metric contract, test audio and a gateway client.

tests/unit needs neither a broker nor a network; tests/integration runs against the one real
broker its conftest starts per session; tests/deploy checks the compose and Helm files.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from pipeline.settings import Settings

# Imported where used: a conftest's imports load for every test, the helm checks included.
if TYPE_CHECKING:
    from pipeline.devstack.synthetic import Conversation

INTEGRATION_TESTS = Path(__file__).parent / "integration"

# What the dashboards query, as the workers and the gateway must expose it: sample name -> (type, labels).
# Written out here rather than read from pipeline.metrics, so a renamed metric or label fails a test.
METRIC_CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "speakerflow_stage_messages_total": ("counter", frozenset({"stage", "type"})),
    "speakerflow_stage_audio_seconds_total": ("counter", frozenset({"stage"})),
    "speakerflow_stage_processing_seconds": ("histogram", frozenset({"stage"})),
    "speakerflow_end_to_end_latency_seconds": ("histogram", frozenset()),
    "speakerflow_embedding_batch_size": ("histogram", frozenset()),
    "speakerflow_embedding_batch_wait_seconds": ("histogram", frozenset()),
    "speakerflow_active_sessions": ("gauge", frozenset({"stage"})),
    "speakerflow_session_speakers": ("histogram", frozenset()),
    "speakerflow_errors_total": ("counter", frozenset({"stage", "kind"})),
    "speakerflow_consumer_lag_messages": ("gauge", frozenset({"stage", "topic", "partition"})),
    "speakerflow_assigned_partitions": ("gauge", frozenset({"stage", "topic"})),
    "speakerflow_model_info": ("gauge", frozenset({"stage", "model", "device"})),
    "speakerflow_gateway_connections": ("gauge", frozenset()),
    "speakerflow_gateway_sessions_total": ("counter", frozenset({"outcome"})),
    "speakerflow_livekit_rooms": ("gauge", frozenset()),
    "speakerflow_livekit_tracks": ("gauge", frozenset()),
    "speakerflow_livekit_frames_total": ("counter", frozenset()),
    "speakerflow_livekit_frame_seconds": ("histogram", frozenset()),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test under tests/integration needs the broker, so `-m "not integration"` runs without Java.
    for item in items:
        if item.path.is_relative_to(INTEGRATION_TESTS):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def metric_contract() -> dict[str, tuple[str, frozenset[str]]]:
    return METRIC_CONTRACT


@pytest.fixture(scope="session")
def two_speaker_conversation() -> Conversation:
    """The two-voice script, spoken once per session; tests only read it."""
    from pipeline.devstack.synthetic import TWO_SPEAKER_SCRIPT, synthesize

    return synthesize(TWO_SPEAKER_SCRIPT)


@pytest.fixture(scope="session")
def pcm() -> Callable[..., bytes]:
    """Makes `samples` samples of 16-bit PCM; frames made with different seeds differ byte by byte."""

    def make(samples: int, seed: int = 0) -> bytes:
        return bytes((seed + i) % 256 for i in range(2 * samples))

    return make


@pytest.fixture
async def gateway_client() -> AsyncIterator[httpx.AsyncClient]:
    """HTTP on a gateway app whose lifespan never ran: it is up, but has no producer, no fan-out, no broker."""
    from pipeline.gateway import create_app

    app = create_app(Settings(kafka="127.0.0.1:1"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        yield client
