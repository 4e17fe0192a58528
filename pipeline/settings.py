"""Runtime settings: the one place that reads SPEAKERFLOW_* environment variables.

Defaults are what a development machine needs. `to_env` is the inverse of `from_env`,
so a process the local stack starts sees exactly the settings of the one that started it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


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
    # The stage chain (pipeline.config.PROFILES); every worker of a stack runs the same one. The
    # accurate chain by default; `fast` where the CPU for it is lacking.
    profile: str = "accurate"
    # A stage worker's /metrics port: None for the stage's fixed default (pipeline.metrics), 0 for none.
    metrics_port: int | None = None
    # A file a stage worker creates once its partitions are assigned and its tables recovered.
    ready_file: Path | None = None
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
            gateway_host=get("GATEWAY_HOST") or defaults.gateway_host,
            gateway_port=int(get("GATEWAY_PORT") or defaults.gateway_port),
            max_frame_bytes=int(get("MAX_FRAME_BYTES") or defaults.max_frame_bytes),
            report_timeout_s=float(get("REPORT_TIMEOUT_S") or defaults.report_timeout_s),
            profile=get("PROFILE") or defaults.profile,
            metrics_port=_port_or_off(get("METRICS_PORT")),
            ready_file=Path(get("READY_FILE")) if get("READY_FILE") else None,
            run_dir=Path(get("RUN_DIR") or defaults.run_dir),
            cache_dir=Path(get("CACHE")).expanduser() if get("CACHE") else defaults.cache_dir,
        )

    def to_env(self) -> dict[str, str]:
        """The SPEAKERFLOW_* variables that make `from_env` return these settings."""
        values = {
            "KAFKA": self.kafka,
            "GATEWAY_HOST": self.gateway_host,
            "GATEWAY_PORT": str(self.gateway_port),
            "MAX_FRAME_BYTES": str(self.max_frame_bytes),
            "REPORT_TIMEOUT_S": repr(self.report_timeout_s),
            "PROFILE": self.profile,
            "METRICS_PORT": "" if self.metrics_port is None else str(self.metrics_port or "off"),
            "READY_FILE": "" if self.ready_file is None else str(self.ready_file),
            "RUN_DIR": str(self.run_dir),
            "CACHE": str(self.cache_dir),
        }
        return {f"SPEAKERFLOW_{name}": value for name, value in values.items()}


def _port_or_off(value: str | None) -> int | None:
    if value is None:
        return None
    return 0 if value.lower() == "off" else int(value)
