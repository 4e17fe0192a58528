"""The gateway's API keys: one record per key on the compacted `speakerflow.api-keys`.

A key is shown to its holder once, as ``sf_<key id>_<secret>``; the bus keeps only the SHA-256
of the secret, with the key's tenant and scopes. Every gateway reads the whole topic and
follows it, so a key created or revoked with ``speakerflow keys`` reaches all of them.

Wire convention, as for speaker profiles:

- The Kafka key is the key id (UTF-8), so compaction keeps one record per key.
- The value is the JSON of :class:`ApiKeyRecord`, with the headers ``sf-type`` (``api.key``)
  and ``sf-schema``.
- A tombstone (the key id with no value) revokes the key; compaction then forgets it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from topics.compacted_records import decode_record, record_headers
from topics.messages import DecodeError, Headers

# What a credential may do at the gateway. `admin` holds every other scope of its tenant.
Scope = Literal["ingest", "subscribe", "speakers", "jobs", "admin"]
SCOPES: tuple[str, ...] = ("ingest", "subscribe", "speakers", "jobs", "admin")

# A tenant a credential names: a session id's tenant prefix is `<tenant>:`, so no colon here.
CredentialTenant = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
KeyId = Annotated[str, Field(min_length=8, max_length=32, pattern=r"^[a-z0-9]+$")]


class ApiKeyRecord(BaseModel):
    """An API key as the gateways know it: whose it is, what it may do, and the hash of its secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str] = "api.key"
    type: str = Field(default="api.key", pattern=r"^api\.key$")
    key_id: KeyId
    tenant: CredentialTenant
    scopes: list[Scope] = Field(min_length=1)
    name: str | None = Field(default=None, max_length=128, description="what the operator called it")
    secret_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key's secret part")
    created_ms: int = Field(ge=0, description="when it was created (Unix time, ms)")


def encode_api_key(record: ApiKeyRecord) -> tuple[bytes, bytes, Headers]:
    return record.key_id.encode(), record.model_dump_json().encode(), record_headers(ApiKeyRecord)


def encode_api_key_revocation(key_id: str) -> tuple[bytes, None, Headers]:
    """The tombstone that revokes a key."""
    return key_id.encode(), None, record_headers(ApiKeyRecord)


def decode_api_key(
    key: bytes | None, value: bytes | None, headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] = ()
) -> ApiKeyRecord | None:
    """The record (None: a revocation); raise DecodeError naming what is wrong."""
    if not key:
        raise DecodeError("api key record has no key (key id)")
    record = decode_record(ApiKeyRecord, value, headers, "api key")
    if record is None:
        return None
    if record.key_id.encode() != key:
        raise DecodeError(f"api key {record.key_id} carried under key {key!r}")
    return record
