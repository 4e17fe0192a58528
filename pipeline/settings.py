"""Runtime settings read from the environment, with the defaults a dev machine needs."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    # Kafka bootstrap servers, comma-separated.
    kafka: str = "127.0.0.1:9092"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    # A binary frame larger than this is refused (64 KiB = 2 s of audio).
    max_frame_bytes: int = 65_536
    # How long the gateway waits for a session's report after stop.
    report_timeout_s: float = 60.0
    profile: str = "fast"
    # A stage worker's /metrics port: None for the stage's fixed default (pipeline.metrics), 0 for none.
    metrics_port: int | None = None

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            kafka=env.get("SPEAKERFLOW_KAFKA", cls.kafka),
            gateway_host=env.get("SPEAKERFLOW_GATEWAY_HOST", cls.gateway_host),
            gateway_port=int(env.get("SPEAKERFLOW_GATEWAY_PORT", cls.gateway_port)),
            max_frame_bytes=int(env.get("SPEAKERFLOW_MAX_FRAME_BYTES", cls.max_frame_bytes)),
            report_timeout_s=float(env.get("SPEAKERFLOW_REPORT_TIMEOUT_S", cls.report_timeout_s)),
            profile=env.get("SPEAKERFLOW_PROFILE", cls.profile),
            metrics_port=_port_or_off(env.get("SPEAKERFLOW_METRICS_PORT", "")),
        )


def _port_or_off(value: str) -> int | None:
    value = value.strip().lower()
    if not value:
        return None
    return 0 if value == "off" else int(value)
