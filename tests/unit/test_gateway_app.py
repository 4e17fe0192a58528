"""The gateway without a broker: its HTTP side, its audio on the way to the bus, its shutdown."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import websockets
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from websockets.exceptions import ConnectionClosed

from pipeline.gateway.app import (
    IN_FLIGHT_MARGIN_S,
    Gateway,
    GatewayServer,
    _AudioPublisher,
    create_app,
    server_config,
)
from pipeline.gateway.protocol import GatewaySession, ProtocolError, parse_action
from pipeline.settings import Settings
from topics import AudioChunk, decode


async def test_health_is_503_before_startup(gateway_client):
    # The lifespan never ran: the app is up but has no producer or fan-out.
    response = await gateway_client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] != "ok"


async def test_a_stopping_gateway_closes_a_streaming_socket_with_1012_itself():
    # uvicorn's own shutdown would send 1012 without this reason and drop the connection at once, which
    # a client still streaming may see as 1006: the gateway closes its sockets first and awaits the echo.
    settings = Settings(kafka="127.0.0.1:1")
    app = create_app(settings)
    # No broker: a socket that starts no session needs neither the producer nor the fan-out.
    app.state.gateway = Gateway(settings, "gateway-test", producer=None, fanout=None)  # type: ignore[arg-type]
    server = GatewayServer(server_config(settings, app, port=0, lifespan="off", log_level="warning"), app)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]

    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/session") as ws:

        async def stream() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await ws.send(bytes(3200))
                    await asyncio.sleep(0.005)

        streaming = asyncio.create_task(stream())
        await ws.recv()  # the gateway is reading: audio before start is an error event
        server.should_exit = True
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
        await streaming
    assert (ws.close_code, ws.close_reason) == (1012, "gateway shutting down")
    await asyncio.wait_for(serving, 10)


class HeldProducer:
    """Takes records as aiokafka's producer does (``send()`` returns the delivery future) and acks them when told."""

    def __init__(self) -> None:
        self.records: list[AudioChunk] = []
        self.deliveries: list[asyncio.Future[None]] = []
        self.refuse_next = False

    async def send(self, topic: str, value: bytes, key: bytes, headers: list) -> asyncio.Future[None]:
        if self.refuse_next:
            self.refuse_next = False
            raise MessageSizeTooLargeError()
        self.records.append(decode(key, value, headers))
        self.deliveries.append(asyncio.get_running_loop().create_future())
        return self.deliveries[-1]


def publisher_of_a_session(producer: HeldProducer) -> tuple[_AudioPublisher, GatewaySession, list[str]]:
    settings = Settings(kafka="127.0.0.1:1", gateway_publish_timeout_s=1.0)
    gateway = Gateway(settings, "gateway-test", producer, fanout=None)  # type: ignore[arg-type]
    state = GatewaySession(gateway.id, settings.max_frame_bytes)
    start = parse_action('{"action": "start", "session_id": "s1"}')
    state.commit(state.start(start), start.audio_format())
    reported: list[str] = []

    async def report(error: ProtocolError) -> None:
        reported.append(error.code.value)

    return _AudioPublisher(gateway, state, report), state, reported


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0)


async def test_audio_is_handed_on_in_order_and_counted_once_acked():
    producer = HeldProducer()
    publisher, state, reported = publisher_of_a_session(producer)
    for samples in (100, 200, 300):
        await publisher.put(bytes(2 * samples))  # returns without any ack
    await until(lambda: len(producer.records) == 3)
    assert [(r.seq, r.offset, r.num_samples) for r in producer.records] == [(1, 0, 100), (2, 100, 200), (3, 300, 300)]
    assert publisher.confirmed_offset == 0  # nothing acked: a resume would continue from the start
    producer.deliveries[0].set_result(None)
    producer.deliveries[1].set_exception(KafkaTimeoutError())
    producer.deliveries[2].set_exception(KafkaTimeoutError())
    await publisher.drain()
    assert publisher.confirmed_offset == 100
    assert reported == ["bus_unavailable"]  # one event for the run of lost chunks
    publisher.close()


async def test_a_record_the_producer_refuses_leaves_its_numbering_to_the_next():
    producer = HeldProducer()
    publisher, state, reported = publisher_of_a_session(producer)
    producer.refuse_next = True
    await publisher.put(bytes(200))
    await publisher.put(bytes(400))
    await until(lambda: len(producer.records) == 1)
    producer.deliveries[0].set_result(None)
    await publisher.drain()
    assert [(r.seq, r.offset) for r in producer.records] == [(1, 0)]
    assert (state.seq, state.offset, publisher.confirmed_offset) == (2, 200, 200)
    assert reported == ["bus_unavailable"]
    publisher.close()


async def test_a_session_at_its_cap_of_audio_in_flight_waits_for_an_ack():
    producer = HeldProducer()
    publisher, _, _ = publisher_of_a_session(producer)
    cap_samples = int((1.0 + IN_FLIGHT_MARGIN_S) * 16000)
    await publisher.put(bytes(2 * cap_samples))
    waiting = asyncio.create_task(publisher.put(bytes(2)))
    await until(lambda: len(producer.records) == 1)
    await asyncio.sleep(0.01)
    assert not waiting.done()
    producer.deliveries[0].set_result(None)
    await asyncio.wait_for(waiting, 5)
    publisher.close()
