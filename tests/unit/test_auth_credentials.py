"""Credentials without Kafka: API keys and their records, JWTs (HS256, and ES256/RS256 from a JWKS), the decisions."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pipeline.gateway.api_keys import ApiKeyStore, new_api_key, parse_api_key, parse_scopes, secret_sha256
from pipeline.gateway.credentials import (
    OPEN_PRINCIPAL,
    TOKEN_ISSUER,
    Authenticator,
    CredentialRefused,
    JwtVerifier,
    Principal,
    credential_from_headers,
)
from topics.api_keys import ApiKeyRecord, decode_api_key, encode_api_key, encode_api_key_revocation
from topics.messages import DecodeError

SECRET = "a-test-secret-of-the-deployment-0123456789"


def refusal(call) -> tuple[int, str]:
    with pytest.raises(CredentialRefused) as caught:
        call()
    return caught.value.status, caught.value.code


# ---- API keys ---------------------------------------------------------------------------


def test_a_new_key_parses_back_to_its_id_and_secret():
    key = new_api_key()
    text = str(key)
    assert text.startswith(f"sf_{key.key_id}_")
    assert parse_api_key(text) == key
    assert len(key.key_id) == 12 and len(key.secret) >= 43  # 32 random bytes
    assert new_api_key() != key


def test_a_secret_holding_underscores_still_parses():
    assert parse_api_key("sf_0123abcd4567_se_cr_et-").secret == "se_cr_et-"


@pytest.mark.parametrize(
    "text",
    ["", "sf_", "sf__secret", "sf_0123abcd4567", "sf_0123abcd4567_", "xx_0123abcd4567_s", "sf_ABC_s", "sf_a-b_s"],
)
def test_a_malformed_key_is_refused(text):
    with pytest.raises(ValueError):
        parse_api_key(text)


def test_the_hash_is_sha256_of_the_secret_only():
    assert secret_sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_scopes_are_parsed_and_unknown_ones_refused():
    assert parse_scopes("ingest,subscribe") == ["ingest", "subscribe"]
    assert parse_scopes("jobs, jobs ,admin") == ["jobs", "admin"]
    for bad in ("", "ingest,publish", ","):
        with pytest.raises(ValueError):
            parse_scopes(bad)


def record_of(key, tenant="acme", scopes=("ingest",)) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=key.key_id, tenant=tenant, scopes=list(scopes), secret_sha256=secret_sha256(key.secret), created_ms=1
    )


def test_a_key_record_round_trips_and_a_tombstone_revokes():
    key = new_api_key()
    record = record_of(key)
    raw_key, value, headers = encode_api_key(record)
    assert raw_key == key.key_id.encode() and key.secret.encode() not in value
    assert decode_api_key(raw_key, value, headers) == record
    tomb = encode_api_key_revocation(key.key_id)
    assert decode_api_key(*tomb) is None
    with pytest.raises(DecodeError):
        decode_api_key(b"otherid12345", value)
    with pytest.raises(DecodeError):
        decode_api_key(raw_key, b'{"key_id": "x"}')
    with pytest.raises(ValueError):  # a tenant name never holds the session-id separator
        record_of(key, tenant="ac:me")


def store_with(*records: ApiKeyRecord) -> ApiKeyStore:
    store = ApiKeyStore("127.0.0.1:1")  # never started: records are put by hand
    for r in records:
        store.put(*encode_api_key(r)[:2])
    return store


def test_the_store_verifies_the_secret_and_forgets_a_revoked_key():
    key = new_api_key()
    store = store_with(record_of(key))
    assert store.verify(key) == record_of(key)
    assert store.verify(type(key)(key.key_id, key.secret + "x")) is None
    assert store.verify(new_api_key()) is None
    store.put(key.key_id.encode(), None)
    assert store.verify(key) is None


def test_revoking_a_key_ends_its_tokens_and_signals_its_open_sockets():
    key = new_api_key()
    store = store_with(record_of(key, "acme", ("ingest", "subscribe")))
    auth = Authenticator("required", store, SECRET)
    by_key = auth.authenticate(str(key))
    token, _, _ = auth.issue_token(by_key, ["subscribe"])
    by_token = auth.authenticate(token)
    assert by_key.key_id == by_token.key_id == key.key_id
    with auth.watch_revocation(by_key) as key_revoked, auth.watch_revocation(by_token) as token_revoked:
        other = new_api_key()
        store.put(*encode_api_key(record_of(other))[:2])
        assert not key_revoked.is_set() and not token_revoked.is_set()  # another key's change
        store.put(key.key_id.encode(), None)
        assert key_revoked.is_set() and token_revoked.is_set()
    assert refusal(lambda: auth.authenticate(token)) == (401, "invalid_credential")
    assert store._watchers == {}  # nothing kept once the sockets are gone
    with auth.watch_revocation(by_key) as late:  # revoked between the handshake and the watch
        assert late.is_set()
    # A token from outside (not of the gateway's issuer) has no key to revoke, whatever its subject.
    outside = jwt.encode({"sub": "key:nosuchkey1", "tenant": "acme", "exp": int(time.time()) + 60}, SECRET)
    assert auth.authenticate(outside).key_id is None
    with auth.watch_revocation(auth.authenticate(outside)) as never:
        assert not never.is_set()


# ---- where a credential travels ---------------------------------------------------------


def test_credentials_come_from_a_bearer_header_or_x_api_key():
    assert credential_from_headers({"authorization": "Bearer abc"}) == "abc"
    assert credential_from_headers({"authorization": "bearer  abc "}) == "abc"
    assert credential_from_headers({"x-api-key": "sf_k_s"}) == "sf_k_s"
    assert credential_from_headers({"authorization": "Basic dXNlcg=="}) is None
    assert credential_from_headers({}) is None


# ---- JWTs -------------------------------------------------------------------------------


def hs256(claims: dict, secret: str = SECRET, **header) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=header or None)


def claims(**changes) -> dict:
    return {
        "sub": "user-1",
        "tenant": "acme",
        "scope": "ingest subscribe other",
        "exp": int(time.time()) + 60,
    } | changes


def test_an_hs256_token_grants_its_tenant_and_known_scopes():
    principal = JwtVerifier(SECRET).verify(hs256(claims()))
    assert (principal.tenant, principal.scopes, principal.subject, principal.kind) == (
        "acme",
        frozenset({"ingest", "subscribe"}),
        "user-1",
        "jwt",
    )


@pytest.mark.parametrize(
    "token",
    [
        hs256(claims(exp=int(time.time()) - 60)),  # expired
        hs256(claims(), secret="another-secret-entirely-0123456789"),  # signed with another key
        hs256({k: v for k, v in claims().items() if k != "exp"}),  # never expires
        hs256({k: v for k, v in claims().items() if k != "sub"}),
        hs256(claims(tenant="ac:me")),
        hs256({k: v for k, v in claims().items() if k != "tenant"}),
        jwt.encode(claims(), None, algorithm="none"),  # unsigned
        "not.a.token",
        "garbage",
    ],
)
def test_a_bad_token_is_refused_with_401(token):
    assert refusal(lambda: JwtVerifier(SECRET).verify(token)) == (401, "invalid_credential")


def jwks_of(*keys: tuple[str, object, str]) -> jwt.PyJWKSet:
    entries = []
    for kid, private, alg in keys:
        algorithm = jwt.get_algorithm_by_name(alg)
        entry = json.loads(algorithm.to_jwk(private.public_key()))
        entries.append(entry | {"kid": kid, "alg": alg, "use": "sig"})
    return jwt.PyJWKSet.from_dict({"keys": entries})


def test_es256_and_rs256_tokens_verify_against_the_jwks():
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_ec = ec.generate_private_key(ec.SECP256R1())
    jwks = jwks_of(("ec-1", ec_key, "ES256"), ("rsa-1", rsa_key, "RS256"))
    verifier = JwtVerifier(SECRET, jwks)

    es = jwt.encode(claims(tenant="beta"), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert verifier.verify(es).tenant == "beta"
    rs = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert verifier.verify(rs).tenant == "acme"

    forged = jwt.encode(claims(), other_ec, algorithm="ES256", headers={"kid": "ec-1"})
    assert refusal(lambda: verifier.verify(forged)) == (401, "invalid_credential")
    unknown_kid = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-9"})
    assert refusal(lambda: verifier.verify(unknown_kid)) == (401, "invalid_credential")
    # The RSA key's id on an EC token: the key's own algorithm must be the token's.
    crossed = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "rsa-1"})
    assert refusal(lambda: verifier.verify(crossed)) == (401, "invalid_credential")
    # Without a JWKS, no asymmetric token is taken.
    assert refusal(lambda: JwtVerifier(SECRET).verify(es)) == (401, "invalid_credential")


def test_a_configured_issuer_and_audience_hold_for_outside_tokens_not_the_gateways_own():
    ec_key = ec.generate_private_key(ec.SECP256R1())
    verifier = JwtVerifier(
        SECRET, jwks_of(("ec-1", ec_key, "ES256")), issuer="https://idp.example", audience="speakerflow"
    )

    def es256(**extra) -> str:
        return jwt.encode(claims() | extra, ec_key, algorithm="ES256", headers={"kid": "ec-1"})

    assert verifier.verify(es256(iss="https://idp.example", aud="speakerflow")).tenant == "acme"
    assert verifier.verify(es256(iss="https://idp.example", aud=["other", "speakerflow"])).tenant == "acme"
    for token in (
        es256(iss="https://idp.example", aud="another-service"),
        es256(iss="https://idp.example"),
        es256(iss="https://elsewhere.example", aud="speakerflow"),
        es256(aud="speakerflow"),
        es256(iss=TOKEN_ISSUER, aud="speakerflow"),  # only HS256 under the deployment's secret is the gateway's
        hs256(claims(iss="https://elsewhere.example")),
    ):
        assert refusal(lambda token=token: verifier.verify(token)) == (401, "invalid_credential")
    # The gateway's own browser tokens name neither.
    assert verifier.verify(hs256(claims(iss=TOKEN_ISSUER))).tenant == "acme"


def test_the_jwks_file_is_read_and_a_broken_one_stops_the_gateway(tmp_path):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    entry = json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(ec_key.public_key())) | {"kid": "k", "alg": "ES256"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [entry]}))
    verifier = JwtVerifier.from_file(SECRET, path)
    # One key in the set: a token without kid uses it.
    assert verifier.verify(jwt.encode(claims(), ec_key, algorithm="ES256")).subject == "user-1"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="SPEAKERFLOW_AUTH_JWKS_FILE"):
        JwtVerifier.from_file(SECRET, path)


# ---- the decisions ----------------------------------------------------------------------


def authenticator(mode="required", *records, ttl=300.0, clock=time.time) -> Authenticator:
    return Authenticator(mode, store_with(*records), SECRET, token_ttl_s=ttl, clock=clock)


def test_open_mode_makes_everyone_the_default_tenant_with_every_scope():
    auth = authenticator("open")
    for credential in (None, "", "sf_bad", "garbage"):
        assert auth.authenticate(credential) is OPEN_PRINCIPAL
    assert OPEN_PRINCIPAL.tenant == "default" and all(OPEN_PRINCIPAL.allows(s) for s in ("ingest", "admin", "jobs"))
    assert OPEN_PRINCIPAL.owns_session("acme:anything") and OPEN_PRINCIPAL.owns_session("plain")


def test_required_mode_refuses_no_credential_and_takes_a_key():
    key = new_api_key()
    auth = authenticator("required", record_of(key, "acme", ("ingest", "subscribe")))
    assert refusal(lambda: auth.authenticate(None)) == (401, "unauthenticated")
    assert refusal(lambda: auth.authenticate(str(new_api_key()))) == (401, "invalid_credential")
    assert refusal(lambda: auth.authenticate("sf_nonsense")) == (401, "invalid_credential")
    principal = auth.authenticate(str(key))
    assert (principal.tenant, principal.subject, principal.kind) == ("acme", f"key:{key.key_id}", "api_key")
    # A key is never taken from a URL, where it would be logged.
    assert refusal(lambda: auth.authenticate(str(key), from_query=True)) == (401, "invalid_credential")


def test_scopes_and_tenants_decide():
    ingest_only = Principal("acme", frozenset({"ingest"}), "k", "api_key")
    ingest_only.require("ingest")
    assert refusal(lambda: ingest_only.require("subscribe")) == (403, "forbidden")
    admin = Principal("acme", frozenset({"admin"}), "k", "api_key")
    for scope in ("ingest", "subscribe", "speakers", "jobs"):
        admin.require(scope)
    assert admin.granted == ["ingest", "subscribe", "speakers", "jobs", "admin"]
    assert admin.owns_session("acme:call-1")
    assert not admin.owns_session("beta:call-1") and not admin.owns_session("call-1")
    assert refusal(lambda: admin.require_session("beta:call-1")) == (403, "wrong_tenant")
    default = Principal("default", frozenset({"subscribe"}), "k", "api_key")
    assert default.owns_session("call-1") and not default.owns_session("acme:call-1")


def test_a_gateway_token_holds_a_subset_of_its_issuers_scopes_and_expires():
    now = [1_000_000.0]
    key = new_api_key()
    auth = authenticator("required", record_of(key, "acme", ("ingest", "subscribe")), ttl=300, clock=lambda: now[0])
    issuer = auth.authenticate(str(key))
    token, expires_ms, scopes = auth.issue_token(issuer, ["subscribe"])
    assert (expires_ms, scopes) == ((1_000_000 + 300) * 1000, ["subscribe"])
    assert refusal(lambda: auth.issue_token(issuer, ["jobs"])) == (403, "forbidden")
    assert refusal(lambda: auth.issue_token(issuer, ["root"])) == (422, "unknown_scope")
    assert auth.issue_token(issuer)[2] == ["ingest", "subscribe"]

    # PyJWT checks exp against the real time; this token's claims are built for the test clock's.
    later = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert later["tenant"] == "acme" and later["scope"] == "subscribe" and later["sub"] == f"key:{key.key_id}"


def test_a_url_takes_only_a_short_lived_token():
    auth = authenticator("required", ttl=300)
    short = hs256(claims(exp=int(time.time()) + 200))
    assert auth.authenticate(short, from_query=True).tenant == "acme"
    long_lived = hs256(claims(exp=int(time.time()) + 3600))
    assert auth.authenticate(long_lived).tenant == "acme"  # in a header it is fine
    assert refusal(lambda: auth.authenticate(long_lived, from_query=True)) == (401, "invalid_credential")
    expired = hs256(claims(exp=int(time.time()) - 30))
    assert refusal(lambda: auth.authenticate(expired, from_query=True)) == (401, "invalid_credential")


def test_a_token_issued_by_the_gateway_verifies_on_another_with_the_same_secret():
    key = new_api_key()
    first = authenticator("required", record_of(key, "acme", ("admin",)))
    token, _, _ = first.issue_token(first.authenticate(str(key)), ["ingest"])
    second = Authenticator("required", store_with(record_of(key, "acme", ("admin",))), SECRET)
    principal = second.authenticate(token, from_query=True)
    assert (principal.tenant, principal.scopes) == ("acme", frozenset({"ingest"}))
    stranger = Authenticator("required", store_with(), None)  # a secret of its own
    assert refusal(lambda: stranger.authenticate(token)) == (401, "invalid_credential")


def test_tokens_in_a_sockets_url_are_blanked_in_uvicorns_log_lines():
    import logging

    from pipeline.gateway.app import RedactAccessTokens

    line = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        "",
        0,
        '%s - "WebSocket %s" [accepted]',
        ("1.2.3.4:5", "/ws/x?access_token=ey.J.x&a=1"),
        None,
    )
    assert RedactAccessTokens().filter(line)
    assert line.getMessage() == '1.2.3.4:5 - "WebSocket /ws/x?access_token=[redacted]&a=1" [accepted]'
