"""Quotas per tenant: open sockets, concurrent sessions, and audio seconds per minute.

The counts are this gateway process's (per-gateway limits): N gateway replicas admit up to N
times each quota. A breach refuses only what breaches it, with an error event naming the
quota: a socket over the connection quota is closed (1008), a start over the session quota is
refused on a socket that stays open, and a frame over the audio rate is dropped as a lost
frame is (its session goes on). The tenant's other sessions carry on in every case.

The audio rate is a token bucket holding at most one minute of the allowance: a tenant may
burst to a minute's worth, then streams at the rate. A real-time session spends 60 audio
seconds a minute. A quota of 0 is no limit. Batch jobs' clips are not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.gateway.protocol import ErrorCode, ProtocolError

__all__ = ["TenantQuotas"]


@dataclass
class _Bucket:
    tokens: float
    at: float


class TenantQuotas:
    def __init__(
        self,
        max_sessions: int = 0,
        max_connections: int = 0,
        audio_seconds_per_minute: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_connections = max_connections
        self.audio_seconds_per_minute = audio_seconds_per_minute
        self._clock = clock
        self.connections: dict[str, int] = {}
        self.sessions: dict[str, set[str]] = {}
        self._buckets: dict[str, _Bucket] = {}

    def connect(self, tenant: str) -> None:
        """Count a socket of `tenant`; ProtocolError (too_many_connections) if it has its quota's worth open."""
        open_now = self.connections.get(tenant, 0)
        if self.max_connections and open_now >= self.max_connections:
            raise ProtocolError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"tenant {tenant} has {open_now} sockets open on this gateway, its quota",
            )
        self.connections[tenant] = open_now + 1

    def disconnect(self, tenant: str) -> None:
        left = self.connections.get(tenant, 0) - 1
        if left > 0:
            self.connections[tenant] = left
        else:
            self.connections.pop(tenant, None)

    def start_session(self, tenant: str, session_id: str) -> None:
        """Count a session of `tenant` fed here; ProtocolError (too_many_sessions) if it runs its quota's worth."""
        running = self.sessions.setdefault(tenant, set())
        if session_id in running:
            return
        if self.max_sessions and len(running) >= self.max_sessions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SESSIONS,
                f"tenant {tenant} runs {len(running)} sessions on this gateway, its quota; stop one first",
            )
        running.add(session_id)

    def end_session(self, tenant: str, session_id: str) -> None:
        running = self.sessions.get(tenant)
        if running is not None:
            running.discard(session_id)
            if not running:
                del self.sessions[tenant]

    def take_audio(self, tenant: str, seconds: float, borrow: bool = False) -> None:
        """Spend `seconds` of the tenant's audio allowance; ProtocolError (audio_rate_exceeded) if it has not that much.

        `borrow`: taken whole while any allowance is left, the rest owed from what later minutes bring. A
        batch job's clips arrive at once and may hold more than a minute's allowance, which the bucket
        alone would refuse for ever; borrowed, the job runs and the tenant's audio waits until it is paid.
        """
        rate = self.audio_seconds_per_minute
        if not rate:
            return
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(rate, now)
        bucket.tokens = min(rate, bucket.tokens + (now - bucket.at) * rate / 60.0)
        bucket.at = now
        if seconds > bucket.tokens and not (borrow and bucket.tokens > 0):
            raise ProtocolError(
                ErrorCode.AUDIO_RATE_EXCEEDED,
                f"tenant {tenant} is over its {rate:g} audio seconds per minute; frame dropped",
            )
        bucket.tokens -= seconds
