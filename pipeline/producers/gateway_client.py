"""A WebSocket client of the gateway: streams a recording as a live session."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import numpy as np
import websockets

from pipeline.producers.pacing import paced_chunks


class GatewaySessionError(RuntimeError):
    pass


async def stream_session(
    url: str,
    pcm: np.ndarray,
    num_speakers: int | None = None,
    realtime: bool = True,
    chunk_ms: int = 200,
    on_event: Callable[[dict], None] | None = None,
    report_timeout_s: float = 120.0,
) -> dict:
    """Run one session over `url` (ws://HOST:PORT/ws/session); return the report event."""
    async with websockets.connect(url, max_size=2**22) as socket:
        start: dict = {"action": "start"}
        if num_speakers is not None:
            start["num_speakers"] = num_speakers
        await socket.send(json.dumps(start))
        started = json.loads(await socket.recv())
        if started.get("event") != "started":
            raise GatewaySessionError(f"gateway refused the session: {started}")
        report: asyncio.Future = asyncio.get_running_loop().create_future()

        async def receive() -> None:
            async for raw in socket:
                event = json.loads(raw)
                if on_event is not None:
                    on_event(event)
                if event.get("event") == "report" and not report.done():
                    report.set_result(event)
                elif event.get("event") == "error" and not report.done():
                    report.set_exception(GatewaySessionError(f"{event.get('code')}: {event.get('message')}"))

        receiver = asyncio.create_task(receive())
        try:
            async for _, chunk in paced_chunks(pcm, chunk_ms, realtime):
                await socket.send(chunk.astype("<i2").tobytes())
            await socket.send(json.dumps({"action": "stop"}))
            return await asyncio.wait_for(report, report_timeout_s)
        finally:
            receiver.cancel()
