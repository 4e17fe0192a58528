"""Result fan-out without a broker: per-session routing and the bounded subscriber queue."""

from __future__ import annotations

from pipeline.gateway.fanout import ResultFanout, Subscription
from topics import SessionReport, SpeakerTurn, SpeakerUpdate


def _update(session_id: str, position_ms: int) -> SpeakerUpdate:
    return SpeakerUpdate(
        session_id=session_id,
        position_ms=position_ms,
        current_speaker=0,
        speaking_time_ms={0: position_ms},
        ingest_ms=0,
    )


async def test_slow_subscriber_drops_oldest_updates_never_reports():
    report = SessionReport(session_id="s", duration_ms=1, speakers=[], turns=[])
    turn = SpeakerTurn(session_id="s", speaker=0, start_ms=0, end_ms=1, final=True)

    queue = Subscription("s", maxsize=3)
    for position in (1, 2, 3):
        queue.put_nowait(_update("s", position))
    queue.put_nowait(report)
    queue.put_nowait(_update("s", 4))
    assert [await queue.get() for _ in range(len(queue))] == [_update("s", 3), report, _update("s", 4)]
    assert queue.dropped == 2

    # With no update left to drop, turns go; reports stay even past the bound.
    queue = Subscription("s", maxsize=3)
    for message in (turn, report, report, _update("s", 5), report, report):
        queue.put_nowait(message)
    assert [await queue.get() for _ in range(len(queue))] == [report] * 4
    assert queue.dropped == 2


async def test_fanout_dispatches_by_session():
    fanout = ResultFanout("127.0.0.1:1")  # never started: dispatch alone needs no broker
    a1, a2, b = fanout.subscribe("a"), fanout.subscribe("a"), fanout.subscribe("b")
    assert fanout.dispatch(_update("a", 1)) == 2
    assert fanout.dispatch(_update("c", 1)) == 0
    fanout.unsubscribe(a2)
    assert fanout.dispatch(_update("a", 2)) == 1
    assert [len(a1), len(a2), len(b)] == [2, 1, 0]
    assert fanout.subscriber_count("a") == 1 and not fanout.running
