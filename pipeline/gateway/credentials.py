"""Who a request is: credentials checked, the tenant and scopes they grant, the gateway's own short-lived tokens.

In `open` mode (SPEAKERFLOW_AUTH_MODE, the default of a development machine) every caller is
tenant ``default`` with every scope, and any credential presented is ignored. In `required`
mode a caller presents one of:

- an **API key** ``sf_<id>_<secret>`` (:mod:`pipeline.gateway.api_keys`);
- a **JWT** with the claims ``sub``, ``tenant``, ``scope`` (space separated) and ``exp``: HS256
  under SPEAKERFLOW_AUTH_JWT_SECRET, or RS256/ES256 under a key of SPEAKERFLOW_AUTH_JWKS_FILE
  (chosen by the token's ``kid``). Scopes other than the gateway's are ignored;
- a **gateway token**: an HS256 JWT that ``POST /v1/tokens`` issues for at most
  SPEAKERFLOW_AUTH_TOKEN_TTL_S, with a subset of the caller's scopes. Browsers, which cannot set
  a socket's headers, put it in the query string (``?access_token=``); there, only a JWT that
  expires within that lifetime is taken, never an API key, since URLs end up in logs.

The `admin` scope holds every other scope of its tenant. Nothing here does I/O: the key store
is handed in, the clock is injectable, so every decision is tested without a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt

from pipeline.gateway.api_keys import API_KEY_PREFIX, ApiKeyStore, parse_api_key
from pipeline.gateway.tenants import session_tenant
from topics.api_keys import SCOPES
from topics.messages import DEFAULT_TENANT

__all__ = [
    "OPEN_PRINCIPAL",
    "Authenticator",
    "CredentialRefused",
    "JwtVerifier",
    "Principal",
    "credential_from_headers",
]

log = logging.getLogger(__name__)

TOKEN_ISSUER = "speakerflow-gateway"
_KEY_SUBJECT = "key:"  # an API key's principal is `key:<key id>`, and so is a token issued for it
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}")  # topics.api_keys.CredentialTenant
_ASYMMETRIC = ("RS256", "ES256")
# Clock skew allowed between the token's issuer and this gateway.
_LEEWAY_S = 5


class CredentialRefused(Exception):
    """No credential, or one that proves nothing (401), or one that does not allow the request (403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def unauthenticated(message: str) -> CredentialRefused:
    return CredentialRefused(401, "unauthenticated", message)


def invalid(message: str) -> CredentialRefused:
    return CredentialRefused(401, "invalid_credential", message)


@dataclass(frozen=True)
class Principal:
    """A caller the gateway knows: its tenant, what it may do, and who it is (a key id or a token's subject)."""

    tenant: str
    scopes: frozenset[str]
    subject: str
    kind: str  # "open", "api_key", "jwt"
    expires_at: float | None = None  # Unix time; None: the credential does not expire
    # The API key behind it: the key itself, or a token this deployment issued for the key. Revoking
    # the key ends what it authenticated.
    key_id: str | None = None

    @property
    def open(self) -> bool:
        return self.kind == "open"

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def require(self, scope: str) -> None:
        if not self.allows(scope):
            raise CredentialRefused(403, "forbidden", f"this credential lacks the {scope!r} scope")

    def owns_session(self, session_id: str) -> bool:
        """Whether the session is this caller's tenant's (in open mode every session is everyone's)."""
        return self.open or session_tenant(session_id) == self.tenant

    def require_session(self, session_id: str) -> None:
        if not self.owns_session(session_id):
            raise CredentialRefused(403, "wrong_tenant", f"session {session_id} belongs to another tenant")

    @property
    def granted(self) -> list[str]:
        """The scopes it holds, `admin` expanded, in the order of SCOPES."""
        return [s for s in SCOPES if self.allows(s)]


OPEN_PRINCIPAL = Principal(DEFAULT_TENANT, frozenset(SCOPES), "anonymous", "open")


def credential_from_headers(headers: Mapping[str, str]) -> str | None:
    """The credential of ``Authorization: Bearer <credential>`` or ``X-API-Key``; None if neither is sent."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def _scopes(claim: object) -> frozenset[str]:
    if isinstance(claim, str):
        named: Iterable[object] = claim.split()
    elif isinstance(claim, list):
        named = claim
    else:
        named = ()
    return frozenset(s for s in named if isinstance(s, str) and s in SCOPES)


class JwtVerifier:
    """Checks a JWT's signature, expiry and claims: HS256 under the secret, RS256/ES256 under the JWKS's keys."""

    def __init__(
        self,
        secret: str,
        jwks: jwt.PyJWKSet | None = None,
        clock: Callable[[], float] = time.time,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        self.secret = secret
        self.jwks = jwks
        self.clock = clock
        self.issuer = issuer
        self.audience = audience

    @classmethod
    def from_file(
        cls,
        secret: str,
        jwks_file: Path | None,
        clock: Callable[[], float] = time.time,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> JwtVerifier:
        jwks = None
        if jwks_file is not None:
            try:
                jwks = jwt.PyJWKSet.from_json(jwks_file.read_text())
            except (OSError, jwt.PyJWKSetError, json.JSONDecodeError) as exc:
                raise ValueError(f"SPEAKERFLOW_AUTH_JWKS_FILE={jwks_file}: not a readable JWKS ({exc})") from exc
        return cls(secret, jwks, clock, issuer, audience)

    def _key(self, header: dict) -> object:
        algorithm = header.get("alg")
        if algorithm == "HS256":
            return self.secret
        if algorithm not in _ASYMMETRIC:
            raise invalid(f"tokens signed with {algorithm!r} are not taken (HS256, RS256, ES256)")
        if self.jwks is None:
            raise invalid(f"{algorithm} tokens need SPEAKERFLOW_AUTH_JWKS_FILE, which is not set")
        kid = header.get("kid")
        candidates = [k for k in self.jwks.keys if kid is None or k.key_id == kid]
        if kid is None and len(candidates) != 1:
            raise invalid("the token names no key (kid) and the JWKS holds more than one")
        # A key's own algorithm, when the JWKS states it, must be the token's: no confusing RSA for EC.
        candidates = [k for k in candidates if k.algorithm_name in (algorithm, None)]
        if not candidates:
            raise invalid(f"no {algorithm} key {kid!r} in the JWKS")
        return candidates[0].key

    def _check_origin(self, claims: dict) -> None:
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise invalid(f"the token's issuer is not {self.issuer!r}")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        if self.audience is not None and self.audience not in audiences:
            raise invalid(f"the token is not for the audience {self.audience!r}")

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            key = self._key(header)
            claims = jwt.decode(
                token,
                key,  # type: ignore[arg-type]
                algorithms=[header["alg"]],
                options={"require": ["exp", "sub"], "verify_aud": False},
                leeway=_LEEWAY_S,
                # PyJWT reads the time itself; a test's clock is honoured through the leeway check below.
            )
        except jwt.ExpiredSignatureError:
            raise invalid("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise invalid(f"the token is not valid: {exc}") from None
        if claims["exp"] + _LEEWAY_S < self.clock():
            raise invalid("the token has expired")
        own = header["alg"] == "HS256" and claims.get("iss") == TOKEN_ISSUER  # this deployment's browser tokens
        if not own:
            self._check_origin(claims)
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
            raise invalid("the token's tenant claim is missing or not a tenant name ([A-Za-z0-9._-], 1-64)")
        subject = str(claims["sub"])
        key_id = subject.removeprefix(_KEY_SUBJECT) if own else None
        return Principal(
            tenant,
            _scopes(claims.get("scope")),
            subject,
            "jwt",
            float(claims["exp"]),
            key_id if key_id != subject else None,
        )


class Authenticator:
    """The gateway's decisions on credentials; `keys` is its key store (None in open mode)."""

    def __init__(
        self,
        mode: str,
        keys: ApiKeyStore | None,
        jwt_secret: str | None,
        jwks_file: Path | None = None,
        token_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        jwt_issuer: str | None = None,
        jwt_audience: str | None = None,
    ) -> None:
        self.mode = mode
        self.keys = keys
        if jwt_secret is None and mode == "required":
            log.warning(
                "SPEAKERFLOW_AUTH_JWT_SECRET is not set: this gateway signs its tokens with a key of its own, "
                "which no other gateway accepts"
            )
        self.token_secret = jwt_secret or secrets.token_urlsafe(32)
        self.jwts = JwtVerifier.from_file(self.token_secret, jwks_file, clock, jwt_issuer, jwt_audience)
        self.token_ttl_s = token_ttl_s
        self.clock = clock

    @property
    def open(self) -> bool:
        return self.mode == "open"

    def authenticate(self, credential: str | None, from_query: bool = False) -> Principal:
        """The caller a credential proves; CredentialRefused (401) if it proves nothing."""
        if self.open:
            return OPEN_PRINCIPAL
        if not credential:
            raise unauthenticated(
                "send an API key or a token: Authorization: Bearer <credential>, X-API-Key, "
                'a first message {"action": "auth", "token": ...}, or ?access_token=<token from POST /v1/tokens>'
            )
        if credential.startswith(API_KEY_PREFIX):
            if from_query:
                raise invalid("an API key is never taken in a URL; exchange it for a token at POST /v1/tokens")
            return self._api_key(credential)
        principal = self.jwts.verify(credential)
        if principal.key_id is not None and (self.keys is None or not self.keys.is_live(principal.key_id)):
            raise invalid("the token was issued for an API key that has since been revoked")
        if from_query and (
            principal.expires_at is None or principal.expires_at - self.clock() > self.token_ttl_s + _LEEWAY_S
        ):
            raise invalid(f"a token in a URL must expire within {self.token_ttl_s:g}s (POST /v1/tokens issues one)")
        return principal

    def _api_key(self, credential: str) -> Principal:
        try:
            key = parse_api_key(credential)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        record = self.keys.verify(key) if self.keys is not None else None
        if record is None:
            raise invalid("unknown or revoked API key")
        return Principal(
            record.tenant, frozenset(record.scopes), f"{_KEY_SUBJECT}{record.key_id}", "api_key", key_id=record.key_id
        )

    def watch_revocation(self, principal: Principal) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set once the API key behind `principal` is revoked (never, for a caller without one)."""
        if principal.key_id is None or self.keys is None:
            return contextlib.nullcontext(asyncio.Event())
        return self.keys.watch_revocation(principal.key_id)

    def issue_token(self, principal: Principal, scopes: Iterable[str] | None = None) -> tuple[str, int, list[str]]:
        """A short-lived HS256 token for `principal` with `scopes` (default: all it holds); (token, expiresAt ms, scopes).

        Asking for a scope the caller lacks is refused (403), so a token never holds more than its issuer.
        """
        wanted = list(dict.fromkeys(scopes)) if scopes is not None else principal.granted
        unknown = [s for s in wanted if s not in SCOPES]
        if unknown:
            raise CredentialRefused(422, "unknown_scope", f"unknown scopes {unknown}; known: {', '.join(SCOPES)}")
        lacking = [s for s in wanted if not principal.allows(s)]
        if lacking:
            raise CredentialRefused(403, "forbidden", f"this credential lacks the scopes {lacking}")
        if not wanted:
            raise CredentialRefused(422, "unknown_scope", "a token needs at least one scope")
        now = self.clock()
        expires = int(now + self.token_ttl_s)
        if principal.expires_at is not None:  # never outlive the credential it was issued for
            expires = min(expires, int(principal.expires_at))
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": principal.subject,
            "tenant": principal.tenant,
            "scope": " ".join(wanted),
            "iat": int(now),
            "exp": expires,
        }
        return jwt.encode(claims, self.token_secret, algorithm="HS256"), expires * 1000, wanted
