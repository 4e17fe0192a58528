"""The Kafka security settings (SPEAKERFLOW_KAFKA_*) and what they make of aiokafka's and Faust's clients.

On a real broker: tests/integration/test_kafka_security.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from pipeline.agents.app import build_app
from pipeline.bus import client_security, faust_credentials
from pipeline.settings import KafkaSecurity, Settings

SECURED = {
    "SPEAKERFLOW_KAFKA": "kafka-0.kafka:9093,kafka-1.kafka:9093",
    "SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SPEAKERFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "SPEAKERFLOW_KAFKA_USERNAME": "speakerflow",
    "SPEAKERFLOW_KAFKA_PASSWORD": " with spaces ",
    "SPEAKERFLOW_KAFKA_CA_FILE": "/etc/kafka-tls/ca.crt",
}


def test_plaintext_is_the_default() -> None:
    security = Settings.from_env({}).kafka_security
    assert security == KafkaSecurity() and not security.enabled
    assert client_security(security) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(security) is None


def test_the_settings_survive_the_trip_to_a_spawned_process(tmp_path: Path) -> None:
    settings = Settings.from_env(SECURED)
    security = settings.kafka_security
    assert security.password == " with spaces "  # a password is taken as given, spaces and all
    assert security.ca_file == Path("/etc/kafka-tls/ca.crt")
    assert Settings.from_env(settings.to_env()) == settings

    password_file = tmp_path / "password"
    password_file.write_text("from-a-secret\n")
    mounted = {**SECURED, "SPEAKERFLOW_KAFKA_PASSWORD": "", "SPEAKERFLOW_KAFKA_PASSWORD_FILE": str(password_file)}
    settings = Settings.from_env(mounted)
    assert settings.kafka_security.resolved_password() == "from-a-secret"
    env = settings.to_env()
    # The child reads the same file; the secret itself is never copied into its environment.
    assert env["SPEAKERFLOW_KAFKA_PASSWORD"] == "" and env["SPEAKERFLOW_KAFKA_PASSWORD_FILE"] == str(password_file)
    assert Settings.from_env(env) == settings
    password_file.write_text("rotated")
    assert settings.kafka_security.resolved_password() == "rotated"  # read when a client is built


def test_the_password_is_kept_out_of_reprs() -> None:
    settings = Settings.from_env(SECURED)
    assert "with spaces" not in repr(settings)
    assert "speakerflow" in repr(settings.kafka_security)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL": "SSL_PLEASE"}, "SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL"),
        ({"SPEAKERFLOW_KAFKA_SASL_MECHANISM": "GSSAPI"}, "SPEAKERFLOW_KAFKA_SASL_MECHANISM"),
        ({"SPEAKERFLOW_KAFKA_USERNAME": ""}, "SPEAKERFLOW_KAFKA_USERNAME"),
        ({"SPEAKERFLOW_KAFKA_PASSWORD": ""}, "SPEAKERFLOW_KAFKA_PASSWORD_FILE"),
        ({"SPEAKERFLOW_KAFKA_PASSWORD_FILE": "/run/secrets/password"}, "not both"),
        ({"SPEAKERFLOW_KAFKA_CERT_FILE": "/etc/kafka-tls/tls.crt"}, "SPEAKERFLOW_KAFKA_KEY_FILE"),
    ],
)
def test_settings_that_cannot_connect_are_refused_at_startup(changes: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Settings.from_env({**SECURED, **changes})


def test_lower_case_names_are_accepted() -> None:
    env = {
        **SECURED,
        "SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "SPEAKERFLOW_KAFKA_SASL_MECHANISM": "scram-sha-512",
    }
    assert Settings.from_env(env).kafka_security == Settings.from_env(SECURED).kafka_security


def _system_ca_security() -> KafkaSecurity:
    # No CA file: the system's CAs, as for a managed Kafka whose certificates a public CA signed.
    return KafkaSecurity(protocol="SASL_SSL", username="speakerflow", password="secret")


def test_aiokafka_clients_log_in_over_tls_that_verifies_the_broker() -> None:
    options = client_security(_system_ca_security())
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "speakerflow",
        "sasl_plain_password": "secret",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_the_stage_workers_faust_app_logs_in_the_same_way() -> None:
    settings = Settings(kafka="kafka-0.kafka:9093", kafka_security=_system_ca_security())
    app = build_app("segment", settings)
    # What Faust's aiokafka driver hands every consumer and producer it makes.
    options = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert isinstance(options.pop("ssl_context"), ssl.SSLContext)
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "speakerflow",
        "sasl_plain_password": "secret",
    }
