"""One real Kafka broker for the whole test session, and the local stacks that run on it.

Starting a JVM broker costs seconds of CPU, so every module shares this one; a test that
needs a broker of its own on purpose (one it stops, a start that fails, a detached one)
still starts it itself. Tests keep to their own topics, consumer groups and session ids,
so what one publishes never reaches another's assertions.

The stacks (`local_stack`) run one after another on this broker and join the same stage
consumer groups and changelogs: each starts from the offsets the previous one committed,
so no stack works through another's sessions. The first works off what the gateway tests
published on the audio topic: a few short sessions, each started and stopped by the rules.

`livekit_server` runs one LiveKit server on loopback for the session (`make tools` builds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.bus import ensure_topics
from pipeline.devstack.broker import KafkaBroker
from pipeline.devstack.stack import Stack, free_port
from pipeline.settings import Settings

ROOT = Path(__file__).parents[2]


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

    Its workers run `profile`; `settings` are more Settings fields (e.g. `{"auth_mode": "required"}`);
    `options` go to Stack, e.g. `workers={"segment": 2, ...}`.
    """

    @contextlib.contextmanager
    def run(
        name: str,
        report_timeout_s: float,
        profile: str = Settings.profile,
        settings: dict[str, Any] | None = None,
        **options: Any,
    ) -> Iterator[Stack]:
        settings = Settings(
            gateway_port=free_port(), report_timeout_s=report_timeout_s, profile=profile, **(settings or {})
        )
        with Stack(tmp_path_factory.mktemp(name), settings, bootstrap=bootstrap, **options) as running:
            yield running

    return run


@dataclasses.dataclass(frozen=True)
class LiveKitServer:
    url: str
    api_key: str
    api_secret: str


# The server's config: every listener and every ICE candidate on loopback, no STUN lookup of a
# public address (stun_servers points at loopback, where nothing answers), one fixed UDP and TCP port.
_LIVEKIT_CONFIG = """\
port: {port}
bind_addresses: [127.0.0.1]
rtc:
  udp_port: {udp_port}
  tcp_port: {tcp_port}
  node_ip: 127.0.0.1
  use_external_ip: false
  enable_loopback_candidate: true
  interfaces:
    includes: [lo]
  stun_servers: [127.0.0.1:3478]
keys:
  {api_key}: {api_secret}
logging:
  level: warn
"""


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    """A livekit-server (`make tools` builds it into .tools/) on loopback for the whole test session."""
    binary = Path(os.environ.get("LIVEKIT_SERVER") or ROOT / ".tools" / "bin" / "livekit-server")
    if not binary.exists():
        pytest.fail(f"livekit-server not found at {binary}: `make tools` builds it (or set LIVEKIT_SERVER)")
    directory = tmp_path_factory.mktemp("livekit")
    # The server refuses secrets shorter than 32 characters.
    server = LiveKitServer(url="", api_key="speakerflow-test", api_secret=secrets.token_hex(24))
    port = free_port()
    config = directory / "livekit.yaml"
    config.write_text(
        _LIVEKIT_CONFIG.format(
            port=port,
            udp_port=free_port(),
            tcp_port=free_port(),
            api_key=server.api_key,
            api_secret=server.api_secret,
        )
    )
    with (directory / "server.log").open("wb") as log:
        process = subprocess.Popen([str(binary), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"livekit-server did not start; see {directory / 'server.log'}")
                time.sleep(0.1)
        yield dataclasses.replace(server, url=f"ws://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
