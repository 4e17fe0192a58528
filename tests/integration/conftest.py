"""One real Kafka broker for the whole test session, and the local stacks that run on it.

Starting a JVM broker costs seconds of CPU, so every module shares this one; a test that
needs a broker of its own on purpose (one it stops, a start that fails, a detached one)
still starts it itself. Tests keep to their own topics, consumer groups and session ids,
so what one publishes never reaches another's assertions.

The stacks (`local_stack`) run one after another on this broker and join the same stage
consumer groups and changelogs: each starts from the offsets the previous one committed,
so no stack works through another's sessions. The first works off what the gateway tests
published on the audio topic: a few short sessions, each started and stopped by the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline.bus import ensure_topics
from pipeline.devstack.broker import KafkaBroker
from pipeline.devstack.stack import Stack, free_port
from pipeline.settings import Settings


@pytest.fixture(scope="session")
def broker() -> Iterator[KafkaBroker]:
    """The session's broker, with every bus topic created."""
    with KafkaBroker() as running:
        asyncio.run(ensure_topics(running.bootstrap_servers))
        yield running


@pytest.fixture(scope="session")
def bootstrap(broker: KafkaBroker) -> str:
    return broker.bootstrap_servers


@pytest.fixture(scope="session")
def local_stack(
    bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., contextlib.AbstractContextManager[Stack]]:
    """Runs a whole stack (workers, and a gateway on a free port) on the session's broker for a `with` block.

    Its workers run `profile`; `options` go to Stack, e.g. `workers={"segment": 2, ...}`.
    """

    @contextlib.contextmanager
    def run(name: str, report_timeout_s: float, profile: str = Settings.profile, **options: Any) -> Iterator[Stack]:
        settings = Settings(gateway_port=free_port(), report_timeout_s=report_timeout_s, profile=profile)
        with Stack(tmp_path_factory.mktemp(name), settings, bootstrap=bootstrap, **options) as running:
            yield running

    return run
