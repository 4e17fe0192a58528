"""The auth, quota and TLS settings: read from the environment, handed on to child processes, given to uvicorn."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.gateway.app import server_config
from pipeline.settings import Settings

AUTH = {
    "SPEAKERFLOW_AUTH_MODE": "Required",
    "SPEAKERFLOW_AUTH_JWT_SECRET": "s3cret-of-the-deployment",
    "SPEAKERFLOW_AUTH_JWKS_FILE": "/etc/speakerflow/jwks.json",
    "SPEAKERFLOW_AUTH_TOKEN_TTL_S": "120",
    "SPEAKERFLOW_QUOTA_MAX_SESSIONS": "5",
    "SPEAKERFLOW_QUOTA_MAX_CONNECTIONS": "0",
    "SPEAKERFLOW_QUOTA_AUDIO_SECONDS_PER_MINUTE": "600",
}


def test_open_by_default_with_quotas():
    settings = Settings.from_env({})
    assert settings.auth_mode == "open" and settings.auth_jwt_secret is None
    assert (settings.quota_max_sessions, settings.quota_max_connections) == (100, 200)
    assert settings.auth_token_ttl_s == 300.0


def test_auth_settings_are_read_and_handed_on():
    settings = Settings.from_env(AUTH)
    assert settings.auth_mode == "required"
    assert settings.auth_jwks_file == Path("/etc/speakerflow/jwks.json")
    assert (settings.quota_max_sessions, settings.quota_max_connections) == (5, 0)
    assert settings.quota_audio_seconds_per_minute == 600.0
    assert Settings.from_env(settings.to_env()) == settings
    assert "s3cret" not in repr(settings)


def test_an_unknown_mode_stops_the_process():
    with pytest.raises(ValueError, match="SPEAKERFLOW_AUTH_MODE"):
        Settings.from_env({"SPEAKERFLOW_AUTH_MODE": "sometimes"})


def test_a_certificate_makes_uvicorn_serve_tls(tmp_path):
    plain = server_config(Settings())
    assert plain.ssl_certfile is None
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    tls = server_config(Settings(gateway_tls_certfile=cert, gateway_tls_keyfile=key))
    assert (tls.ssl_certfile, tls.ssl_keyfile) == (str(cert), str(key))
    with pytest.raises(ValueError, match="go together"):
        server_config(Settings(gateway_tls_certfile=cert))
