"""Clients of the gateway's HTTP APIs, standard library only: speakers (`pipeline.gateway.speakers_api`)
and batch jobs (`pipeline.gateway.jobs_api`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

PREFIX = "/v1/speakers"
JOBS_PREFIX = "/v1/jobs"


class GatewayApiError(RuntimeError):
    """The gateway refused (its status, code and message) or could not be reached (status 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status = status
        self.code = code


def base_url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def multipart(fields: dict[str, str], files: list[tuple[str, Path]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload."""
    boundary = uuid.uuid4().hex
    body = bytearray()
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, path in files:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body += path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def bearer_headers(api_key: str | None) -> dict[str, str]:
    """The header that carries a credential (an API key or a JWT) to the gateway; none without one."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class GatewayHttp:
    """`api_key` (SPEAKERFLOW_API_KEY for the CLI) is sent with every request; None for an open gateway."""

    def __init__(self, url: str, timeout_s: float = 120.0, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.api_key = api_key

    def _call(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, raw: bool = False
    ) -> Any:
        request = urllib.request.Request(
            self.url + path, data=body, method=method, headers=bearer_headers(self.api_key)
        )
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = _detail(exc.read())
            raise GatewayApiError(exc.code, detail.get("code", "error"), detail.get("message", str(exc))) from None
        except OSError as exc:
            raise GatewayApiError(0, "unreachable", f"cannot reach the gateway at {self.url}: {exc}") from None
        if raw:
            return text.decode()
        return json.loads(text) if text else None


class SpeakersClient(GatewayHttp):
    def enroll(self, name: str, clips: list[Path]) -> dict[str, Any]:
        body, content_type = multipart({"name": name}, [("clips", c) for c in clips])
        return self._call("POST", PREFIX, body, content_type)

    def add_clips(self, profile_id: str, clips: list[Path]) -> dict[str, Any]:
        body, content_type = multipart({}, [("clips", c) for c in clips])
        return self._call("POST", f"{PREFIX}/{profile_id}/clips", body, content_type)

    def list(self) -> list[dict[str, Any]]:
        return self._call("GET", PREFIX)["speakers"]

    def get(self, profile_id: str) -> dict[str, Any]:
        return self._call("GET", f"{PREFIX}/{profile_id}")

    def delete(self, profile_id: str) -> None:
        self._call("DELETE", f"{PREFIX}/{profile_id}")


class JobsClient(GatewayHttp):
    def submit(self, clips: list[Path]) -> dict[str, Any]:
        body, content_type = multipart({}, [("clips", c) for c in clips])
        return self._call("POST", JOBS_PREFIX, body, content_type)

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"{JOBS_PREFIX}/{job_id}")

    def results(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"{JOBS_PREFIX}/{job_id}/results")

    def export(self, job_id: str, fmt: str) -> str:
        return self._call("GET", f"{JOBS_PREFIX}/{job_id}/export?format={fmt}", raw=True)

    def delete(self, job_id: str) -> None:
        self._call("DELETE", f"{JOBS_PREFIX}/{job_id}")


def _detail(body: bytes) -> dict[str, str]:
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return {}
    if isinstance(detail, dict):
        return detail
    return {"message": str(detail)}
