"""Read-only HTTP on sessions: which are running, and a finished session's report in an export format.

- ``GET /v1/sessions``: the sessions whose results this gateway's fan-out has seen lately and
  that have no report yet (:mod:`pipeline.gateway.running_sessions`), whichever gateway feeds them.
- ``GET /v1/sessions/{session_id}/report?format=rttm|json|csv|text``: the session's report as
  ``speakerflow export`` writes it (:mod:`pipeline.export`), read back from the compacted report
  topic, so what the web console downloads is byte for byte what the command line writes.

Both need the ``subscribe`` scope and show only the caller's tenant's sessions
(:mod:`pipeline.gateway.tenants`); another tenant's report is refused (403 ``wrong_tenant``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from pipeline.export import ReportNotFound, fetch_report, format_report
from pipeline.gateway.access import authorize, require_session
from topics.messages import SessionId

if TYPE_CHECKING:  # the app includes this router
    from pipeline.gateway.app import Gateway

__all__ = ["router"]

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

_SESSION_ID = TypeAdapter(SessionId)


class ReportFormat(StrEnum):
    RTTM = "rttm"
    JSON = "json"
    CSV = "csv"
    TEXT = "text"


_MEDIA_TYPES = {
    ReportFormat.RTTM: "text/plain; charset=utf-8",
    ReportFormat.JSON: "application/json",
    ReportFormat.CSV: "text/csv; charset=utf-8",
    ReportFormat.TEXT: "text/plain; charset=utf-8",
}
_SUFFIXES = {ReportFormat.RTTM: "rttm", ReportFormat.JSON: "json", ReportFormat.CSV: "csv", ReportFormat.TEXT: "txt"}


class RunningSessionOut(BaseModel):
    session_id: str = Field(alias="sessionId")
    first_result_at: datetime = Field(alias="firstResultAt", description="when the fan-out read its first result")
    last_result_at: datetime = Field(alias="lastResultAt", description="when the fan-out read its latest result")
    speakers: int = Field(description="speakers with talk time in its latest speaker update")


class RunningSessionsOut(BaseModel):
    sessions: list[RunningSessionOut] = Field(description="the most recently started first")


def _gateway(request: Request) -> Gateway:
    gateway: Gateway | None = request.app.state.gateway
    if gateway is None:
        raise HTTPException(503, "the gateway is not serving")
    return gateway


def _time(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


@router.get("", response_model=RunningSessionsOut, response_model_by_alias=True)
async def running_sessions(request: Request) -> RunningSessionsOut:
    """Sessions with results and no report yet, as seen since this gateway started.

    A session appears at its first result (a step after its start) and leaves at its report,
    or two minutes after its latest result if it never gets one.
    """
    principal = authorize(request, "subscribe")
    sessions = [s for s in _gateway(request).fanout.running_sessions.running() if principal.owns_session(s.session_id)]
    return RunningSessionsOut(
        sessions=[
            RunningSessionOut(
                sessionId=s.session_id,
                firstResultAt=_time(s.first_result_at),
                lastResultAt=_time(s.last_result_at),
                speakers=s.speakers,
            )
            for s in sessions
        ]
    )


@router.get(
    "/{session_id}/report",
    response_class=Response,
    responses={
        403: {"description": "the session is another tenant's (wrong_tenant), or the credential lacks subscribe"},
        200: {
            "description": "the report, as `speakerflow export --format FORMAT` writes it",
            "content": {media: {} for media in sorted(set(_MEDIA_TYPES.values()))},
        },
        404: {"description": "no report of this session on the report topic"},
        422: {"description": "not a valid session id, or an unknown format"},
    },
)
async def session_report(
    request: Request,
    session_id: str,
    report_format: Annotated[ReportFormat, Query(alias="format")] = ReportFormat.JSON,
) -> Response:
    """The session's newest report, in `format` (rttm, json, csv or text), as a download named after the session."""
    try:
        _SESSION_ID.validate_python(session_id)
    except ValidationError as exc:
        raise HTTPException(422, f"{session_id!r} is not a valid session id") from exc
    principal = authorize(request, "subscribe")
    require_session(principal, session_id)
    gateway = _gateway(request)
    try:
        report = await fetch_report(gateway.settings.kafka, session_id, security=gateway.settings.kafka_security)
    except ReportNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return Response(
        format_report(report, report_format.value),
        media_type=_MEDIA_TYPES[report_format],
        headers={"Content-Disposition": f'attachment; filename="{session_id}.{_SUFFIXES[report_format]}"'},
    )
