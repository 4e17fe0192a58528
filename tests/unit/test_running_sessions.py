"""The record of running sessions the fan-out keeps, and the console's HTTP side, without a broker."""

from __future__ import annotations

import re

from pipeline.gateway.fanout import ResultFanout
from pipeline.gateway.running_sessions import RunningSessions
from topics import SessionReport, SpeakerTurn, SpeakerUpdate


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _update(session_id: str, speakers: int) -> SpeakerUpdate:
    return SpeakerUpdate(
        session_id=session_id,
        position_ms=500,
        current_speaker=0,
        speaking_time_ms={speaker: 100 for speaker in range(speakers)},
        ingest_ms=0,
    )


def _report(session_id: str) -> SessionReport:
    return SessionReport(session_id=session_id, duration_ms=1, speakers=[], turns=[])


def test_a_session_runs_from_its_first_result_to_its_report():
    clock = Clock()
    sessions = RunningSessions(clock=clock)
    sessions.saw(_update("a", 1))
    clock.now += 5
    sessions.saw(SpeakerTurn(session_id="b", speaker=0, start_ms=0, end_ms=1, final=False))
    sessions.saw(_update("a", 2))
    running = sessions.running()
    assert [s.session_id for s in running] == ["b", "a"]  # the most recently started first
    assert (running[1].first_result_at, running[1].last_result_at, running[1].speakers) == (1_000.0, 1_005.0, 2)
    assert running[0].speakers == 0  # no speaker update yet
    sessions.saw(_report("a"))
    assert [s.session_id for s in sessions.running()] == ["b"]


def test_a_silent_session_leaves_after_idle_s_and_the_oldest_go_past_capacity():
    clock = Clock()
    sessions = RunningSessions(idle_s=60, capacity=3, clock=clock)
    sessions.saw(_update("quiet", 1))
    clock.now += 30
    for name in ("x", "y"):
        sessions.saw(_update(name, 1))
    clock.now += 31
    assert {s.session_id for s in sessions.running()} == {"x", "y"}
    for name in ("p", "q"):
        sessions.saw(_update(name, 1))
    assert {s.session_id for s in sessions.running()} == {"y", "p", "q"}


def test_the_fanout_records_every_session_it_reads_watched_or_not():
    fanout = ResultFanout("127.0.0.1:1")  # never started: dispatch alone needs no broker
    fanout.subscribe("watched")
    fanout.dispatch(_update("watched", 1))
    fanout.dispatch(_update("unwatched", 2))
    assert {s.session_id for s in fanout.running_sessions.running()} == {"watched", "unwatched"}


async def test_the_console_page_and_everything_it_loads_are_served(gateway_client):
    page = await gateway_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # What the page names, and what each module imports or loads (the worklet), transitively.
    pending = re.findall(r'(?:src|href)="(/console/[^"]+)"', page.text)
    served = set()
    while pending:
        path = pending.pop()
        if path in served:
            continue
        response = await gateway_client.get(path)
        assert response.status_code == 200, path
        served.add(path)
        for name in re.findall(r'(?:from |new URL\()"\./([^"]+)"', response.text):
            pending.append(f"/console/{name}")
    assert {"/console/console.css", "/console/main.js", "/console/pcm16-worklet.js"} <= served


async def test_session_endpoints_answer_503_until_the_gateway_serves(gateway_client):
    assert (await gateway_client.get("/v1/sessions")).status_code == 503
    assert (await gateway_client.get("/v1/sessions/abc/report?format=rttm")).status_code == 503
    # A malformed id or format is refused before the gateway is asked.
    assert (await gateway_client.get("/v1/sessions/a%20b/report")).status_code == 422
    assert (await gateway_client.get("/v1/sessions/abc/report?format=pdf")).status_code == 422
    schema = (await gateway_client.get("/openapi.json")).json()
    assert {"/v1/sessions", "/v1/sessions/{session_id}/report"} <= set(schema["paths"])
