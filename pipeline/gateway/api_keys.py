"""API keys: how one looks, how its secret is kept, how a gateway checks one, and how an operator manages them.

A key is ``sf_<key id>_<secret>``: the id (12 hex characters) names the record on
``speakerflow.api-keys`` (:mod:`topics.api_keys`), the secret (32 random bytes, URL-safe
base64) proves the holder has it. The bus keeps the SHA-256 of the secret, never the secret:
a slow password hash (bcrypt, argon2) protects low-entropy passwords from guessing, but 256
random bits cannot be guessed from their hash, so one SHA-256 per request is all the
verification costs. The comparison is constant-time.

Every gateway reads the topic whole at start and follows it (:class:`ApiKeyStore`, a
`CompactedView`), so a key created or revoked on one reaches all of them within the view's
poll (about a second). A revoked key's open sockets, and those of the tokens issued for it, are
then closed (`watch_revocation`), and those tokens are refused from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from pipeline.bus import PLAINTEXT, ensure_topics, new_producer
from pipeline.gateway.compacted_view import CompactedView
from pipeline.settings import KafkaSecurity, Settings
from topics import API_KEYS
from topics.api_keys import SCOPES, ApiKeyRecord, decode_api_key, encode_api_key, encode_api_key_revocation
from topics.messages import DecodeError

__all__ = [
    "API_KEY_PREFIX",
    "ApiKey",
    "ApiKeyStore",
    "create_key",
    "keys_command",
    "list_keys",
    "new_api_key",
    "parse_api_key",
    "parse_scopes",
    "revoke_key",
    "secret_sha256",
]

API_KEY_PREFIX = "sf_"
_KEY_ID_BYTES = 6  # 12 hex characters: ids need only be unique, the secret carries the strength
_SECRET_BYTES = 32
_KEY_ID = re.compile(r"[a-z0-9]{8,32}")  # topics.api_keys.KeyId


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    secret: str

    def __str__(self) -> str:
        return f"{API_KEY_PREFIX}{self.key_id}_{self.secret}"


def new_api_key() -> ApiKey:
    return ApiKey(secrets.token_hex(_KEY_ID_BYTES), secrets.token_urlsafe(_SECRET_BYTES))


def parse_api_key(text: str) -> ApiKey:
    """The key's id and secret; ValueError if `text` is not ``sf_<id>_<secret>``."""
    if not text.startswith(API_KEY_PREFIX):
        raise ValueError(f"an API key starts with {API_KEY_PREFIX!r}")
    key_id, sep, secret = text[len(API_KEY_PREFIX) :].partition("_")
    # The secret is URL-safe base64, which may itself hold '_': only the first one separates.
    if not sep or not secret or not _KEY_ID.fullmatch(key_id):
        raise ValueError("an API key is sf_<key id>_<secret>")
    return ApiKey(key_id, secret)


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(text: str) -> list[str]:
    """`ingest,subscribe` -> the scopes, each known; ValueError naming an unknown one."""
    scopes = [s.strip() for s in text.replace(" ", ",").split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"unknown or no scopes {unknown or text!r}; known: {', '.join(SCOPES)}")
    return list(dict.fromkeys(scopes))


class ApiKeyStore(CompactedView):
    """A gateway's copy of the key topic; `verify` finds the record a presented key proves."""

    def __init__(self, bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> None:
        super().__init__(bootstrap, API_KEYS, security, on_change=self._on_change)
        self._watchers: dict[str, set[asyncio.Event]] = {}

    def is_live(self, key_id: str) -> bool:
        """Whether the key exists and is not revoked."""
        return self._record(key_id) is not None

    @contextlib.contextmanager
    def watch_revocation(self, key_id: str) -> Iterator[asyncio.Event]:
        """An event set once the key is revoked, while the block runs (at once if it is gone already)."""
        revoked = asyncio.Event()
        if not self.is_live(key_id):
            revoked.set()
        watchers = self._watchers.setdefault(key_id, set())
        watchers.add(revoked)
        try:
            yield revoked
        finally:
            watchers.discard(revoked)
            if not watchers:
                del self._watchers[key_id]

    def _on_change(self, key: bytes, value: bytes | None) -> None:
        key_id = key.decode(errors="replace")
        if key_id in self._watchers and not self.is_live(key_id):
            for revoked in self._watchers[key_id]:
                revoked.set()

    def _record(self, key_id: str) -> ApiKeyRecord | None:
        value = self.records.get(key_id.encode())
        if value is None:
            return None
        try:
            return decode_api_key(key_id.encode(), value)
        except DecodeError:
            return None

    def verify(self, key: ApiKey) -> ApiKeyRecord | None:
        """The key's record if it exists (not revoked) and the secret matches; else None."""
        record = self._record(key.key_id)
        if record is None or not hmac.compare_digest(secret_sha256(key.secret), record.secret_sha256):
            return None
        return record


# ---- operator controls (speakerflow keys create|list|revoke) --------------------------------


async def _send(producer: AIOKafkaProducer, key: bytes, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
    await producer.send_and_wait(API_KEYS.name, key=key, value=value, headers=headers)


async def create_key(
    bootstrap: str, tenant: str, scopes: list[str], name: str | None = None, security: KafkaSecurity = PLAINTEXT
) -> tuple[ApiKey, ApiKeyRecord]:
    """A new key for `tenant` with `scopes`, its record on the bus; the key itself is returned, never stored."""
    key = new_api_key()
    record = ApiKeyRecord(
        key_id=key.key_id,
        tenant=tenant,
        scopes=parse_scopes(",".join(scopes)),  # type: ignore[arg-type]
        name=name,
        secret_sha256=secret_sha256(key.secret),
        created_ms=int(time.time() * 1000),
    )
    await ensure_topics(bootstrap, [API_KEYS], security=security)
    producer = new_producer(bootstrap, security)
    await producer.start()
    try:
        await _send(producer, *encode_api_key(record))
    finally:
        await producer.stop()
    return key, record


async def list_keys(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> list[ApiKeyRecord]:
    """Every key not revoked, oldest first (records only: the bus holds no secret to show)."""
    await ensure_topics(bootstrap, [API_KEYS], security=security)
    view = ApiKeyStore(bootstrap, security)
    await view.start()
    await view.stop()
    records = []
    for key, value in view.records.items():
        try:
            record = decode_api_key(key, value)
        except DecodeError:
            continue
        if record is not None:
            records.append(record)
    return sorted(records, key=lambda r: (r.created_ms, r.key_id))


async def revoke_key(bootstrap: str, key_id: str, security: KafkaSecurity = PLAINTEXT) -> ApiKeyRecord:
    """Revoke a key (a tombstone); KeyError if there is no such key."""
    known = {r.key_id: r for r in await list_keys(bootstrap, security)}
    if key_id not in known:
        raise KeyError(key_id)
    producer = new_producer(bootstrap, security)
    await producer.start()
    try:
        await _send(producer, *encode_api_key_revocation(key_id))
    finally:
        await producer.stop()
    return known[key_id]


def keys_command(action: str, settings: Settings, **options: object) -> int:
    """`speakerflow keys create|list|revoke`: what the command prints, and its exit status."""
    from aiokafka.errors import KafkaConnectionError

    bootstrap, security = settings.kafka, settings.kafka_security
    try:
        if action == "create":
            try:
                scopes = parse_scopes(str(options["scopes"]))
                key, record = asyncio.run(
                    create_key(bootstrap, str(options["tenant"]), scopes, options.get("name"), security)  # type: ignore[arg-type]
                )
            except (ValueError, ValidationError) as exc:
                raise SystemExit(f"speakerflow keys create: {exc}") from None
            print(key)
            print(
                f"key {record.key_id} of tenant {record.tenant}, scopes {','.join(record.scopes)}: "
                "shown once, keep it now (only its hash is stored)",
                file=sys.stderr,
            )
        elif action == "list":
            records = asyncio.run(list_keys(bootstrap, security))
            for r in records:
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_ms / 1000))
                print(f"{r.key_id}  {r.tenant:<16} {','.join(r.scopes):<32} {created} UTC  {r.name or ''}".rstrip())
            if not records:
                print("no API keys")
        else:
            try:
                record = asyncio.run(revoke_key(bootstrap, str(options["key_id"]), security))
            except KeyError:
                raise SystemExit(f"speakerflow keys revoke: no key {options['key_id']!r} (see keys list)") from None
            print(f"revoked {record.key_id} of tenant {record.tenant}")
    except KafkaConnectionError:
        raise SystemExit(f"speakerflow keys: cannot reach Kafka at {bootstrap} (SPEAKERFLOW_KAFKA)") from None
    return 0
