"""The sessions whose results a gateway has seen lately, for the console's list of running sessions.

The result fan-out reads every session's results (it is a group-less tail consumer), so one
gateway knows of every session that produced a result since it started, whichever gateway or
producer feeds it. A session counts as running from its first result until its report, or until
no result of it has come for `idle_s` (its producer vanished without a stop). Nothing is stored
but these few fields, and only in memory: a restarted gateway knows a session again at its next
result, which for a live session comes within a step.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.gateway.protocol import ResultMessage
from topics import SessionReport, SpeakerUpdate
from topics.messages import SessionId

__all__ = ["RunningSession", "RunningSessions"]

# Longer than any pause between two results of a live session (one per step, well under a second),
# short enough that a session whose producer died leaves the list within a couple of minutes.
DEFAULT_IDLE_S = 120.0
# A bound on memory, however many sessions a bus carries; the least recently heard go first.
DEFAULT_CAPACITY = 1000


@dataclass
class RunningSession:
    session_id: SessionId
    first_result_at: float  # Unix time, seconds
    last_result_at: float
    speakers: int  # speakers with talk time in the session's latest speaker update


class RunningSessions:
    """Session id -> what its results told so far, for the sessions not yet reported."""

    def __init__(
        self,
        idle_s: float = DEFAULT_IDLE_S,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.idle_s = idle_s
        self.capacity = capacity
        self._clock = clock
        self._sessions: OrderedDict[str, RunningSession] = OrderedDict()

    def saw(self, message: ResultMessage) -> None:
        """Account for one result record of the bus."""
        session_id = message.session_id
        if isinstance(message, SessionReport):
            self._sessions.pop(session_id, None)
            return
        now = self._clock()
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = RunningSession(session_id, now, now, 0)
        else:
            session.last_result_at = now
            self._sessions.move_to_end(session_id)
        if isinstance(message, SpeakerUpdate):
            session.speakers = len(message.speaking_time_ms)
        while len(self._sessions) > self.capacity:
            self._sessions.popitem(last=False)

    def running(self) -> list[RunningSession]:
        """The sessions heard from within `idle_s`, the most recently started first."""
        horizon = self._clock() - self.idle_s
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if oldest.last_result_at >= horizon:
                break
            self._sessions.popitem(last=False)
        return sorted(self._sessions.values(), key=lambda s: s.first_result_at, reverse=True)
