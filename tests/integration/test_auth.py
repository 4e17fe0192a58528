"""Authentication, tenants and quotas end to end: a whole stack on the session's broker with SPEAKERFLOW_AUTH_MODE=required.

Keys are made as an operator makes them (`speakerflow keys create`, and the same module's
function); every refusal is checked as a client sees it: HTTP 401/403 with a code in the body,
and on a socket an error event with a code, then close 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import numpy as np
import pytest
import soundfile
import websockets
from websockets.exceptions import ConnectionClosed

from pipeline.devstack.stack import free_port
from pipeline.gateway.api_keys import create_key
from pipeline.gateway.protocol import events_url
from pipeline.producers.audio_file import float_to_pcm16

SECRET = "integration-deployment-jwt-secret-0123456789"
TOKEN_TTL_S = 60
FRAME = 3200  # 0.2 s
ENROL_CLIP = Path(__file__).parents[2] / ".." / "shared" / "data" / "enrollment" / "enroll" / "LS1116.flac"
# Reachable without a credential: probes, the console's static page, the OpenAPI docs, and how to authenticate.
OPEN_PATHS = {"/health", "/metrics", "/v1/auth/mode", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


@pytest.fixture(scope="module")
def stack(local_stack):
    settings = {
        "auth_mode": "required",
        "auth_jwt_secret": SECRET,
        "auth_token_ttl_s": float(TOKEN_TTL_S),
        "quota_max_sessions": 1,
        "quota_max_connections": 3,
    }
    with local_stack("auth", report_timeout_s=180, settings=settings) as running:
        yield running


@pytest.fixture(scope="module")
def keys(stack) -> dict[str, str]:
    """A key per role: tenant acme's full key, an ingest-only one, and tenant beta's."""

    async def make() -> dict[str, str]:
        made = {}
        for name, tenant, scopes in [
            ("acme", "acme", ["ingest", "subscribe", "speakers", "jobs"]),
            ("acme-ingest", "acme", ["ingest"]),
            ("beta", "beta", ["admin"]),
            ("gamma", "gamma", ["subscribe"]),
        ]:
            key, _ = await create_key(stack.settings.kafka, tenant, scopes, name)
            made[name] = str(key)
        return made

    made = asyncio.run(make())
    # The gateway follows the key topic: wait until it knows the last key made.
    wait_until(lambda: httpx.get(f"{stack.gateway_url}/v1/auth", headers=bearer(made["gamma"])).status_code == 200)
    return made


@pytest.fixture(scope="module")
def conversation_pcm(two_speaker_conversation) -> np.ndarray:
    return float_to_pcm16(two_speaker_conversation.audio)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def wait_until(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def ws_url(stack, path: str) -> str:
    return f"ws://{stack.settings.gateway_host}:{stack.settings.gateway_port}{path}"


async def refused_socket(url: str, first: str | None = None, headers: dict | None = None) -> tuple[str, int]:
    """The error code a socket gets and its close code."""
    async with websockets.connect(url, additional_headers=headers) as ws:
        if first is not None:
            await ws.send(first)
        event = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert event["event"] == "error", event
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 15)
        return event["code"], closed.value.rcvd.code


async def next_event(ws, kind: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        if event["event"] == kind:
            return event
        assert event["event"] != "error", event


def test_every_endpoint_and_both_sockets_refuse_a_caller_without_credentials(stack, keys):
    api = httpx.Client(base_url=stack.gateway_url, timeout=30)
    assert api.get("/v1/auth/mode").json() == {"mode": "required"}
    assert api.get("/health").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    checked = 0
    for path, methods in paths.items():
        if path in OPEN_PATHS:
            continue
        concrete = path.replace("{session_id}", "acme:s1").replace("{profile_id}", "p1").replace("{job_id}", "j1")
        for method in methods:
            for headers, code in [({}, "unauthenticated"), (bearer("sf_0123abcd4567_forged"), "invalid_credential")]:
                response = api.request(method.upper(), concrete, headers=headers)
                assert response.status_code == 401, (method, path, response.text)
                assert response.json()["detail"]["code"] == code, (method, path)
                assert response.json()["detail"]["mode"] == "required"
                assert response.headers["www-authenticate"] == "Bearer"
            checked += 1
    assert checked >= 14  # sessions, reports, speakers, jobs, auth, tokens

    async def sockets() -> None:
        session, events = ws_url(stack, "/ws/session"), events_url("127.0.0.1", stack.settings.gateway_port, "acme:s1")
        for url in (session, events):
            assert await refused_socket(url, first='{"action": "start"}') == ("unauthenticated", 1008)
            forged = bearer("sf_0123abcd4567_forged")
            assert await refused_socket(url, headers=forged) == ("invalid_credential", 1008)
            assert await refused_socket(url, first='{"action": "auth", "token": "nonsense"}') == (
                "invalid_credential",
                1008,
            )
            # The right key in the wrong place: a URL is no place for a long-lived key.
            assert await refused_socket(f"{url}?access_token={keys['acme']}") == ("invalid_credential", 1008)
        # A key without the socket's scope.
        assert await refused_socket(events, headers=bearer(keys["acme-ingest"])) == ("forbidden", 1008)
        assert await refused_socket(session, headers=bearer(keys["gamma"])) == ("forbidden", 1008)

    asyncio.run(sockets())


def test_a_session_with_a_key_runs_end_to_end_and_other_tenants_see_none_of_it(stack, keys, conversation_pcm):
    api = httpx.Client(base_url=stack.gateway_url, timeout=60)
    token = api.post("/v1/tokens", headers=bearer(keys["acme"]), json={"scopes": ["subscribe"]}).json()
    assert token["tenant"] == "acme" and token["scopes"] == ["subscribe"]
    assert token["expiresAt"] <= (time.time() + TOKEN_TTL_S + 1) * 1000

    async def run() -> tuple[str, dict, list[dict], dict]:
        async with websockets.connect(ws_url(stack, "/ws/session"), additional_headers=bearer(keys["acme"])) as ws:
            await ws.send(json.dumps({"action": "start", "num_speakers": 2, "session_id": "call-1"}))
            started = await next_event(ws, "started")
            session_id = started["sessionId"]
            assert session_id == "acme:call-1"  # the tenant's namespace
            events = events_url("127.0.0.1", stack.settings.gateway_port, session_id)
            # Another tenant may not watch it, even with every scope of its own.
            assert await refused_socket(events, headers=bearer(keys["beta"])) == ("wrong_tenant", 1008)
            # A browser watches it with a short-lived token in the query string.
            async with websockets.connect(f"{events}?access_token={token['token']}") as watcher:
                for start in range(0, len(conversation_pcm), FRAME):
                    await ws.send(conversation_pcm[start : start + FRAME].tobytes())
                first_update = await next_event(ws, "speaker")
                listed = api.get("/v1/sessions", headers=bearer(keys["acme"])).json()["sessions"]
                others = api.get("/v1/sessions", headers=bearer(keys["beta"])).json()["sessions"]
                await ws.send(json.dumps({"action": "stop"}))
                report = await next_event(ws, "report")
                watched = [json.loads(await asyncio.wait_for(watcher.recv(), 30))]
                while watched[-1]["event"] != "report":
                    watched.append(json.loads(await asyncio.wait_for(watcher.recv(), 30)))
            assert session_id in [s["sessionId"] for s in listed]
            assert session_id not in [s["sessionId"] for s in others]
            return session_id, report, watched, first_update

    session_id, report, watched, _ = asyncio.run(run())
    assert len(report["speakers"]) == 2 and all(s["totalTimeMs"] > 0 for s in report["speakers"])
    assert {"turn", "report"} <= {e["event"] for e in watched}

    own = api.get(f"/v1/sessions/{session_id}/report", headers=bearer(keys["acme"]), params={"format": "json"})
    assert own.status_code == 200 and own.json()["session_id"] == session_id
    other = api.get(f"/v1/sessions/{session_id}/report", headers=bearer(keys["beta"]))
    assert other.status_code == 403 and other.json()["detail"]["code"] == "wrong_tenant"
    no_scope = api.get(f"/v1/sessions/{session_id}/report", headers=bearer(keys["acme-ingest"]))
    assert no_scope.status_code == 403 and no_scope.json()["detail"]["code"] == "forbidden"


def test_browser_tokens_work_from_the_query_string_and_expire(stack, keys):
    api = httpx.Client(base_url=stack.gateway_url, timeout=30)
    issued = api.post("/v1/tokens", headers=bearer(keys["acme"]), json={"scopes": ["ingest"]})
    assert issued.status_code == 200, issued.text
    token = issued.json()["token"]
    too_much = api.post("/v1/tokens", headers=bearer(keys["acme-ingest"]), json={"scopes": ["jobs"]})
    assert too_much.status_code == 403 and too_much.json()["detail"]["code"] == "forbidden"
    me = api.get("/v1/auth", headers=bearer(token)).json()
    assert (me["mode"], me["tenant"], me["scopes"]) == ("required", "acme", ["ingest"])

    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    expired = jwt.encode(claims | {"exp": int(time.time()) - 30}, SECRET, algorithm="HS256")
    long_lived = jwt.encode(claims | {"exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")

    async def run() -> None:
        session = ws_url(stack, "/ws/session")
        async with websockets.connect(f"{session}?access_token={token}") as ws:
            await ws.send(json.dumps({"action": "start"}))
            started = await next_event(ws, "started", 30)
            assert started["sessionId"].startswith("acme:")
            await ws.send(json.dumps({"action": "stop"}))
        assert await refused_socket(f"{session}?access_token={expired}") == ("invalid_credential", 1008)
        assert await refused_socket(f"{session}?access_token={long_lived}") == ("invalid_credential", 1008)
        # The same token as a first message: the gateway says whose the socket is.
        async with websockets.connect(session) as ws:
            await ws.send(json.dumps({"action": "auth", "token": token}))
            assert json.loads(await ws.recv()) == {"event": "authenticated", "tenant": "acme", "scopes": ["ingest"]}

    asyncio.run(run())
    assert api.get("/v1/auth", headers=bearer(expired)).status_code == 401
    # The stopped session leaves the gateway once its socket has closed: the next test starts within the quota.
    wait_until(lambda: api.get("/health").json()["sessions"] == 0)


def test_the_session_quota_refuses_a_second_session_while_the_first_carries_on(stack, keys, conversation_pcm):
    async def run() -> tuple[dict, dict]:
        headers = bearer(keys["acme"])
        async with (
            websockets.connect(ws_url(stack, "/ws/session"), additional_headers=headers) as first,
            websockets.connect(ws_url(stack, "/ws/session"), additional_headers=headers) as second,
        ):
            await first.send(json.dumps({"action": "start", "num_speakers": 2}))
            await next_event(first, "started")
            half = len(conversation_pcm) // 2 // FRAME * FRAME
            for start in range(0, half, FRAME):
                await first.send(conversation_pcm[start : start + FRAME].tobytes())
            await second.send(json.dumps({"action": "start"}))
            refusal = json.loads(await asyncio.wait_for(second.recv(), 30))
            for start in range(half, len(conversation_pcm), FRAME):
                await first.send(conversation_pcm[start : start + FRAME].tobytes())
            await first.send(json.dumps({"action": "stop"}))
            report = await next_event(first, "report")
            # The refused socket stays open: once the first session ended, it may start one.
            await second.send(json.dumps({"action": "start"}))
            assert (await next_event(second, "started", 30))["sessionId"].startswith("acme:")
            await second.send(json.dumps({"action": "stop"}))
            return refusal, report

    refusal, report = asyncio.run(run())
    assert refusal["event"] == "error" and refusal["code"] == "too_many_sessions", refusal
    assert len(report["speakers"]) == 2 and all(s["totalTimeMs"] > 0 for s in report["speakers"])


def test_the_connection_quota_closes_the_socket_over_it(stack, keys):
    async def run() -> tuple[str, int]:
        events = events_url("127.0.0.1", stack.settings.gateway_port, "gamma:watched")
        headers = bearer(keys["gamma"])
        async with (
            websockets.connect(events, additional_headers=headers),
            websockets.connect(events, additional_headers=headers),
            websockets.connect(events, additional_headers=headers),
        ):
            over = await refused_socket(events, headers=headers)
            # Another tenant is not held back by gamma's sockets.
            async with websockets.connect(
                events_url("127.0.0.1", stack.settings.gateway_port, "acme:x"), additional_headers=bearer(keys["acme"])
            ) as other:
                with pytest.raises(TimeoutError):  # open, nothing to say
                    await asyncio.wait_for(other.recv(), 1)
            return over

    assert asyncio.run(run()) == ("too_many_connections", 1008)


def test_speakers_and_jobs_belong_to_their_tenant(stack, keys, conversation_pcm):
    api = httpx.Client(base_url=stack.gateway_url, timeout=180)
    acme, beta = bearer(keys["acme"]), bearer(keys["beta"])
    clip = ("clips", (ENROL_CLIP.name, ENROL_CLIP.read_bytes()))
    enrolled = api.post("/v1/speakers", data={"name": "Ada"}, files=[clip], headers=acme)
    assert enrolled.status_code == 201, enrolled.text
    profile_id = enrolled.json()["id"]
    assert profile_id in [s["id"] for s in api.get("/v1/speakers", headers=acme).json()["speakers"]]
    assert profile_id not in [s["id"] for s in api.get("/v1/speakers", headers=beta).json()["speakers"]]
    for method in ("GET", "DELETE"):
        response = api.request(method, f"/v1/speakers/{profile_id}", headers=beta)
        assert response.status_code == 404 and response.json()["detail"]["code"] == "unknown_speaker"
    no_scope = api.get("/v1/speakers", headers=bearer(keys["acme-ingest"]))
    assert no_scope.status_code == 403 and no_scope.json()["detail"]["code"] == "forbidden"
    assert api.get(f"/v1/speakers/{profile_id}", headers=acme).status_code == 200
    assert api.delete(f"/v1/speakers/{profile_id}", headers=acme).status_code == 204

    wav = io.BytesIO()
    soundfile.write(wav, conversation_pcm[: 16_000 * 2], 16_000, format="WAV", subtype="PCM_16")
    submitted = api.post("/v1/jobs", files=[("clips", ("two-seconds.wav", wav.getvalue()))], headers=acme)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert all(c["sessionId"].startswith("acme:job-") for c in job["clips"])
    for method, path in [("GET", ""), ("GET", "/results"), ("GET", "/events"), ("DELETE", "")]:
        response = api.request(method, f"/v1/jobs/{job['id']}{path}", headers=beta)
        assert response.status_code == 404 and response.json()["detail"]["code"] == "unknown_job", (method, path)
    assert api.get(f"/v1/jobs/{job['id']}", headers=acme).status_code == 200
    assert api.delete(f"/v1/jobs/{job['id']}", headers=acme).status_code == 204


def speakerflow(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.settings.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_key_made_with_the_cli_works_until_it_is_revoked_and_its_sockets_close_then(stack):
    created = speakerflow(
        stack, "keys", "create", "--tenant", "delta", "--scopes", "subscribe,jobs,ingest", "--name", "ci"
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    key_id = key.split("_")[1]
    secret = key[len(f"sf_{key_id}_") :]
    listing = speakerflow(stack, "keys", "list")
    assert key_id in listing.stdout and "delta" in listing.stdout and secret not in listing.stdout

    def caller(credential: str = key) -> httpx.Response:
        return httpx.get(f"{stack.gateway_url}/v1/auth", headers=bearer(credential))

    wait_until(lambda: caller().status_code == 200)
    assert caller().json()["scopes"] == ["ingest", "subscribe", "jobs"]
    token = httpx.post(f"{stack.gateway_url}/v1/tokens", headers=bearer(key)).json()["token"]

    async def revoke_while_open() -> list[tuple[str, int]]:
        """The key feeds a session, a token it was issued watches it; the key is revoked: both sockets close."""
        async with websockets.connect(ws_url(stack, "/ws/session"), additional_headers=bearer(key)) as feeder:
            await feeder.send(json.dumps({"action": "start"}))
            session_id = (await next_event(feeder, "started", 30))["sessionId"]
            await feeder.send(np.zeros(FRAME, "<i2").tobytes())
            watcher_url = events_url(stack.settings.gateway_host, stack.settings.gateway_port, session_id)
            watcher_url += f"?access_token={token}"
            async with websockets.connect(watcher_url) as watcher:
                revoked = await asyncio.to_thread(speakerflow, stack, "keys", "revoke", key_id)
                assert revoked.returncode == 0, revoked.stderr
                closes = []
                for ws in (feeder, watcher):
                    code = None
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:  # results may come first; the error event comes before the close
                            event = json.loads(await asyncio.wait_for(ws.recv(), 15))
                            if event["event"] == "error":
                                code = event["code"]
                    closes.append((code, closed.value.rcvd.code))
                return closes

    assert asyncio.run(revoke_while_open()) == [("invalid_credential", 1008)] * 2
    for credential in (key, token):  # the token issued for the key goes with it
        assert caller(credential).status_code == 401
        assert caller(credential).json()["detail"]["code"] == "invalid_credential"
    assert key_id not in speakerflow(stack, "keys", "list").stdout
    assert speakerflow(stack, "keys", "revoke", key_id).returncode != 0
    bad = speakerflow(stack, "keys", "create", "--tenant", "delta", "--scopes", "root")
    assert bad.returncode != 0 and "unknown" in bad.stderr


@contextlib.contextmanager
def another_gateway(stack, **changes) -> Iterator[str]:
    """A second gateway of the deployment (same bus, same JWT secret), with `changes` to its settings."""
    settings = dataclasses.replace(stack.settings, gateway_port=free_port(), **changes)
    log = open(stack.run_dir / "logs" / "gateway-auth-2.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "gateway"],
        env={**os.environ, **settings.to_env()},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    try:
        url = f"http://127.0.0.1:{settings.gateway_port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return process.poll() is not None

        wait_until(up, 60)
        assert process.poll() is None, "the second gateway did not start"
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_another_gateway_knows_the_keys_and_drops_frames_over_the_audio_rate(stack, keys, conversation_pcm):
    with another_gateway(stack, quota_audio_seconds_per_minute=2.0) as url:
        # The key made for the first gateway works here: both read the key topic.
        assert httpx.get(f"{url}/v1/auth", headers=bearer(keys["acme"])).json()["tenant"] == "acme"

        async def run() -> tuple[list[dict], dict]:
            socket = url.replace("http://", "ws://") + "/ws/session"
            async with websockets.connect(socket, additional_headers=bearer(keys["acme"])) as ws:
                await ws.send(json.dumps({"action": "start", "num_speakers": 2}))
                await next_event(ws, "started", 30)
                for start in range(0, 16_000 * 4, FRAME):  # 4 s of audio at once, twice the tenant's allowance
                    await ws.send(conversation_pcm[start : start + FRAME].tobytes())
                await ws.send(json.dumps({"action": "stop"}))
                errors = []
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 180))
                    if event["event"] == "error":
                        errors.append(event)
                    elif event["event"] == "report":
                        return errors, event

        errors, report = asyncio.run(run())
    # About 2 s of the 4 s reached the bus (ten 0.2 s frames, one either way for float sums and the refill
    # while sending); each later frame was dropped with its own error, and the session went on to its report.
    assert {e["code"] for e in errors} == {"audio_rate_exceeded"} and 9 <= len(errors) <= 11, errors
    assert sum(s["totalTimeMs"] for s in report["speakers"]) <= 2_000
