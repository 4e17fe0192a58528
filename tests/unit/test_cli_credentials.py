"""The CLI's gateway clients send SPEAKERFLOW_API_KEY as a bearer token, over HTTP and in the WebSocket handshake."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import websockets

from pipeline.producers.gateway_client import GatewaySessionError, stream_session
from pipeline.producers.gateway_http import JobsClient, SpeakersClient
from pipeline.settings import Settings


@pytest.fixture
def http_gateway() -> Iterator[tuple[str, list[str | None]]]:
    """A server that answers every GET with an empty speaker list and keeps each request's Authorization."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"speakers": [], "jobId": "j", "status": "done"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_api_key_setting_is_read_from_the_environment():
    assert Settings.from_env({"SPEAKERFLOW_API_KEY": " sfk_abc "}).api_key == "sfk_abc"
    assert Settings.from_env({}).api_key is None
    assert "sfk_abc" not in repr(Settings(api_key="sfk_abc"))


def test_http_clients_send_the_key_as_a_bearer_token(http_gateway):
    url, seen = http_gateway
    assert SpeakersClient(url, api_key="sfk_abc").list() == []
    JobsClient(url, api_key="sfk_abc").status("j")
    SpeakersClient(url).list()
    assert seen == ["Bearer sfk_abc", "Bearer sfk_abc", None]


@pytest.mark.parametrize("api_key, expected", [("sfk_abc", "Bearer sfk_abc"), (None, None)])
async def test_the_session_socket_sends_the_key_in_its_handshake(api_key, expected):
    seen: list[str | None] = []

    async def refuse(connection) -> None:
        seen.append(connection.request.headers.get("Authorization"))
        await connection.recv()  # the start
        await connection.send(json.dumps({"event": "error", "code": "unauthenticated", "message": "no"}))

    async with websockets.serve(refuse, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(GatewaySessionError, match="unauthenticated"):
            await stream_session(f"ws://127.0.0.1:{port}/ws/session", np.zeros(1600, np.int16), api_key=api_key)
    assert seen == [expected]
