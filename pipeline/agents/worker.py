"""Run one stage as a Faust worker process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import faust

from pipeline.agents import cluster, embed, segment
from pipeline.agents.app import build_app, changelog_specs
from pipeline.agents.worker_metrics import serve_worker_metrics
from pipeline.bus import ensure_topics
from pipeline.config import Profile, load_profile
from pipeline.settings import Settings
from pipeline.stages.base import STAGES
from pipeline.stages.device import limit_blas_threads
from topics import ALL_TOPICS

# What puts each stage's agent on an app; keyed exactly by `STAGES` (a unit test holds them together).
REGISTRARS: dict[str, Callable[[faust.App, Profile, Settings], None]] = {
    "segment": segment.register,
    "embed": embed.register,
    "cluster": cluster.register,
}


class StageWorker(faust.Worker):
    """A Faust worker that says when it is ready: partitions assigned and tables recovered."""

    def __init__(self, app: faust.App, ready_file: Path | None, **options) -> None:
        super().__init__(app, **options)
        self.ready_file = ready_file

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        if self.ready_file is not None:
            self.ready_file.touch()


def run_worker(stage: str, settings: Settings, loglevel: str = "warning") -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    # Workers scale with processes: no stage gains from numpy's BLAS threads, which spin when idle.
    limit_blas_threads(1)
    app = build_app(stage, settings)
    REGISTRARS[stage](app, load_profile(settings.profile), settings)
    asyncio.run(ensure_topics(settings.kafka, [*ALL_TOPICS, *changelog_specs(app)], security=settings.kafka_security))
    serve_worker_metrics(app, stage, settings.metrics_port)
    ready_file = settings.ready_file
    if ready_file is not None:
        # A restarted container keeps its /tmp: a file left by the previous run must not claim readiness.
        ready_file.unlink(missing_ok=True)
    StageWorker(app, ready_file, loglevel=loglevel).execute_from_commandline()
