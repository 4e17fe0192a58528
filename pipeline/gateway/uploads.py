"""Audio uploaded to the gateway's HTTP API: multipart forms read in memory, clips decoded to the bus format.

A form is read whole into memory up to its size limits, never spooled to disk (audio passes
through the gateway in memory only), and split into its fields. A clip in WAV, FLAC, MP3 or
OGG at any rate and channel count becomes int16 mono at 16 kHz. A refusal is an HTTPException
whose ``detail`` carries a ``code`` and a ``message``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr
from fastapi import HTTPException, Request
from python_multipart.multipart import parse_options_header

from topics.messages import SAMPLE_RATE

# Longer clips are refused as too large whatever their bytes.
MAX_CLIP_S = 3600.0


def refuse(status: int, code: str, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"code": code, "message": message})


def decode_clip(data: bytes, filename: str = "clip", max_s: float = MAX_CLIP_S) -> np.ndarray:
    """A clip's audio as int16 mono at 16 kHz; raises HTTPException (415 not audio, 413 too long, 422 empty)."""
    try:
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise refuse(415, "unsupported_format", f"{filename}: not WAV, FLAC, MP3 or OGG audio ({exc})") from None
    if not len(audio):
        raise refuse(422, "too_little_speech", f"{filename}: the clip holds no audio")
    if len(audio) / rate > max_s:
        raise refuse(413, "clip_too_large", f"{filename}: {len(audio) / rate:.0f} s of audio, over {max_s:g} s")
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return (np.clip(mono, -1.0, 1.0) * 32767).astype(np.int16)


@dataclass
class Upload:
    name: str | None
    clips: list[tuple[str, bytes]]


async def read_upload(request: Request, max_clips: int, max_clip_bytes: int) -> Upload:
    """The multipart form's `name` and `clips`, read into memory up to the size limits."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise refuse(415, "unsupported_format", "send the clips as multipart/form-data (fields name and clips)")
    limit = max_clips * max_clip_bytes + 65_536
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise refuse(413, "upload_too_large", f"the upload exceeds {limit} bytes")
    name, clips = None, []
    for headers, payload in form_parts(bytes(body), content_type):
        disposition = parse_options_header(headers.get(b"content-disposition", b""))[1]
        field = disposition.get(b"name")
        if field == b"name":
            name = payload.decode(errors="replace").strip()
        elif field == b"clips":
            filename = disposition.get(b"filename", b"").decode(errors="replace")
            clips.append((filename or f"clip {len(clips) + 1}", payload))
    if len(clips) > max_clips:
        raise refuse(413, "too_many_clips", f"{len(clips)} clips; at most {max_clips} per request")
    for filename, data in clips:
        if len(data) > max_clip_bytes:
            raise refuse(413, "clip_too_large", f"{filename}: {len(data)} bytes, over {max_clip_bytes}")
    if not clips:
        raise refuse(422, "no_clips", "the form has no clips field")
    return Upload(name, clips)


def form_parts(body: bytes, content_type: str) -> list[tuple[dict[bytes, bytes], bytes]]:
    """The parts of a multipart/form-data body: (headers, lower-case names; payload), all in memory."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise refuse(415, "unsupported_format", "the multipart content type names no boundary")
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, found, payload = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not found:
            raise refuse(415, "unsupported_format", "a part of the multipart form has no header end")
        headers = {}
        for line in head.split(b"\r\n"):
            field, _, value = line.partition(b":")
            headers[field.strip().lower()] = value.strip()
        parts.append((headers, payload.removesuffix(b"\r\n")))
    return parts
