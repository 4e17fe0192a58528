"""The web console: a page the gateway serves at ``/``: live sessions, watching one, batch jobs, known speakers.

The page is plain HTML, CSS and ES modules under ``static/``, served as they are (no build
step, nothing fetched from elsewhere); it talks only to the gateway's own endpoints
(``/ws/session``, ``/ws/sessions/{id}/events``, ``/v1/sessions``, ``/v1/jobs``, ``/v1/speakers``,
and ``/v1/auth`` with ``/v1/tokens`` when the gateway requires credentials). See docs/console.md.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "assets", "router"]

STATIC_DIR = Path(__file__).parent / "static"
# Where the page's scripts and styles are served; index.html names them under it.
ASSETS_PATH = "/console"

router = APIRouter()
assets = StaticFiles(directory=STATIC_DIR)


@router.get("/", include_in_schema=False)
async def console_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
