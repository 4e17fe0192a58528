"""Batch jobs: several recordings diarized through the dataflow, their speakers linked across them.

Endpoints (OpenAPI at ``/docs``):

- ``POST /v1/jobs``: a multipart form of ``clips`` (WAV, FLAC, MP3 or OGG; any rate and channel
  count; at most SPEAKERFLOW_JOB_MAX_CLIPS of SPEAKERFLOW_JOB_MAX_CLIP_BYTES each): ``202`` and the job.
- ``GET /v1/jobs/{id}``: its status and progress, per clip and overall.
- ``GET /v1/jobs/{id}/events``: the same as server-sent events, one at each change, until it ends.
- ``GET /v1/jobs/{id}/results``: every clip's speakers and turns under job-wide labels: the same voice
  has the same label in every clip, its enrolled name where it has one.
- ``GET /v1/jobs/{id}/export?format=json|csv|text|rttm`` and ``DELETE /v1/jobs/{id}``.

Each clip runs as a session of its own through the same Kafka dataflow as live sessions, as fast
as the workers take it, `SPEAKERFLOW_JOB_CONCURRENCY` at once: its audio goes onto the audio topic
and nowhere else. Once every clip is reported, the linking step (`pipeline.stages.speaker_linking`)
links the reports' speakers. The job's state is the compacted ``speakerflow.jobs``, which every
gateway reads whole at start; the reports stay on the session-reports topic. A job whose gateway
stops while its clips run stays ``running``: it is not resumed.

Every endpoint needs the ``jobs`` scope; a job is its submitter's tenant's (its key
``<tenant>/<job id>``, its clips' sessions in the tenant's namespace, named after the tenant's
profiles), and another tenant's job is not found (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

import numpy as np
from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import load_profile
from pipeline.export import ReportNotFound, fetch_report
from pipeline.gateway.access import authorize
from pipeline.gateway.compacted_view import CompactedView
from pipeline.gateway.credentials import Principal
from pipeline.gateway.protocol import ProtocolError
from pipeline.gateway.tenants import qualified_session_id
from pipeline.gateway.uploads import decode_clip, read_upload, refuse
from pipeline.producers.chunking import session_records
from pipeline.rttm import RttmTurn, format_rttm
from pipeline.settings import Settings
from pipeline.stages.speaker_linking import LinkedVoice, SpeakerLinker
from topics import JOBS, SessionReport, SessionStart, SpeakerUpdate
from topics.jobs import BatchJob, JobClip, JobVoice, decode_job, encode_job, encode_job_tombstone
from topics.messages import SAMPLE_RATE, DecodeError

__all__ = ["EXPORT_FORMATS", "jobs_router"]

log = logging.getLogger(__name__)

PREFIX = "/v1/jobs"
EXPORT_FORMATS = ("json", "csv", "text", "rttm")
# A job's record is rewritten at most this often while its clips progress (every change reaches the event streams).
_PUBLISH_EVERY_S = 1.0


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ClipOut(_Out):
    name: str
    session_id: str = Field(alias="sessionId")
    status: str
    progress: float
    duration_ms: int = Field(alias="durationMs")
    error: str | None = None


class JobOut(_Out):
    id: str
    status: str
    progress: float = Field(description="share of the job's audio labelled so far, 0 to 1")
    clips: list[ClipOut]
    created_ms: int = Field(alias="createdMs")
    updated_ms: int = Field(alias="updatedMs")
    error: str | None = None

    @classmethod
    def of(cls, job: BatchJob) -> JobOut:
        return cls(
            id=job.job_id,
            status=job.status,
            progress=round(job.progress, 4),
            clips=[
                ClipOut(
                    name=c.name,
                    session_id=c.session_id,
                    status=c.status,
                    progress=1.0 if c.status == "done" else round(min(c.progress_ms / max(c.duration_ms, 1), 1.0), 4),
                    duration_ms=c.duration_ms,
                    error=c.error,
                )
                for c in job.clips
            ],
            created_ms=job.created_ms,
            updated_ms=job.updated_ms,
            error=job.error,
        )


class ResultSpeaker(_Out):
    id: int = Field(description="the speaker's id in its clip's session")
    label: str = Field(description="the job-wide label of its voice")
    speaker_name: str | None = Field(default=None, alias="speakerName")
    profile_id: str | None = Field(default=None, alias="profileId")
    total_time_ms: int = Field(alias="totalTimeMs")


class ResultTurn(_Out):
    label: str
    speaker_id: int = Field(alias="speakerId")
    start_ms: int = Field(alias="startMs")
    end_ms: int = Field(alias="endMs")


class ResultClip(_Out):
    name: str
    session_id: str = Field(alias="sessionId")
    duration_ms: int = Field(alias="durationMs")
    speakers: list[ResultSpeaker]
    turns: list[ResultTurn]


class JobResults(_Out):
    job: JobOut
    labels: list[str] = Field(description="every voice of the job, in the order they first speak")
    clips: list[ResultClip]


def results_of(job: BatchJob, reports: dict[str, SessionReport]) -> JobResults:
    label_of = {tuple(m): v.label for v in job.voices for m in v.members}
    clips = []
    for clip in job.clips:
        report = reports[clip.session_id]
        labels = {s.id: label_of.get((clip.session_id, s.id), f"{clip.name}:{s.id}") for s in report.speakers}
        clips.append(
            ResultClip(
                name=clip.name,
                session_id=clip.session_id,
                duration_ms=report.duration_ms,
                speakers=[
                    ResultSpeaker(
                        id=s.id,
                        label=labels[s.id],
                        speaker_name=s.speaker_name,
                        profile_id=s.profile_id,
                        total_time_ms=s.total_time_ms,
                    )
                    for s in report.speakers
                ],
                turns=[
                    ResultTurn(
                        label=labels.get(t.speaker, str(t.speaker)),
                        speaker_id=t.speaker,
                        start_ms=t.start_ms,
                        end_ms=t.end_ms,
                    )
                    for t in report.turns
                ],
            )
        )
    return JobResults(job=JobOut.of(job), labels=[v.label for v in job.voices], clips=clips)


def export(results: JobResults, fmt: str) -> str:
    if fmt == "json":
        return results.model_dump_json(indent=2) + "\n"
    if fmt == "rttm":
        # One RTTM of all the clips: each clip is its own uri; labels without spaces, as the format splits on them.
        return "".join(
            format_rttm(
                clip.name.rsplit(".", 1)[0],
                [RttmTurn(t.label.replace(" ", "_"), t.start_ms / 1000, t.end_ms / 1000) for t in clip.turns],
            )
            for clip in results.clips
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["clip", "label", "start_s", "end_s", "duration_s"])
        for clip in results.clips:
            for t in clip.turns:
                start, end = t.start_ms / 1000, t.end_ms / 1000
                writer.writerow([clip.name, t.label, f"{start:.3f}", f"{end:.3f}", f"{end - start:.3f}"])
        return out.getvalue()
    if fmt == "text":
        lines = [f"job {results.job.id}: {len(results.clips)} clips, {len(results.labels)} voices"]
        for clip in results.clips:
            lines.append(f"{clip.name} ({clip.duration_ms / 1000:.1f} s)")
            lines += [f"  {s.label}: {s.total_time_ms / 1000:.1f} s" for s in clip.speakers]
            lines += [f"  {t.start_ms / 1000:8.2f} - {t.end_ms / 1000:8.2f}  {t.label}" for t in clip.turns]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(EXPORT_FORMATS)}")


class JobRunner:
    """The jobs a gateway holds (a view of the job topic) and runs (its own, streamed and followed)."""

    def __init__(self, settings: Settings, gateway) -> None:
        self.settings = settings
        self.gateway = gateway  # pipeline.gateway.app.Gateway: the producer, the audio topic and the fan-out
        self.view = CompactedView(settings.kafka, JOBS, settings.kafka_security, on_change=self._changed)
        self.linker = SpeakerLinker(load_profile(settings.profile).linking)
        self.reports: dict[str, dict[str, SessionReport]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # The jobs this gateway runs, as they are now: the topic echoes their earlier states back later.
        self.running: dict[str, BatchJob] = {}
        self.watchers: dict[bytes, set[asyncio.Queue[BatchJob | None]]] = {}

    def get(self, tenant: str, job_id: str) -> BatchJob | None:
        """The tenant's job; another tenant's is None, as one that does not exist."""
        running = self.running.get(job_id)
        if running is not None:
            return running if running.tenant == tenant else None
        key = f"{tenant}/{job_id}".encode()
        value = self.view.records.get(key)
        try:
            return decode_job(key, value) if value is not None else None
        except DecodeError:
            return None

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.view.stop()

    async def submit(self, principal: Principal, clips: list[tuple[str, np.ndarray]]) -> BatchJob:
        job_id = uuid.uuid4().hex
        now = _now_ms()

        def session_id(index: int) -> str:
            plain = f"job-{job_id}-{index}"
            return plain if principal.open else qualified_session_id(principal.tenant, plain)

        job = BatchJob(
            tenant=principal.tenant,
            job_id=job_id,
            created_ms=now,
            updated_ms=now,
            clips=[
                JobClip(name=name, session_id=session_id(i), duration_ms=len(pcm) * 1000 // SAMPLE_RATE)
                for i, (name, pcm) in enumerate(clips)
            ],
        )
        self.running[job_id] = job
        await self._store(job)
        self.reports[job_id] = {}
        self.tasks[job_id] = asyncio.create_task(self._run(job, [pcm for _, pcm in clips]), name=f"job-{job_id}")
        return job

    async def delete(self, job: BatchJob) -> None:
        task = self.tasks.pop(job.job_id, None)
        self.running.pop(job.job_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        key, value, headers = encode_job_tombstone(job.key)
        await self._send(key, value, headers)
        self.view.put(key, None)
        self.reports.pop(job.job_id, None)

    async def results(self, job: BatchJob) -> JobResults:
        reports = self.reports.get(job.job_id, {})
        for clip in job.clips:
            if clip.session_id not in reports:  # a job of another gateway, or of this one before a restart
                reports[clip.session_id] = await fetch_report(
                    self.settings.kafka, clip.session_id, self.settings.kafka_security
                )
        return results_of(job, reports)

    async def events(self, tenant: str, job_id: str) -> AsyncIterator[BatchJob]:
        """The job now, then at each change, until it ends (or is deleted)."""
        key = f"{tenant}/{job_id}".encode()
        queue: asyncio.Queue[BatchJob | None] = asyncio.Queue()
        self.watchers.setdefault(key, set()).add(queue)
        try:
            job = self.get(tenant, job_id)
            while job is not None:
                yield job
                if job.status != "running":
                    return
                job = await queue.get()
                while not queue.empty():  # a slow reader gets the newest state, not every one
                    job = queue.get_nowait()
        finally:
            self.watchers[key].discard(queue)
            if not self.watchers[key]:
                del self.watchers[key]

    def _changed(self, key: bytes, value: bytes | None) -> None:
        """A record of the job topic: watchers of a job another gateway runs (or ran) see it."""
        if not self.watchers.get(key) or key.decode(errors="replace").partition("/")[2] in self.running:
            return
        try:
            job = decode_job(key, value)
        except DecodeError:
            return
        self._notify(key, job)

    def _notify(self, key: bytes, job: BatchJob | None) -> None:
        for queue in self.watchers.get(key, ()):
            queue.put_nowait(job.model_copy(deep=True) if job is not None else None)

    async def _run(self, job: BatchJob, pcms: list[np.ndarray]) -> None:
        gate = asyncio.Semaphore(max(1, self.settings.job_concurrency))
        last_publish = [0.0]

        async def changed(force: bool = False) -> None:
            job.updated_ms = max(_now_ms(), job.created_ms)
            self._notify(job.key, job)
            if force or time.monotonic() - last_publish[0] >= _PUBLISH_EVERY_S:
                last_publish[0] = time.monotonic()
                await self._store(job)

        async def one(index: int) -> None:
            async with gate:
                await self._session(job, index, pcms[index], changed)

        try:
            await asyncio.gather(*(one(i) for i in range(len(pcms))))
            reports = [self.reports[job.job_id][c.session_id] for c in job.clips]
            voices: list[LinkedVoice] = self.linker.link(reports)
            job.voices = [JobVoice(label=v.label, profile_id=v.profile_id, members=list(v.members)) for v in voices]
            job.status = "done"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job that cannot finish says why rather than running forever
            log.exception("job %s failed", job.job_id)
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        await changed(force=True)
        self.running.pop(job.job_id, None)
        log.info("job %s %s: %d clips, %d voices", job.job_id, job.status, len(job.clips), len(job.voices))

    async def _session(self, job: BatchJob, index: int, pcm: np.ndarray, changed) -> None:
        clip = job.clips[index]
        start = SessionStart(session_id=clip.session_id, producer=self.gateway.id, tenant=job.tenant)
        subscription = self.gateway.fanout.subscribe(clip.session_id)
        try:
            clip.status = "running"
            await self.gateway.publish(start)
            await changed(force=True)
            for record in session_records(pcm, start):
                await self.gateway.publish(record)
            deadline = time.monotonic() + self.settings.report_timeout_s
            while True:
                message = await asyncio.wait_for(subscription.get(), max(0.1, deadline - time.monotonic()))
                if isinstance(message, SpeakerUpdate):
                    clip.progress_ms = max(clip.progress_ms, message.position_ms)
                    await changed()
                elif isinstance(message, SessionReport):
                    self.reports[job.job_id][clip.session_id] = message
                    clip.status, clip.progress_ms = "done", clip.duration_ms
                    await changed(force=True)
                    return
        except (ProtocolError, TimeoutError) as exc:
            clip.status, clip.error = "failed", str(exc) or "no report in time"
            raise RuntimeError(f"clip {clip.name}: {clip.error}") from exc
        finally:
            self.gateway.fanout.unsubscribe(subscription)

    async def _store(self, job: BatchJob) -> None:
        key, value, headers = encode_job(job)
        await self._send(key, value, headers)
        self.view.put(key, value)

    async def _send(self, key: bytes, value: bytes | None, headers) -> None:
        try:
            await self.gateway.producer.send_and_wait(JOBS.name, key=key, value=value, headers=headers)
        except KafkaError as exc:
            raise refuse(503, "bus_unavailable", f"could not write the job: {exc}") from exc


def _runner(request: Request) -> JobRunner:
    runner: JobRunner | None = getattr(request.app.state, "jobs", None)
    if runner is None:
        raise refuse(503, "unavailable", "the gateway is not serving")
    return runner


def _existing(runner: JobRunner, tenant: str, job_id: str) -> BatchJob:
    job = runner.get(tenant, job_id)
    if job is None:
        raise refuse(404, "unknown_job", f"no job {job_id!r}")
    return job


def _now_ms() -> int:
    return int(time.time() * 1000)


_CLIPS_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "clips": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "recordings: WAV, FLAC, MP3 or OGG, any rate and channels",
                        }
                    },
                    "required": ["clips"],
                }
            }
        },
    }
}


def jobs_router(settings: Settings) -> APIRouter:
    """The batch-job endpoints; their lifespan (inside the gateway's) holds the job view and the running jobs."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = JobRunner(settings, app.state.gateway)
        await runner.view.start()
        app.state.jobs = runner
        try:
            yield
        finally:
            app.state.jobs = None
            await runner.stop()

    router = APIRouter(prefix=PREFIX, tags=["jobs"], lifespan=lifespan)

    @router.post("", status_code=202, response_model=JobOut, openapi_extra=_CLIPS_SCHEMA)
    async def submit(request: Request) -> JobOut:
        """Diarize several recordings as one job, their speakers linked across them (multipart: clips)."""
        principal = authorize(request, "jobs")
        runner = _runner(request)
        upload = await read_upload(request, settings.job_max_clips, settings.job_max_clip_bytes)
        clips = [(name, await asyncio.to_thread(decode_clip, data, name)) for name, data in upload.clips]
        try:
            runner.gateway.quotas.take_audio(
                principal.tenant, sum(len(pcm) for _, pcm in clips) / SAMPLE_RATE, borrow=True
            )
        except ProtocolError as exc:
            raise refuse(429, exc.code.value, exc.message) from None
        job = await runner.submit(principal, clips)
        log.info("job %s submitted: %d clips", job.job_id, len(job.clips))
        return JobOut.of(job)

    @router.get("/{job_id}", response_model=JobOut)
    async def status(job_id: str, request: Request) -> JobOut:
        tenant = authorize(request, "jobs").tenant
        return JobOut.of(_existing(_runner(request), tenant, job_id))

    @router.get("/{job_id}/events", response_class=StreamingResponse)
    async def events(job_id: str, request: Request) -> StreamingResponse:
        """Server-sent events: the job's status and progress (as GET /v1/jobs/{id}) at each change, until it ends."""
        tenant = authorize(request, "jobs").tenant
        runner = _runner(request)
        _existing(runner, tenant, job_id)

        async def stream() -> AsyncIterator[bytes]:
            async for job in runner.events(tenant, job_id):
                yield f"event: job\ndata: {json.dumps(JobOut.of(job).model_dump(mode='json'))}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream")

    @router.get("/{job_id}/results", response_model=JobResults)
    async def results(job_id: str, request: Request) -> JobResults:
        """Every clip's speakers and turns under job-wide labels (409 while the job runs)."""
        tenant = authorize(request, "jobs").tenant
        runner = _runner(request)
        job = _finished(_existing(runner, tenant, job_id))
        try:
            return await runner.results(job)
        except ReportNotFound as exc:
            raise refuse(410, "report_gone", str(exc)) from None

    @router.get("/{job_id}/export", response_class=PlainTextResponse)
    async def export_job(job_id: str, request: Request, format: str = "json") -> PlainTextResponse:  # noqa: A002
        """The results as json, csv, text or rttm (every clip, job-wide labels)."""
        if format not in EXPORT_FORMATS:
            raise refuse(422, "unknown_format", f"format must be one of {', '.join(EXPORT_FORMATS)}")
        tenant = authorize(request, "jobs").tenant
        runner = _runner(request)
        job = _finished(_existing(runner, tenant, job_id))
        try:
            text = export(await runner.results(job), format)
        except ReportNotFound as exc:
            raise refuse(410, "report_gone", str(exc)) from None
        media = {"json": "application/json", "csv": "text/csv"}.get(format, "text/plain")
        return PlainTextResponse(text, media_type=media)

    @router.delete("/{job_id}", status_code=204)
    async def delete(job_id: str, request: Request) -> Response:
        """Delete a job (a running one is stopped); its sessions' reports stay on the report topic."""
        tenant = authorize(request, "jobs").tenant
        runner = _runner(request)
        await runner.delete(_existing(runner, tenant, job_id))
        return Response(status_code=204)

    return router


def _finished(job: BatchJob) -> BatchJob:
    if job.status == "running":
        raise refuse(409, "job_running", f"job {job.job_id} is still running ({100 * job.progress:.0f} %)")
    if job.status == "failed":
        raise refuse(409, "job_failed", f"job {job.job_id} failed: {job.error}")
    return job
