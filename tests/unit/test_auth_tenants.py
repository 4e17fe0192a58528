"""Tenants without Kafka: the session-id namespace, a start qualified by its tenant, naming after its own profiles."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import SpeakerNamingConfig
from pipeline.gateway.protocol import (
    AuthAction,
    ErrorCode,
    GatewaySession,
    ProtocolError,
    StartAction,
    parse_action,
)
from pipeline.gateway.tenants import qualified_session_id, session_tenant
from pipeline.stages.speaker_naming import Centroid, ProfileRegistry, SpeakerNaming
from topics import ProfileEmbedding, SessionStart, SpeakerProfile


def test_a_session_id_tells_its_tenant():
    assert session_tenant("call-1") == "default"
    assert session_tenant("acme:call-1") == "acme"
    assert session_tenant("acme:a:b") == "acme"


@pytest.mark.parametrize(
    "tenant, asked, runs_as",
    [
        ("acme", "call-1", "acme:call-1"),
        ("acme", "acme:call-1", "acme:call-1"),  # its own already
        ("acme", "beta:call-1", "acme:beta:call-1"),  # never another tenant's
        ("default", "call-1", "call-1"),
        ("default", "acme:call-1", "default:acme:call-1"),
    ],
)
def test_a_tenant_gets_its_own_namespace(tenant, asked, runs_as):
    assert qualified_session_id(tenant, asked) == runs_as
    assert session_tenant(runs_as) == tenant


def test_a_start_runs_in_its_tenants_namespace_and_names_its_tenant():
    action = parse_action('{"action": "start", "session_id": "call-1"}')
    assert isinstance(action, StartAction)
    start = GatewaySession("gw", 4096).start(action, "acme")
    assert (start.session_id, start.tenant) == ("acme:call-1", "acme")
    generated = GatewaySession("gw", 4096).start(StartAction(action="start"), "acme")
    assert generated.session_id.startswith("acme:")
    # Open mode: as before tenants, the id as asked and the default tenant.
    open_start = GatewaySession("gw", 4096).start(action)
    assert (open_start.session_id, open_start.tenant) == ("call-1", "default")


def test_a_session_id_too_long_with_its_prefix_is_refused():
    action = StartAction(action="start", session_id="x" * 128)
    with pytest.raises(ProtocolError) as caught:
        GatewaySession("gw", 4096).start(action, "acme")
    assert caught.value.code == ErrorCode.INVALID_START


def test_the_auth_action_parses_and_a_bad_one_is_unauthenticated():
    assert parse_action('{"action": "auth", "token": "abc"}') == AuthAction(action="auth", token="abc")
    for text in ('{"action": "auth"}', '{"action": "auth", "token": ""}', '{"action": "auth", "token": "a", "x": 1}'):
        with pytest.raises(ProtocolError) as caught:
            parse_action(text)
        assert caught.value.code == ErrorCode.UNAUTHENTICATED


def voice(profile_id: str, tenant: str, index: int) -> SpeakerProfile:
    vector = np.zeros(8)
    vector[index] = 1.0
    return SpeakerProfile(
        tenant=tenant,
        profile_id=profile_id,
        name=f"{tenant}-{profile_id}",
        embeddings={"m": ProfileEmbedding(vector=vector.tolist(), windows=3)},
        speech_s=6.0,
        clips=1,
        created_ms=1,
        updated_ms=1,
    )


def test_a_session_is_named_after_its_own_tenants_profiles_only():
    registry = ProfileRegistry()
    registry.put(voice("p1", "acme", 0))
    registry.put(voice("p2", "beta", 1))
    naming = SpeakerNaming(SpeakerNamingConfig(min_similarity=0.6, keep_margin=0.05, min_evidence=1), registry, "m")
    centroids = {0: Centroid(np.eye(8)[0] * 4, 4), 1: Centroid(np.eye(8)[1] * 4, 4)}
    for tenant, named in (("acme", {0: "acme-p1"}), ("beta", {1: "beta-p2"}), ("default", {})):
        state = naming.start(SessionStart(session_id=f"{tenant}:s", tenant=tenant))
        naming.match(state, centroids)
        assert {s: n.speaker_name for s, n in state.names.items()} == named
