"""The whole dataflow on real parts: segment/embed/cluster Faust workers and a gateway on the session's broker.

Conversations are synthesized with espeak-ng and streamed over the gateway's WebSocket
exactly as a client would; reports are checked against the script's reference talk time.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

from pipeline.devstack.synthetic import script_for, synthesize
from pipeline.evaluation.talktime import compare
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.gateway_client import report_from_event, stream_session

TOLERANCE = 0.15


@pytest.fixture(scope="module")
def stack(local_stack):
    with local_stack("e2e", report_timeout_s=120) as running:
        yield running


def assert_matches_reference(conversation, report_event: dict) -> None:
    assert len(report_event["speakers"]) == 2, report_event
    rows = compare(conversation.reference_turns(), report_from_event("e2e", report_event))
    assert {r.hypothesis for r in rows} == {0, 1}, rows
    for row in rows:
        assert row.relative_error <= TOLERANCE, rows


def test_two_speaker_conversation_over_the_gateway(stack, two_speaker_conversation):
    conversation = two_speaker_conversation
    updates = []
    report = asyncio.run(
        stream_session(
            stack.session_url,
            float_to_pcm16(conversation.audio),
            num_speakers=2,
            realtime=False,
            on_event=updates.append,
        )
    )
    assert_matches_reference(conversation, report)
    speaker_events = [u for u in updates if u["event"] == "speaker"]
    # Updates arrive per step while the session runs, and their talk time only grows. Streamed
    # faster than real time, the report (another topic) may overtake the last few updates.
    assert len(speaker_events) >= conversation.duration_s / 0.5 * 0.6
    totals = [sum(u["speakingTimeMs"].values()) for u in speaker_events]
    assert totals == sorted(totals)
    assert any(u["currentSpeakerId"] is None for u in speaker_events)
    assert {u["currentSpeakerId"] for u in speaker_events} >= {0, 1}


async def _session_with_bad_input(url: str, pcm: np.ndarray) -> tuple[dict, list[str]]:
    """A client that mixes every kind of bad input into a good session."""
    errors = []
    async with websockets.connect(url) as ws:
        await ws.send(b"\x00\x00")  # audio before start
        errors.append(json.loads(await ws.recv())["code"])
        await ws.send(json.dumps({"action": "start", "num_speakers": 2}))
        assert json.loads(await ws.recv())["event"] == "started"
        half = len(pcm) // 2 // 3200 * 3200
        bad_inputs = ["{not json", json.dumps({"action": "dance"}), b"\x01\x02\x03", b"\x00" * 1_000_000]
        for offset in range(0, len(pcm), 3200):
            if offset == half:
                for bad in bad_inputs:
                    await ws.send(bad)
            await ws.send(pcm[offset : offset + 3200].astype("<i2").tobytes())
        await ws.send(json.dumps({"action": "stop"}))
        while True:
            event = json.loads(await ws.recv())
            if event["event"] == "error":
                errors.append(event["code"])
            elif event["event"] == "report":
                return event, errors


def test_four_concurrent_sessions_each_get_their_own_report(stack):
    conversations = [synthesize(script_for(2, turns=6 + 2 * seed, seed=seed), seed=seed) for seed in range(4)]
    url = stack.session_url

    async def run_all():
        return await asyncio.gather(
            *[stream_session(url, float_to_pcm16(c.audio), num_speakers=2, realtime=False) for c in conversations[:3]],
            _session_with_bad_input(url, float_to_pcm16(conversations[3].audio)),
        )

    *reports, (bad_report, errors) = asyncio.run(run_all())
    for conversation, report in zip(conversations, [*reports, bad_report]):
        assert_matches_reference(conversation, report)
    assert errors == ["not_started", "bad_json", "unknown_action", "odd_length_pcm", "frame_too_large"]
    # Each session's report covers its own audio, not a neighbour's.
    durations = [max(t["endMs"] for t in r["turns"]) / 1000 for r in [*reports, bad_report]]
    for conversation, duration in zip(conversations, durations):
        assert abs(duration - conversation.segments[-1].end_s) < 1.0
