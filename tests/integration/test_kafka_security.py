"""Kafka over SASL_SSL (SCRAM-SHA-512 on TLS): a whole session on a secured broker, and the broker's refusals.

The module runs a broker of its own with the SASL_SSL listener (the session's broker has none), and a
stack whose every client (the gateway's producer and fan-out, the Faust workers, the topic set-up)
reaches it only through that listener with the settings a deployment would set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from pathlib import Path

import pytest
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
from aiokafka.protocol.metadata import MetadataRequest

from pipeline.bus import PLAINTEXT, client_security, ensure_topics, tail_consumer
from pipeline.devstack.broker import KafkaBroker
from pipeline.devstack.stack import Stack, free_port
from pipeline.evaluation.talktime import compare
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.gateway_client import report_from_event, stream_session
from pipeline.settings import Settings
from topics import SESSION_REPORTS

USER = "speakerflow"
TOLERANCE = 0.15


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory):
    broker = KafkaBroker(data_dir=tmp_path_factory.mktemp("sasl-kafka"), scram_users={USER: "correct horse battery"})
    with broker:
        asyncio.run(ensure_topics(broker.sasl_bootstrap_servers, security=broker.client_security(USER)))
        yield broker


def _secured_settings(broker: KafkaBroker, password_file: Path) -> Settings:
    """The settings as a deployment sets them (SPEAKERFLOW_KAFKA_*), the password from a mounted file."""
    security = broker.client_security(USER)
    password_file.write_text(f"{security.password}\n")
    env = {
        "SPEAKERFLOW_KAFKA": broker.sasl_bootstrap_servers,
        "SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SPEAKERFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SPEAKERFLOW_KAFKA_USERNAME": USER,
        "SPEAKERFLOW_KAFKA_PASSWORD_FILE": str(password_file),
        "SPEAKERFLOW_KAFKA_CA_FILE": str(security.ca_file),
        "SPEAKERFLOW_GATEWAY_PORT": str(free_port()),
        "SPEAKERFLOW_REPORT_TIMEOUT_S": "120",
        # The chain does not matter here, only how its workers reach the bus; the fast one costs least.
        "SPEAKERFLOW_PROFILE": "fast",
    }
    return Settings.from_env(env)


def test_a_session_runs_end_to_end_over_sasl_ssl(secured_broker, two_speaker_conversation, tmp_path) -> None:
    settings = _secured_settings(secured_broker, tmp_path / "kafka-password")
    assert settings.kafka_security.password is None  # read from the file, never copied into the environment
    conversation = two_speaker_conversation

    async def session(url: str) -> tuple[dict, str]:
        # A reader of its own over SASL_SSL: the report is on the secured bus, not only on the socket.
        reports = await tail_consumer(settings.kafka, [SESSION_REPORTS], settings.kafka_security)
        try:
            event = await stream_session(
                url, float_to_pcm16(conversation.audio), num_speakers=2, realtime=False, session_id="sasl-ssl-e2e"
            )
            async for record in reports:
                if record.key == b"sasl-ssl-e2e":
                    return event, record.topic
        finally:
            await reports.stop()
        raise AssertionError("report consumer stopped")

    with Stack(tmp_path / "stack", settings, bootstrap=settings.kafka) as stack:
        report, topic = asyncio.run(asyncio.wait_for(session(stack.session_url), 180))

    assert topic == SESSION_REPORTS.name
    rows = compare(conversation.reference_turns(), report_from_event("sasl-ssl-e2e", report))
    assert {r.hypothesis for r in rows} == {0, 1}, rows
    for row in rows:
        assert row.relative_error <= TOLERANCE, rows


async def _metadata(broker: KafkaBroker, **security: object) -> list:
    """One Metadata request on a connection of its own: the broker's answer, or how it refused."""
    conn = await create_conn("127.0.0.1", broker.sasl_port, request_timeout_ms=10_000, **security)
    try:
        response = await conn.send(MetadataRequest([]))
        return response.brokers
    finally:
        conn.close()


def test_the_broker_refuses_clients_without_the_right_credentials(secured_broker) -> None:
    right = secured_broker.client_security(USER)
    assert asyncio.run(_metadata(secured_broker, **client_security(right)))  # the control: this one gets in

    wrong = dataclasses.replace(right, password="not the password")
    with pytest.raises(SaslAuthenticationFailed, match="invalid credentials"):
        asyncio.run(_metadata(secured_broker, **client_security(wrong)))

    # TLS with the right CA but no SASL login: the broker expects a SASL handshake and hangs up.
    tls_only = {"security_protocol": "SSL", "ssl_context": ssl.create_default_context(cafile=right.ca_file)}
    with pytest.raises(KafkaConnectionError, match="closed"):
        asyncio.run(_metadata(secured_broker, **tls_only))

    # No TLS at all: a plaintext client gets no answer on the secured listener.
    with pytest.raises(KafkaConnectionError, match="closed"):
        asyncio.run(_metadata(secured_broker, **client_security(PLAINTEXT)))


def test_a_client_must_trust_the_brokers_certificate(secured_broker) -> None:
    # Right login, but the system's CAs: the broker's certificate (signed by its own CA) is not trusted.
    untrusted = dataclasses.replace(secured_broker.client_security(USER), ca_file=None)
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(_metadata(secured_broker, **client_security(untrusted)))
