"""A WebSocket client of the gateway: streams a recording as a live session and shows what comes back."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable

import numpy as np
import websockets

from pipeline.gateway.audio_input import BUS_FORMAT, Encoding
from pipeline.gateway.protocol import ReportEvent
from pipeline.producers.chunking import Pacer, pcm_frames
from pipeline.producers.gateway_http import bearer_headers
from topics import SessionReport
from topics.messages import SAMPLE_RATE


class GatewaySessionError(RuntimeError):
    pass


async def stream_session(
    url: str,
    pcm: np.ndarray,
    num_speakers: int | None = None,
    realtime: bool = True,
    chunk_samples: int | None = None,
    on_event: Callable[[dict], None] | None = None,
    on_sent: Callable[[int], None] | None = None,
    report_timeout_s: float = 120.0,
    session_id: str | None = None,
    speed: float = 1.0,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    sample_rate: int = BUS_FORMAT.sample_rate,
    encoding: Encoding | str = BUS_FORMAT.encoding,
    api_key: str | None = None,
) -> dict:
    """Run one session over `url` (ws://HOST:PORT/ws/session); return the report event.

    `pcm` is mono at `sample_rate`: int16 samples for pcm_s16le, float for pcm_f32le; it is sent in
    frames of `chunk_samples` (default 0.2 s). The format is named in the start only when it is not
    the bus's. Without `session_id` the gateway picks one. The speaker counts not given (None) are
    not sent: the gateway's defaults apply. In real time, `speed` times as fast as spoken.
    An error event fails the session. `api_key` is sent in the handshake (an Authorization header);
    None for an open gateway. `on_sent` is called after each frame with the samples sent so
    far (at `sample_rate`): when each part of the audio left, for a measure of how late updates come.
    """
    encoding = Encoding(encoding)
    floats = encoding is Encoding.PCM_F32LE
    if np.issubdtype(pcm.dtype, np.floating) != floats:
        raise ValueError(f"{encoding} is sent from {'float' if floats else 'int16'} samples, not {pcm.dtype}")
    chunk_samples = chunk_samples or sample_rate // 5
    async with websockets.connect(url, max_size=2**22, additional_headers=bearer_headers(api_key)) as socket:
        fields = {
            "num_speakers": num_speakers,
            "min_speakers": min_speakers,
            "max_speakers": max_speakers,
            "session_id": session_id,
        }
        if (sample_rate, encoding) != (BUS_FORMAT.sample_rate, BUS_FORMAT.encoding):
            fields |= {"sample_rate": sample_rate, "encoding": encoding.value}
        start = {"action": "start"} | {name: value for name, value in fields.items() if value is not None}
        await socket.send(json.dumps(start))
        started = json.loads(await socket.recv())
        if started.get("event") != "started":
            raise GatewaySessionError(f"gateway refused the session: {started}")
        session = started.get("sessionId")
        report: asyncio.Future = asyncio.get_running_loop().create_future()

        async def receive() -> None:
            async for raw in socket:
                event = json.loads(raw)
                if on_event is not None:
                    on_event(event)
                if event.get("event") == "report" and not report.done():
                    report.set_result(event)
                elif event.get("event") == "error" and not report.done():
                    report.set_exception(
                        GatewaySessionError(f"session {session}: {event.get('code')}: {event.get('message')}")
                    )

        receiver = asyncio.create_task(receive())
        try:
            pacer = Pacer(realtime, speed)
            for frame in pcm_frames(pcm, chunk_samples, encoding.dtype):
                await pacer.wait(frame.offset * SAMPLE_RATE // sample_rate)  # the pacer counts 16 kHz samples
                await socket.send(frame.pcm)
                if on_sent is not None:
                    on_sent(frame.offset + len(frame.pcm) // encoding.bytes_per_sample)
            await socket.send(json.dumps({"action": "stop"}))
            return await asyncio.wait_for(report, report_timeout_s)
        finally:
            receiver.cancel()


def report_from_event(session_id: str, event: dict) -> SessionReport:
    """The session report a report event stands for (its duration is not on the wire: 0)."""
    return ReportEvent.model_validate(event).session_report(session_id)


class LiveView:
    """Prints the live speaker updates: one rewritten line on a terminal, a line per second otherwise.

    Everyone talking is shown, dominant first: two or more speakers at once read "spk0 + spk1",
    and such overlaps are counted. Off a terminal the update that starts an overlap is printed
    too, so a log shows every one.
    """

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last_printed_s = -1
        self.overlapping = False
        self.overlaps = 0

    def __call__(self, event: dict) -> None:
        if event.get("event") != "speaker":
            return
        times = "  ".join(f"spk{k}: {v / 1000:5.1f}s" for k, v in sorted(event["speakingTimeMs"].items()))
        current = event["currentSpeakerId"]
        active = event.get("activeSpeakerIds") or ([] if current is None else [current])
        overlap_starts = len(active) > 1 and not self.overlapping
        self.overlapping = len(active) > 1
        self.overlaps += overlap_starts
        now = " + ".join(f"spk{s}" for s in active) if active else "silence"
        line = f"now: {now:<18} talk time  {times}  overlaps so far: {self.overlaps}"
        if self.tty:
            print(f"\r{line:<110}", end="", flush=True)
        else:
            seconds = sum(event["speakingTimeMs"].values()) // 1000
            if seconds != self.last_printed_s or overlap_starts:
                self.last_printed_s = seconds
                print(line, flush=True)
