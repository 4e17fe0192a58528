"""The enrolment API: known speakers, enrolled from clips of their voice, kept in the registry on the bus.

Endpoints (OpenAPI at ``/docs``):

- ``POST /v1/speakers``: a multipart form with ``name`` and one or more ``clips`` (WAV, FLAC,
  MP3 or OGG; any rate, any channel count): a new profile, ``201`` with it.
- ``GET /v1/speakers``, ``GET /v1/speakers/{id}``: the tenant's profiles, or one.
- ``POST /v1/speakers/{id}/clips``: more clips for a profile (multipart ``clips``).
- ``DELETE /v1/speakers/{id}``: ``204``; later sessions no longer name it.

Every clip is decoded, mixed to mono and resampled to 16 kHz in memory, and embedded by both
chains' models from its speech only (`pipeline.stages.speaker_enrolment`), in a thread so the
gateway's sockets keep flowing. A request is refused whole, and nothing stored, when a clip is
too large (413), not audio in a known format (415), or holds too little speech or more than one
voice (422); the error's ``detail`` carries a ``code`` and a ``message``.

The profile goes to the compacted ``speakerflow.speaker-profiles`` (a tombstone deletes it); only
embeddings are stored, never audio. Reads come from this gateway's own view of that topic, read
from its beginning at start and followed from then on, so every gateway serves every profile.
Every endpoint needs the ``speakers`` scope and sees only the caller's tenant's profiles: another
tenant's profile is not found (404), and a live session is named after its own tenant's only
(the tenant travels in its `SessionStart`). In open mode every profile is the ``default`` tenant's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from pipeline.bus import PLAINTEXT
from pipeline.gateway.access import authorize
from pipeline.gateway.compacted_view import CompactedView
from pipeline.gateway.uploads import Upload, decode_clip, read_upload, refuse
from pipeline.settings import KafkaSecurity, Settings
from pipeline.stages.speaker_enrolment import ClipEmbeddings, EnrolmentRefused, SpeakerEnroller, combine
from pipeline.stages.speaker_naming import ProfileRegistry
from topics import SPEAKER_PROFILES
from topics.speaker_profiles import ProfileKey, SpeakerProfile, encode_profile, encode_tombstone

__all__ = ["ProfileView", "SpeakerOut", "speakers_router"]

log = logging.getLogger(__name__)

PREFIX = "/v1/speakers"
# Longer clips are refused as too large whatever their bytes: enrolment needs seconds, not an hour.
MAX_ENROL_CLIP_S = 300.0
_CLIPS_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "the speaker's name (new profiles only)"},
                        "clips": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "audio of this one speaker: WAV, FLAC, MP3 or OGG, any rate and channels",
                        },
                    },
                    "required": ["clips"],
                }
            }
        },
    }
}


class SpeakerOut(BaseModel):
    """A profile as the API shows it: no embeddings, the models it was enrolled with."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    id: str
    name: str
    models: list[str] = Field(description="embedding models the profile serves (the chains it names speakers in)")
    speech_s: float = Field(alias="speechS")
    clips: int
    created_ms: int = Field(alias="createdMs")
    updated_ms: int = Field(alias="updatedMs")

    @classmethod
    def of(cls, profile: SpeakerProfile) -> SpeakerOut:
        return cls(
            id=profile.profile_id,
            name=profile.name,
            models=sorted(profile.embeddings),
            speech_s=round(profile.speech_s, 2),
            clips=profile.clips,
            created_ms=profile.created_ms,
            updated_ms=profile.updated_ms,
        )


class SpeakerList(BaseModel):
    speakers: list[SpeakerOut]


class ProfileView(CompactedView):
    """This gateway's copy of the registry (`CompactedView`), read as profiles."""

    def __init__(self, bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> None:
        super().__init__(bootstrap, SPEAKER_PROFILES, security)
        self.registry = ProfileRegistry(self.records)

    def get(self, tenant: str, profile_id: str) -> SpeakerProfile | None:
        return next((p for p in self.registry.profiles(tenant) if p.profile_id == profile_id), None)


class SpeakerDirectory:
    """What the endpoints share: the view, the producer, the models."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer, view: ProfileView) -> None:
        self.settings = settings
        self.producer = producer
        self.view = view
        self.enroller = SpeakerEnroller()

    async def embed(self, upload: Upload) -> list[ClipEmbeddings]:
        """Every clip decoded and embedded, or the refusal of the first one that fails (nothing kept)."""
        embedded = []
        for filename, data in upload.clips:
            pcm = await asyncio.to_thread(decode_clip, data, filename, MAX_ENROL_CLIP_S)
            try:
                embedded.append(await asyncio.to_thread(self.enroller.embed, pcm))
            except EnrolmentRefused as exc:
                raise refuse(422, exc.reason.value, f"{filename}: {exc.message}") from None
        return embedded

    async def store(self, profile: SpeakerProfile) -> None:
        key, value, headers = encode_profile(profile)
        await self._send(key, value, headers)
        self.view.put(key, value)

    async def delete(self, key: ProfileKey) -> None:
        raw_key, value, headers = encode_tombstone(key)
        await self._send(raw_key, value, headers)
        self.view.put(raw_key, None)

    async def _send(self, key: bytes, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        try:
            await self.producer.send_and_wait(SPEAKER_PROFILES.name, key=key, value=value, headers=headers)
        except KafkaError as exc:
            raise refuse(503, "bus_unavailable", f"could not write the profile: {exc}") from exc


def _directory(request: Request) -> SpeakerDirectory:
    directory: SpeakerDirectory | None = getattr(request.app.state, "speakers", None)
    if directory is None:
        raise refuse(503, "unavailable", "the gateway is not serving")
    return directory


def _now_ms() -> int:
    return int(time.time() * 1000)


def speakers_router(settings: Settings) -> APIRouter:
    """The enrolment endpoints; their lifespan (inside the gateway's, which owns the producer) runs the view."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        view = ProfileView(settings.kafka, settings.kafka_security)
        await view.start()
        app.state.speakers = SpeakerDirectory(settings, app.state.gateway.producer, view)
        try:
            yield
        finally:
            app.state.speakers = None
            await view.stop()

    router = APIRouter(prefix=PREFIX, tags=["speakers"], lifespan=lifespan)

    @router.post("", status_code=201, response_model=SpeakerOut, openapi_extra=_CLIPS_SCHEMA)
    async def enrol(request: Request) -> SpeakerOut:
        """Enrol a new speaker from one or more clips of their voice (multipart: name, clips)."""
        tenant = authorize(request, "speakers").tenant
        directory = _directory(request)
        upload = await read_upload(request, settings.enrol_max_clips, settings.enrol_max_clip_bytes)
        if not upload.name or len(upload.name) > 128:
            raise refuse(422, "bad_name", "give the speaker a name of 1 to 128 characters (field name)")
        clips = await directory.embed(upload)
        now = _now_ms()
        profile = SpeakerProfile(
            tenant=tenant,
            profile_id=uuid.uuid4().hex,
            name=upload.name,
            embeddings=combine(clips),
            speech_s=sum(c.speech_s for c in clips),
            clips=len(clips),
            created_ms=now,
            updated_ms=now,
        )
        await directory.store(profile)
        log.info("enrolled speaker %s (%s) from %d clip(s)", profile.profile_id, profile.name, profile.clips)
        return SpeakerOut.of(profile)

    @router.get("", response_model=SpeakerList)
    async def list_speakers(request: Request) -> SpeakerList:
        """Every enrolled speaker of the tenant."""
        tenant = authorize(request, "speakers").tenant
        profiles = _directory(request).view.registry.profiles(tenant)
        return SpeakerList(speakers=[SpeakerOut.of(p) for p in sorted(profiles, key=lambda p: p.created_ms)])

    @router.get("/{profile_id}", response_model=SpeakerOut)
    async def get_speaker(profile_id: str, request: Request) -> SpeakerOut:
        tenant = authorize(request, "speakers").tenant
        return SpeakerOut.of(_existing(_directory(request), tenant, profile_id))

    @router.post("/{profile_id}/clips", response_model=SpeakerOut, openapi_extra=_CLIPS_SCHEMA)
    async def add_clips(profile_id: str, request: Request) -> SpeakerOut:
        """Add clips to a speaker's profile (multipart: clips)."""
        tenant = authorize(request, "speakers").tenant
        directory = _directory(request)
        profile = _existing(directory, tenant, profile_id)
        upload = await read_upload(request, settings.enrol_max_clips, settings.enrol_max_clip_bytes)
        clips = await directory.embed(upload)
        updated = profile.model_copy(
            update={
                "embeddings": combine(clips, before=profile.embeddings),
                "speech_s": profile.speech_s + sum(c.speech_s for c in clips),
                "clips": profile.clips + len(clips),
                "updated_ms": max(_now_ms(), profile.created_ms),
            }
        )
        await directory.store(SpeakerProfile.model_validate(updated.model_dump()))
        return SpeakerOut.of(updated)

    @router.delete("/{profile_id}", status_code=204)
    async def delete_speaker(profile_id: str, request: Request) -> Response:
        """Delete a speaker: a tombstone on the registry; later matches no longer name them."""
        tenant = authorize(request, "speakers").tenant
        directory = _directory(request)
        profile = _existing(directory, tenant, profile_id)
        await directory.delete(profile.key)
        log.info("deleted speaker %s (%s)", profile.profile_id, profile.name)
        return Response(status_code=204)

    return router


def _existing(directory: SpeakerDirectory, tenant: str, profile_id: str) -> SpeakerProfile:
    """The tenant's profile; another tenant's is as unknown as one that does not exist (404)."""
    profile = directory.view.get(tenant, profile_id)
    if profile is None:
        raise refuse(404, "unknown_speaker", f"no speaker {profile_id!r}")
    return profile
