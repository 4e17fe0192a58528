"""Resumable sessions end to end: a connection dropped mid-session, and a gateway SIGKILLed mid-session.

A whole stack on the session's broker; the synthesized two-voice conversation is streamed once
without a break (the reference), then with its connection cut halfway, and the reports compared:
each speaker's talk time within one step of the unbroken run means no audio was lost or doubled.
Each test prints how long the client waited for `resumed` (the resume gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import websockets

from pipeline.config import PROFILES
from pipeline.devstack.stack import Stack, free_port
from pipeline.gateway.protocol import session_url
from pipeline.producers.audio_file import float_to_pcm16
from pipeline.producers.gateway_client import stream_session
from pipeline.settings import Settings

FRAME = 3200  # samples per frame: 0.2 s at 16 kHz
# One step of the stack's profile (the accurate chain's segmentation step): how finely talk time is counted.
STEP_MS = PROFILES[Settings.profile].segmentation.step_s * 1000


@pytest.fixture(scope="module")
def stack(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A deployment's gateways share the resume secret; the default 30 s grace period.
    settings = Settings(gateway_port=free_port(), report_timeout_s=120, resume_secret="test-deployment-secret")
    with Stack(tmp_path_factory.mktemp("resume"), settings, bootstrap=bootstrap) as running:
        yield running


@pytest.fixture(scope="module")
def conversation_pcm(two_speaker_conversation) -> np.ndarray:
    return float_to_pcm16(two_speaker_conversation.audio)


@pytest.fixture(scope="module")
def unbroken(stack: Stack, conversation_pcm: np.ndarray) -> dict[int, int]:
    report = asyncio.run(stream_session(stack.session_url, conversation_pcm, num_speakers=2, realtime=False))
    return _talk_time(report)


def _talk_time(report: dict) -> dict[int, int]:
    return {speaker["id"]: speaker["totalTimeMs"] for speaker in report["speakers"]}


async def _event(ws, kind: str, timeout: float = 150.0) -> dict:
    """The next event of a kind, skipping live updates; an error fails the test."""
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            assert event["event"] != "error", event
            if event["event"] == kind:
                return event


async def _send(ws, pcm: np.ndarray, start: int, end: int) -> None:
    for offset in range(start, end, FRAME):
        await ws.send(pcm[offset : min(offset + FRAME, end)].astype("<i2").tobytes())


async def _start_and_cut(url: str, pcm: np.ndarray, session_id: str, cut: int) -> str:
    """Start a session, send its audio up to `cut`, then lose the connection without a close; the token."""
    ws = await websockets.connect(url, max_size=2**22)
    await ws.send(json.dumps({"action": "start", "num_speakers": 2, "session_id": session_id}))
    token = (await _event(ws, "started"))["resumeToken"]
    await _send(ws, pcm, 0, cut)
    await asyncio.sleep(0.5)  # some of it published, some perhaps still in flight when the line goes
    ws.transport.abort()
    return token


async def _resume_and_finish(url: str, pcm: np.ndarray, session_id: str, token: str) -> tuple[dict, dict, float]:
    """Resume the session, send the rest from the offset the gateway names, stop; the resumed event, report, gap."""
    asked = time.monotonic()
    async with websockets.connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps({"action": "resume", "session_id": session_id, "token": token}))
        resumed = await _event(ws, "resumed")
        gap_s = time.monotonic() - asked
        await _send(ws, pcm, resumed["offset"], len(pcm))
        await ws.send(json.dumps({"action": "stop"}))
        report = await _event(ws, "report")
    return resumed, report, gap_s


def _assert_within_one_step(resumed: dict[int, int], unbroken: dict[int, int]) -> None:
    print(f"talk time resumed {resumed} ms, unbroken {unbroken} ms")
    assert resumed.keys() == unbroken.keys() == {0, 1}, (resumed, unbroken)
    for speaker, total in unbroken.items():
        assert abs(resumed[speaker] - total) <= STEP_MS, (resumed, unbroken)


def test_a_dropped_connection_resumes_with_no_audio_lost(stack, conversation_pcm, unbroken) -> None:
    pcm = conversation_pcm
    cut = len(pcm) // 2 // FRAME * FRAME

    async def run() -> tuple[dict, dict, float]:
        token = await _start_and_cut(stack.session_url, pcm, "resume-dropped", cut)
        await asyncio.sleep(2.0)  # the client is away for a moment (a phone changing networks)
        return await _resume_and_finish(stack.session_url, pcm, "resume-dropped", token)

    resumed, report, gap_s = asyncio.run(run())
    assert 0 < resumed["offset"] <= cut
    print(
        f"\nresume gap (same gateway): {gap_s * 1000:.0f} ms; resumed at {resumed['offsetMs']} ms of {cut // 16} ms sent"
    )
    _assert_within_one_step(_talk_time(report), unbroken)


@contextlib.contextmanager
def _second_gateway(stack: Stack) -> Iterator[str]:
    """Another gateway of the same deployment (same secret, same bus) on a port of its own."""
    settings = dataclasses.replace(stack.settings, gateway_port=free_port())
    log = open(stack.run_dir / "logs" / "gateway-2.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "gateway"],
        env={**os.environ, **settings.to_env()},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{settings.gateway_port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the second gateway did not start"
            time.sleep(0.3)
        yield session_url("127.0.0.1", settings.gateway_port)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def test_a_session_resumes_on_another_gateway_after_its_own_is_sigkilled(stack, conversation_pcm, unbroken) -> None:
    pcm = conversation_pcm
    cut = len(pcm) // 2 // FRAME * FRAME
    with _second_gateway(stack) as other_url:

        async def run() -> tuple[dict, dict, float, float]:
            ws = await websockets.connect(stack.session_url, max_size=2**22)
            await ws.send(json.dumps({"action": "start", "num_speakers": 2, "session_id": "resume-killed"}))
            token = (await _event(ws, "started"))["resumeToken"]
            await _send(ws, pcm, 0, cut)
            await asyncio.sleep(0.5)
            killed = time.monotonic()
            stack.kill("gateway")  # SIGKILL: no stop, no goodbye; only the bus knows where the session stands
            with contextlib.suppress(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            resumed, report, gap_s = await _resume_and_finish(other_url, pcm, "resume-killed", token)
            return resumed, report, gap_s, time.monotonic() - killed

        resumed, report, gap_s, _ = asyncio.run(run())
    assert 0 < resumed["offset"] <= cut
    print(f"\nresume gap (another gateway, from the bus): {gap_s * 1000:.0f} ms; resumed at {resumed['offsetMs']} ms")
    _assert_within_one_step(_talk_time(report), unbroken)
