"""Batch jobs' records: one job per key on the compacted `speakerflow.jobs`, the latest state of each.

Wire convention, as for speaker profiles: the Kafka key is ``<tenant>/<job id>`` (UTF-8); the
value the JSON of :class:`BatchJob` with the headers ``sf-type`` (``batch.job``) and ``sf-schema``;
a tombstone deletes the job. A job's clips run as sessions of their own (their audio on the audio
topic, nowhere else); their reports stay on the session-reports topic, and the job keeps only
which session each clip is and, once all are reported, which of their speakers are one voice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from topics.compacted_records import decode_record, record_headers
from topics.messages import DecodeError, Headers, SessionId
from topics.speaker_profiles import DEFAULT_TENANT, ProfileId, Tenant

JobStatus = Literal["running", "done", "failed"]
ClipStatus = Literal["queued", "running", "done", "failed"]


class JobClip(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256, description="the uploaded file's name")
    session_id: SessionId
    duration_ms: int = Field(ge=0)
    progress_ms: int = Field(default=0, ge=0, description="audio the session's labels have reached")
    status: ClipStatus = "queued"
    error: str | None = None


class JobVoice(BaseModel):
    """One voice of the job: its job-wide label and the session speakers it is."""

    model_config = ConfigDict(extra="forbid")

    label: str
    profile_id: str | None = None
    members: list[tuple[str, int]] = Field(description="(session id, speaker id) of each clip's speaker")


class BatchJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    TYPE: ClassVar[str] = "batch.job"
    type: str = Field(default="batch.job", pattern=r"^batch\.job$")
    tenant: Tenant = DEFAULT_TENANT
    job_id: ProfileId
    status: JobStatus = "running"
    error: str | None = None
    created_ms: int = Field(ge=0)
    updated_ms: int = Field(ge=0)
    clips: list[JobClip] = Field(min_length=1)
    voices: list[JobVoice] = Field(default=[], description="the clips' speakers linked, once every clip is reported")

    @property
    def key(self) -> bytes:
        return f"{self.tenant}/{self.job_id}".encode()

    @property
    def progress(self) -> float:
        """Of the job's audio, the share its labels have reached (0 to 1)."""
        total = sum(c.duration_ms for c in self.clips)
        done = sum(c.duration_ms if c.status == "done" else min(c.progress_ms, c.duration_ms) for c in self.clips)
        return done / total if total else 1.0


def encode_job(job: BatchJob) -> tuple[bytes, bytes, Headers]:
    return job.key, job.model_dump_json().encode(), record_headers(BatchJob)


def encode_job_tombstone(key: bytes) -> tuple[bytes, None, Headers]:
    return key, None, record_headers(BatchJob)


def decode_job(
    key: bytes | None, value: bytes | None, headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] = ()
) -> BatchJob | None:
    """The job of a record (None: a tombstone); raise DecodeError naming what is wrong."""
    if not key:
        raise DecodeError("job record has no key (tenant/job id)")
    job = decode_record(BatchJob, value, headers, "job")
    if job is None:
        return None
    if job.key != key:
        raise DecodeError(f"job {job.key!r} carried under key {key!r}")
    return job
