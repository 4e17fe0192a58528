"""Runtime settings: the one place that reads SPEAKERFLOW_* environment variables.

Defaults are what a development machine needs. `to_env` is the inverse of `from_env`,
so a process the local stack starts sees exactly the settings of the one that started it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# How clients reach Kafka: in the clear (a dev broker, a trusted network) or TLS with a SASL login.
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
# Who may use the gateway: anyone, as tenant "default" with every scope (development), or holders of a credential.
AUTH_MODES = ("open", "required")


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client of the project (gateway, workers, CLI, producers) connects.

    `pipeline.bus.client_security` turns it into aiokafka arguments and
    `pipeline.bus.faust_credentials` into Faust's; nothing else reads it.
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    # Kept out of reprs and logs. A password file (a mounted Kubernetes secret) is read when a
    # client is built, so a rotated secret reaches the next client without a restart.
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    # The CA that signed the brokers' certificates; None: the system's trusted CAs.
    ca_file: Path | None = None
    # A client certificate and its key, for brokers that also ask for one (mutual TLS).
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if self.protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ValueError(
                f"SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL={self.protocol!r}: expected one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}"
            )
        if self.sasl_mechanism not in KAFKA_SASL_MECHANISMS:
            raise ValueError(
                f"SPEAKERFLOW_KAFKA_SASL_MECHANISM={self.sasl_mechanism!r}: expected one of {', '.join(KAFKA_SASL_MECHANISMS)}"
            )
        if self.protocol == "SASL_SSL" and (
            not self.username or (self.password is None and self.password_file is None)
        ):
            raise ValueError(
                "SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs SPEAKERFLOW_KAFKA_USERNAME and "
                "SPEAKERFLOW_KAFKA_PASSWORD or SPEAKERFLOW_KAFKA_PASSWORD_FILE"
            )
        if self.password is not None and self.password_file is not None:
            raise ValueError("set SPEAKERFLOW_KAFKA_PASSWORD or SPEAKERFLOW_KAFKA_PASSWORD_FILE, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("SPEAKERFLOW_KAFKA_CERT_FILE and SPEAKERFLOW_KAFKA_KEY_FILE go together")

    @property
    def enabled(self) -> bool:
        return self.protocol != "PLAINTEXT"

    def resolved_password(self) -> str | None:
        """The password, read from its file if it has one (a trailing newline is not part of it)."""
        if self.password_file is not None:
            return self.password_file.read_text().rstrip("\r\n")
        return self.password


@dataclass(frozen=True)
class Settings:
    # Kafka bootstrap servers, comma-separated.
    kafka: str = "127.0.0.1:9092"
    # Encryption and login of every Kafka client (SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL and friends).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    # A binary frame larger than this is refused (64 KiB = 2 s of audio).
    max_frame_bytes: int = 65_536
    # How long the gateway waits for a session's report after stop.
    report_timeout_s: float = 60.0
    # How long the gateway keeps trying to get a record onto the bus before the client gets bus_unavailable:
    # long enough to ride out a broker restart (docs/reliability.md, "Broker faults").
    gateway_publish_timeout_s: float = 120.0
    # How long a session whose client lost its connection waits for the client to resume it; 0: stop it at once.
    resume_grace_s: float = 30.0
    # Signs the resume tokens of `started`; every gateway of a deployment needs the same one for a session to
    # resume on any of them. None: a random secret per gateway process (resume then works on that gateway only).
    resume_secret: str | None = field(default=None, repr=False)
    # Authentication and tenants at the gateway (docs/security.md): `open` or `required`.
    auth_mode: str = "open"
    # Verifies HS256 JWTs and signs the gateway's own short-lived tokens (POST /v1/tokens); shared by every
    # gateway of a deployment. None: a random secret per gateway process (its tokens work on it alone).
    auth_jwt_secret: str | None = field(default=None, repr=False)
    # A JWKS (JSON) of the public keys RS256/ES256 JWTs are verified against; None: such tokens are refused.
    auth_jwks_file: Path | None = None
    # When set, a JWT from outside (any but the gateway's own tokens) must name this issuer (`iss`) and
    # hold this audience (`aud`): an identity provider signs tokens for many services with one key.
    auth_jwt_issuer: str | None = None
    auth_jwt_audience: str | None = None
    # The credential the CLI's gateway clients (`speakerflow stream`, `speakers`, `job`) send as a bearer token.
    api_key: str | None = field(default=None, repr=False)
    # Lifetime of the tokens POST /v1/tokens issues (the ones browsers put in a socket's query string).
    auth_token_ttl_s: float = 300.0
    # Per tenant and per gateway instance; 0: unlimited. Concurrent sessions fed through this gateway, open
    # sockets, and audio seconds accepted per minute (a real-time session sends 60).
    quota_max_sessions: int = 100
    quota_max_connections: int = 200
    quota_audio_seconds_per_minute: float = 12_000.0
    # A certificate and its key: the gateway serves https and wss itself (else plain; TLS ends at an ingress).
    gateway_tls_certfile: Path | None = None
    gateway_tls_keyfile: Path | None = None
    # The stage chain (pipeline.config.PROFILES); every worker of a stack runs the same one. The
    # accurate chain by default; `fast` where the CPU for it is lacking.
    profile: str = "accurate"
    # A stage worker's /metrics port: None for the stage's fixed default (pipeline.metrics), 0 for none.
    metrics_port: int | None = None
    # A file a stage worker creates once its partitions are assigned and its tables recovered.
    ready_file: Path | None = None
    # The enrolment API (pipeline.gateway.speakers_api): the largest clip it takes, and the most clips in one request.
    enrol_max_clip_bytes: int = 20 * 1024 * 1024
    enrol_max_clips: int = 10
    # Batch jobs (pipeline.gateway.jobs_api): the most clips and bytes per clip a job takes, and how many of
    # its clips stream through the dataflow at once.
    job_max_clips: int = 20
    job_max_clip_bytes: int = 100 * 1024 * 1024
    job_concurrency: int = 4
    # State and logs of `speakerflow up` (the detached local stack).
    run_dir: Path = Path(".run")
    # Where the local broker's jars are collected from Maven Central.
    cache_dir: Path = Path.home() / ".cache" / "speakerflow"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        def get(name: str) -> str | None:
            value = env.get(f"SPEAKERFLOW_{name}", "").strip()
            return value or None

        defaults = cls()
        return cls(
            kafka=get("KAFKA") or defaults.kafka,
            kafka_security=KafkaSecurity(
                protocol=(get("KAFKA_SECURITY_PROTOCOL") or defaults.kafka_security.protocol).upper(),
                sasl_mechanism=(get("KAFKA_SASL_MECHANISM") or defaults.kafka_security.sasl_mechanism).upper(),
                username=get("KAFKA_USERNAME"),
                # Not stripped: spaces may belong to a password.
                password=env.get("SPEAKERFLOW_KAFKA_PASSWORD") or None,
                password_file=_path(get("KAFKA_PASSWORD_FILE")),
                ca_file=_path(get("KAFKA_CA_FILE")),
                cert_file=_path(get("KAFKA_CERT_FILE")),
                key_file=_path(get("KAFKA_KEY_FILE")),
            ),
            gateway_host=get("GATEWAY_HOST") or defaults.gateway_host,
            gateway_port=int(get("GATEWAY_PORT") or defaults.gateway_port),
            max_frame_bytes=int(get("MAX_FRAME_BYTES") or defaults.max_frame_bytes),
            report_timeout_s=float(get("REPORT_TIMEOUT_S") or defaults.report_timeout_s),
            gateway_publish_timeout_s=float(get("GATEWAY_PUBLISH_TIMEOUT_S") or defaults.gateway_publish_timeout_s),
            resume_grace_s=float(get("RESUME_GRACE_S") or defaults.resume_grace_s),
            resume_secret=get("RESUME_SECRET"),
            auth_mode=_auth_mode(get("AUTH_MODE") or defaults.auth_mode),
            auth_jwt_secret=get("AUTH_JWT_SECRET"),
            auth_jwks_file=_path(get("AUTH_JWKS_FILE")),
            auth_jwt_issuer=get("AUTH_JWT_ISSUER"),
            auth_jwt_audience=get("AUTH_JWT_AUDIENCE"),
            api_key=get("API_KEY"),
            auth_token_ttl_s=float(get("AUTH_TOKEN_TTL_S") or defaults.auth_token_ttl_s),
            quota_max_sessions=int(get("QUOTA_MAX_SESSIONS") or defaults.quota_max_sessions),
            quota_max_connections=int(get("QUOTA_MAX_CONNECTIONS") or defaults.quota_max_connections),
            quota_audio_seconds_per_minute=float(
                get("QUOTA_AUDIO_SECONDS_PER_MINUTE") or defaults.quota_audio_seconds_per_minute
            ),
            gateway_tls_certfile=_path(get("GATEWAY_TLS_CERTFILE")),
            gateway_tls_keyfile=_path(get("GATEWAY_TLS_KEYFILE")),
            profile=get("PROFILE") or defaults.profile,
            metrics_port=_port_or_off(get("METRICS_PORT")),
            ready_file=Path(get("READY_FILE")) if get("READY_FILE") else None,
            enrol_max_clip_bytes=int(get("ENROL_MAX_CLIP_BYTES") or defaults.enrol_max_clip_bytes),
            enrol_max_clips=int(get("ENROL_MAX_CLIPS") or defaults.enrol_max_clips),
            job_max_clips=int(get("JOB_MAX_CLIPS") or defaults.job_max_clips),
            job_max_clip_bytes=int(get("JOB_MAX_CLIP_BYTES") or defaults.job_max_clip_bytes),
            job_concurrency=int(get("JOB_CONCURRENCY") or defaults.job_concurrency),
            run_dir=Path(get("RUN_DIR") or defaults.run_dir),
            cache_dir=Path(get("CACHE")).expanduser() if get("CACHE") else defaults.cache_dir,
        )

    def to_env(self) -> dict[str, str]:
        """The SPEAKERFLOW_* variables that make `from_env` return these settings."""
        values = {
            "KAFKA": self.kafka,
            "KAFKA_SECURITY_PROTOCOL": self.kafka_security.protocol,
            "KAFKA_SASL_MECHANISM": self.kafka_security.sasl_mechanism,
            "KAFKA_USERNAME": self.kafka_security.username or "",
            # A password given as a file stays a file: the secret is not copied into child environments.
            "KAFKA_PASSWORD": self.kafka_security.password or "",
            "KAFKA_PASSWORD_FILE": _text(self.kafka_security.password_file),
            "KAFKA_CA_FILE": _text(self.kafka_security.ca_file),
            "KAFKA_CERT_FILE": _text(self.kafka_security.cert_file),
            "KAFKA_KEY_FILE": _text(self.kafka_security.key_file),
            "GATEWAY_HOST": self.gateway_host,
            "GATEWAY_PORT": str(self.gateway_port),
            "MAX_FRAME_BYTES": str(self.max_frame_bytes),
            "REPORT_TIMEOUT_S": repr(self.report_timeout_s),
            "GATEWAY_PUBLISH_TIMEOUT_S": repr(self.gateway_publish_timeout_s),
            "RESUME_GRACE_S": repr(self.resume_grace_s),
            "RESUME_SECRET": self.resume_secret or "",
            "AUTH_MODE": self.auth_mode,
            "AUTH_JWT_SECRET": self.auth_jwt_secret or "",
            "AUTH_JWKS_FILE": _text(self.auth_jwks_file),
            "AUTH_JWT_ISSUER": self.auth_jwt_issuer or "",
            "AUTH_JWT_AUDIENCE": self.auth_jwt_audience or "",
            "API_KEY": self.api_key or "",
            "AUTH_TOKEN_TTL_S": repr(self.auth_token_ttl_s),
            "QUOTA_MAX_SESSIONS": str(self.quota_max_sessions),
            "QUOTA_MAX_CONNECTIONS": str(self.quota_max_connections),
            "QUOTA_AUDIO_SECONDS_PER_MINUTE": repr(self.quota_audio_seconds_per_minute),
            "GATEWAY_TLS_CERTFILE": _text(self.gateway_tls_certfile),
            "GATEWAY_TLS_KEYFILE": _text(self.gateway_tls_keyfile),
            "PROFILE": self.profile,
            "METRICS_PORT": "" if self.metrics_port is None else str(self.metrics_port or "off"),
            "READY_FILE": "" if self.ready_file is None else str(self.ready_file),
            "ENROL_MAX_CLIP_BYTES": str(self.enrol_max_clip_bytes),
            "ENROL_MAX_CLIPS": str(self.enrol_max_clips),
            "JOB_MAX_CLIPS": str(self.job_max_clips),
            "JOB_MAX_CLIP_BYTES": str(self.job_max_clip_bytes),
            "JOB_CONCURRENCY": str(self.job_concurrency),
            "RUN_DIR": str(self.run_dir),
            "CACHE": str(self.cache_dir),
        }
        return {f"SPEAKERFLOW_{name}": value for name, value in values.items()}


def _auth_mode(value: str) -> str:
    if value.lower() not in AUTH_MODES:
        raise ValueError(f"SPEAKERFLOW_AUTH_MODE={value!r}: expected one of {', '.join(AUTH_MODES)}")
    return value.lower()


def _port_or_off(value: str | None) -> int | None:
    if value is None:
        return None
    return 0 if value.lower() == "off" else int(value)


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def _text(path: Path | None) -> str:
    return "" if path is None else str(path)
