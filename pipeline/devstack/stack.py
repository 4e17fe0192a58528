"""The whole dataflow on one machine: a Kafka broker, one worker per stage, a gateway.

Used by `make up`/`make down` (detached, state under `.run/`), by the demo and by
the integration tests (attached: everything stops with the caller). The tests run
their stacks on the session's one broker (`bootstrap`) instead of starting their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.bus import ensure_topics
from pipeline.devstack.broker.runtime import KafkaBroker, pid_alive, stop_detached
from pipeline.gateway.protocol import session_url
from pipeline.metrics import STAGE_METRICS_PORTS
from pipeline.settings import Settings
from pipeline.stages.base import STAGES

log = logging.getLogger(__name__)

_PROCESSES_FILE = "processes.json"


class StackError(RuntimeError):
    pass


@dataclass
class Stack:
    run_dir: Path
    settings: Settings = field(default_factory=Settings)
    broker_port: int | None = None
    # A running broker's bootstrap servers: the stack uses it and neither starts nor stops one. Stacks on
    # one broker join the same consumer groups and changelogs (the stage apps' names are fixed), so they
    # must run one after another; each picks up the bus where the previous one stopped.
    bootstrap: str | None = None
    workers: dict[str, int] = field(default_factory=lambda: {stage: 1 for stage in STAGES})
    # True: the first worker of each stage serves /metrics on the stage's fixed port (`make up`);
    # False: every worker gets a free port, so stacks side by side (tests) never collide.
    fixed_metrics_ports: bool = False
    broker: KafkaBroker | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"

    @property
    def session_url(self) -> str:
        return session_url(self.settings.gateway_host, self.settings.gateway_port)

    def start(self, detach: bool = False, timeout: float = 180.0) -> Stack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        if self.bootstrap is None:
            self.broker = KafkaBroker(
                data_dir=self.run_dir / "kafka", port=self.broker_port, cache_dir=self.settings.cache_dir
            )
            self.broker.start(detach=detach)
        self.settings = replace(self.settings, kafka=self.bootstrap or self.broker.bootstrap_servers)
        try:
            asyncio.run(ensure_topics(self.settings.kafka, security=self.settings.kafka_security))
            for stage, count in self.workers.items():
                for index in range(count):
                    self._spawn_worker(f"worker-{stage}-{index}", stage, detach)
            self._spawn("gateway", ["gateway"], detach)
            if detach:
                self._save()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready_file(self, name: str) -> Path:
        return self.run_dir / "ready" / name

    def _spawn_worker(self, name: str, stage: str, detach: bool) -> None:
        if (
            self.fixed_metrics_ports
            and stage in STAGE_METRICS_PORTS
            and STAGE_METRICS_PORTS[stage] not in self.metrics_ports.values()
        ):
            port = STAGE_METRICS_PORTS[stage]
        else:
            port = free_port()
        self.metrics_ports[name] = port
        self._spawn(
            name,
            ["worker", stage],
            detach,
            settings=replace(self.settings, metrics_port=port, ready_file=self._ready_file(name)),
        )

    def add_worker(self, stage: str, timeout: float = 180.0) -> str:
        """Start one more worker of a stage in the running (attached) stack; returns its name once ready."""
        index = sum(name.startswith(f"worker-{stage}-") for name in {*self.processes, *self.metrics_ports})
        name = f"worker-{stage}-{index}"
        self._spawn_worker(name, stage, detach=False)
        self.wait_ready(timeout)
        return name

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop one process abruptly (a crashed worker, a lost node); the rest of the stack carries on."""
        process = self.processes.pop(name)
        _signal_group(process.pid, sig)
        process.wait(timeout=20)

    def restart_gateway(self, timeout: float = 60.0) -> None:
        """Stop the gateway as an orchestrator would (SIGTERM) and start a new one on the same port."""
        self.kill("gateway", signal.SIGTERM)
        self._spawn("gateway", ["gateway"], detach=False)
        self.wait_ready(timeout)

    def metrics_url(self, name: str) -> str:
        if name == "gateway":
            return f"{self.gateway_url}/metrics"
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def _spawn(self, name: str, args: list[str], detach: bool, settings: Settings | None = None) -> None:
        settings = settings or self.settings
        if settings.ready_file is not None:
            settings.ready_file.parent.mkdir(exist_ok=True)
            settings.ready_file.unlink(missing_ok=True)
        env = {**os.environ, **settings.to_env()}
        logfile = open(self.run_dir / "logs" / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args],
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # so a terminal's Ctrl-C reaches only the launcher, which then stops us in order
        )
        logfile.close()

    def wait_ready(self, timeout: float) -> None:
        """Wait until the gateway answers /health and every worker has finished starting."""
        deadline = time.monotonic() + timeout
        workers = [name for name in self.processes if name.startswith("worker-")]
        while time.monotonic() < deadline:
            self._check_alive()
            if self._gateway_healthy() and all(self._ready_file(name).exists() for name in workers):
                return
            time.sleep(0.5)
        raise StackError(f"stack not ready after {timeout:.0f}s; logs in {self.run_dir / 'logs'}")

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.run_dir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                raise StackError(f"{name} exited with {process.returncode}:\n{tail}")

    def _gateway_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.gateway_url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        for process in self.processes.values():
            _terminate(process.pid)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _kill(process.pid)
        self.processes.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def _save(self) -> None:
        record = {
            "settings": self.settings.to_env(),
            "pids": {n: p.pid for n, p in self.processes.items()},
            "metrics_ports": self.metrics_ports,
        }
        (self.run_dir / _PROCESSES_FILE).write_text(json.dumps(record, indent=2))

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_detached_stack(run_dir: Path) -> bool:
    """Stop what `Stack.start(detach=True)` left running under run_dir; False if nothing was."""
    record_path = run_dir / _PROCESSES_FILE
    stopped = False
    if record_path.exists():
        pids = json.loads(record_path.read_text())["pids"].values()
        for pid in pids:
            _terminate(pid)
        deadline = time.monotonic() + 20
        while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in pids:
            _kill(pid)
        record_path.unlink()
        stopped = True
    return stop_detached(run_dir / "kafka") or stopped


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _terminate(pid: int) -> None:
    _signal_group(pid, signal.SIGTERM)


def _kill(pid: int) -> None:
    _signal_group(pid, signal.SIGKILL)
