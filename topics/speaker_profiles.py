"""The speaker registry's records: one enrolled voice per profile, on the compacted `speakerflow.speaker-profiles`.

Wire convention, as for session messages but keyed by profile:

- The Kafka key is ``<tenant>/<profile id>`` (UTF-8), so compaction keeps the latest record of
  each profile and a profile's changes stay in order.
- The value is the JSON of :class:`SpeakerProfile`, with the headers ``sf-type``
  (``speaker.profile``) and ``sf-schema``.
- A tombstone (the key with no value) deletes the profile; compaction then forgets it.

A profile holds embeddings only, never audio: one per model it was enrolled with, keyed
by the embed stage's `model_name`, so a profile serves whichever chain a session runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from topics.compacted_records import decode_record, record_headers
from topics.messages import DEFAULT_TENANT, DecodeError, Headers, Tenant

ProfileId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class ProfileEmbedding(BaseModel):
    """A profile's voice as one model hears it: the mean of its speech windows' embeddings, L2-normalised."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vector: list[float] = Field(min_length=1, description="L2-normalised mean embedding")
    windows: int = Field(ge=1, description="speech windows averaged into it (the weight when clips are added)")


class SpeakerProfile(BaseModel):
    """An enrolled speaker: a name and an embedding per model, taken from the speech of its clips."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str] = "speaker.profile"
    type: str = Field(default="speaker.profile", pattern=r"^speaker\.profile$")
    tenant: Tenant = DEFAULT_TENANT
    profile_id: ProfileId
    name: str = Field(min_length=1, max_length=128)
    embeddings: dict[str, ProfileEmbedding] = Field(
        min_length=1, description="per embedding model (the embed stage's model_name): the profile's voice"
    )
    speech_s: float = Field(ge=0, description="seconds of speech the embeddings were taken from")
    clips: int = Field(ge=1, description="clips enrolled")
    created_ms: int = Field(ge=0, description="when the profile was created (Unix time, ms)")
    updated_ms: int = Field(ge=0, description="when it last changed (Unix time, ms)")

    @model_validator(mode="after")
    def _updated_after_created(self) -> SpeakerProfile:
        if self.updated_ms < self.created_ms:
            raise ValueError("updated_ms must not precede created_ms")
        return self

    @property
    def key(self) -> ProfileKey:
        return ProfileKey(self.tenant, self.profile_id)


class ProfileKey(NamedTuple):
    tenant: str
    profile_id: str

    def encode(self) -> bytes:
        return f"{self.tenant}/{self.profile_id}".encode()

    @classmethod
    def decode(cls, key: bytes | None) -> ProfileKey:
        if not key:
            raise DecodeError("profile record has no key (tenant/profile id)")
        tenant, slash, profile_id = key.decode(errors="replace").partition("/")
        if not slash or not tenant or not profile_id:
            raise DecodeError(f"profile key {key!r} is not <tenant>/<profile id>")
        return cls(tenant, profile_id)


def encode_profile(profile: SpeakerProfile) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) of the record that creates or replaces the profile."""
    return profile.key.encode(), profile.model_dump_json().encode(), record_headers(SpeakerProfile)


def encode_tombstone(key: ProfileKey) -> tuple[bytes, None, Headers]:
    """(key, None, headers): the record that deletes the profile."""
    return key.encode(), None, record_headers(SpeakerProfile)


def decode_profile(
    key: bytes | None, value: bytes | None, headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] = ()
) -> tuple[ProfileKey, SpeakerProfile | None]:
    """The record's profile key and profile (None: a tombstone); raise DecodeError naming what is wrong."""
    profile_key = ProfileKey.decode(key)
    profile = decode_record(SpeakerProfile, value, headers, "profile")
    if profile is None:
        return profile_key, None
    if profile.key != profile_key:
        raise DecodeError(f"profile {profile.key} carried under key {profile_key}")
    return profile_key, profile
