"""A stage worker's /metrics endpoint, and the gauges only its Faust app can tell.

The metrics themselves are declared in `pipeline.metrics`; this module reads the worker's
consumer and tables, through Faust's public interfaces, for the assigned partitions, the
consumer lag and the sessions held.
"""

from __future__ import annotations

import asyncio
import errno
import logging

import faust
from aiokafka.partitioner import murmur2
from prometheus_client import start_http_server

from pipeline.metrics import ACTIVE_SESSIONS, ASSIGNED_PARTITIONS, CONSUMER_LAG, resolve_metrics_port

log = logging.getLogger(__name__)

# Consumer lag needs a broker round trip; assignment and session counts are local.
REFRESH_INTERVAL_S = 2.0


def serve_worker_metrics(app: faust.App, stage: str, configured_port: int | None) -> int | None:
    """Serve /metrics for a stage worker and keep its consumer-side gauges fresh; returns the port."""
    port = resolve_metrics_port(stage, configured_port)
    if port is not None:
        try:
            start_http_server(port)
        except OSError as exc:
            if configured_port is not None or exc.errno != errno.EADDRINUSE:
                raise
            # A second worker of the stage on this host: it still serves, on a port the log names.
            server, _ = start_http_server(0)
            log.warning("metrics port %d is taken; serving /metrics on %d", port, server.server_port)
            port = server.server_port
        log.info("serving /metrics on port %d", port)
    refresher = ConsumerGauges(app, stage)
    app.timer(REFRESH_INTERVAL_S, name=f"{stage}-metrics")(refresher.refresh)
    return port


class ConsumerGauges:
    """Assigned partitions, consumer lag and held sessions, read from the Faust consumer, monitor and tables."""

    def __init__(self, app: faust.App, stage: str) -> None:
        self.app = app
        self.stage = stage
        self._lag_labels: set[tuple[str, str, str]] = set()

    def _input_topics(self) -> set[str]:
        return {name for agent in self.app.agents.values() for name in getattr(agent.channel, "topics", ())}

    async def refresh(self) -> None:
        try:
            await self._refresh()
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a rebalance in progress must not crash the worker
            log.debug("metrics refresh skipped: %r", exc)

    async def _refresh(self) -> None:
        consumer = self.app.consumer
        inputs = self._input_topics()
        owned = sorted(
            (tp for tp in consumer.assignment() if tp.topic in inputs), key=lambda tp: (tp.topic, tp.partition)
        )
        for topic in inputs:
            ASSIGNED_PARTITIONS.labels(self.stage, topic).set(sum(tp.topic == topic for tp in owned))
        self._count_sessions({tp.partition for tp in owned})
        highwaters = await consumer.highwaters(*owned) if owned else {}
        # The monitor records every offset this worker commits, and forgets them all when a
        # rebalance starts: a partition it has not committed on since is read at the consumer's position.
        committed_offsets = self.app.monitor.tp_committed_offsets
        labels = set()
        for tp in owned:
            committed = committed_offsets.get(tp)
            if committed is None:
                committed = await consumer.position(tp)
            highwater = highwaters.get(tp)
            if highwater is None or committed is None:
                continue
            label = (self.stage, tp.topic, str(tp.partition))
            CONSUMER_LAG.labels(*label).set(max(0, highwater - committed))
            labels.add(label)
        # Partitions that moved to another worker are that worker's to report.
        for label in self._lag_labels - labels:
            CONSUMER_LAG.remove(*label)
        self._lag_labels = labels

    def _count_sessions(self, partitions: set[int]) -> None:
        tables = list(self.app.tables.values())
        if not tables:
            return
        # The in-memory store also holds standby copies of other workers' partitions: count only
        # keys whose partition (the producers' murmur2 partitioner) this worker owns.
        held = {
            key
            for table in tables
            for key in list(table.data.keys())
            if isinstance(key, bytes) and (murmur2(key) & 0x7FFFFFFF) % table.partitions in partitions
        }
        ACTIVE_SESSIONS.labels(self.stage).set(len(held))
