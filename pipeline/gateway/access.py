"""Credentials on the gateway's HTTP API: who a request is, refusals, and the auth endpoints.

- ``GET /v1/auth/mode``: ``{"mode": "open"|"required"}``, with no credential: what a client (the
  web console) asks first, to know whether to ask its user for a key.
- ``GET /v1/auth``: ``{"mode", "tenant", "scopes", "subject", "expiresAt"}`` of the caller; 401
  without a credential in required mode.
- ``POST /v1/tokens`` (body optional: ``{"scopes": [...]}``, a subset of the caller's): a short-lived
  HS256 token, ``{"token", "expiresAt" (ms), "tenant", "scopes"}``, for a browser's socket
  (``?access_token=``).

A refusal has the body of the API's other errors, ``{"detail": {"code", "message"}}``: 401
(``unauthenticated``, ``invalid_credential``; with ``"mode": "required"`` in the detail and a
``WWW-Authenticate: Bearer`` header) or 403 (``forbidden``: a scope lacking; ``wrong_tenant``: a
session of another tenant).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from pipeline.gateway.credentials import OPEN_PRINCIPAL, Authenticator, CredentialRefused, Principal
from pipeline.gateway.credentials import credential_from_headers as _credential

__all__ = ["auth_router", "authorize", "refusal"]


def refusal(exc: CredentialRefused, mode: str) -> HTTPException:
    detail: dict[str, str] = {"code": exc.code, "message": exc.message}
    headers = None
    if exc.status == 401:
        detail["mode"] = mode
        headers = {"WWW-Authenticate": "Bearer"}
    return HTTPException(exc.status, detail=detail, headers=headers)


def _authenticator(request: Request) -> Authenticator | None:
    return getattr(request.app.state, "auth", None)


def authenticate(request: Request) -> Principal:
    """The caller of `request`; HTTPException 401 if it proves nothing."""
    auth = _authenticator(request)
    if auth is None:
        raise HTTPException(503, detail={"code": "unavailable", "message": "the gateway is not serving"})
    try:
        return auth.authenticate(_credential(request.headers))
    except CredentialRefused as exc:
        raise refusal(exc, auth.mode) from None


def authorize(request: Request, scope: str) -> Principal:
    """The caller of `request` if it holds `scope`; HTTPException 401 or 403 otherwise."""
    principal = authenticate(request)
    try:
        principal.require(scope)
    except CredentialRefused as exc:
        raise refusal(exc, "required") from None
    return principal


def require_session(principal: Principal, session_id: str) -> None:
    """HTTPException 403 (wrong_tenant) if the session is another tenant's."""
    try:
        principal.require_session(session_id)
    except CredentialRefused as exc:
        raise refusal(exc, "required") from None


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class AuthMode(_Out):
    mode: str = Field(description="open: no credential needed (tenant default, every scope); required")


class Caller(_Out):
    mode: str
    tenant: str
    scopes: list[str] = Field(description="every scope the credential holds, admin expanded")
    subject: str = Field(description="key:<key id> for an API key, the token's sub for a JWT")
    expires_at: int | None = Field(default=None, alias="expiresAt", description="Unix ms; null: no expiry")


class TokenRequest(_Out):
    model_config = ConfigDict(extra="forbid")
    scopes: list[str] | None = Field(default=None, description="a subset of the caller's; null: all of them")


class IssuedToken(_Out):
    token: str
    expires_at: int = Field(alias="expiresAt", description="Unix ms")
    tenant: str
    scopes: list[str]


auth_router = APIRouter(tags=["auth"])


@auth_router.get("/v1/auth/mode", response_model=AuthMode)
async def auth_mode(request: Request) -> AuthMode:
    """Whether this gateway asks for credentials; needs none itself."""
    auth = _authenticator(request)
    return AuthMode(mode=auth.mode if auth is not None else "required")


@auth_router.get("/v1/auth", response_model=Caller)
async def caller(request: Request) -> Caller:
    """Who the credential sent is: its tenant and scopes (401 without one in required mode)."""
    principal = authenticate(request)
    mode = "open" if principal is OPEN_PRINCIPAL else "required"
    expires = int(principal.expires_at * 1000) if principal.expires_at is not None else None
    return Caller(
        mode=mode, tenant=principal.tenant, scopes=principal.granted, subject=principal.subject, expiresAt=expires
    )


@auth_router.post("/v1/tokens", response_model=IssuedToken)
async def issue_token(request: Request, body: TokenRequest | None = None) -> IssuedToken:
    """A short-lived token (SPEAKERFLOW_AUTH_TOKEN_TTL_S) for a browser's socket query string (?access_token=)."""
    principal = authenticate(request)
    auth = _authenticator(request)
    assert auth is not None
    try:
        token, expires_ms, scopes = auth.issue_token(principal, body.scopes if body is not None else None)
    except CredentialRefused as exc:
        raise refusal(exc, auth.mode) from None
    return IssuedToken(token=token, expiresAt=expires_ms, tenant=principal.tenant, scopes=scopes)
