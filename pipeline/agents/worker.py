"""Run one stage as a Faust worker process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import faust

from pipeline.agents import cluster, embed, vad
from pipeline.agents.app import build_app, changelog_specs
from pipeline.bus import ensure_topics
from pipeline.config import Profile, load_profile
from pipeline.settings import Settings
from topics import ALL_TOPICS

STAGES: dict[str, Callable[[faust.App, Profile], None]] = {
    "vad": vad.register,
    "embed": embed.register,
    "cluster": cluster.register,
}


def run_worker(stage: str, settings: Settings, loglevel: str = "warning") -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    app = build_app(stage, settings)
    STAGES[stage](app, load_profile(settings.profile))
    asyncio.run(ensure_topics(settings.kafka, [*ALL_TOPICS, *changelog_specs(app)]))
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
