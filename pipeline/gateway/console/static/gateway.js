// The gateway's endpoints, as reached from the page's own origin (the gateway serves the page).
// Paths as in pipeline/gateway/protocol.py (SESSION_PATH, EVENTS_PATH), sessions_api.py,
// jobs_api.py and speakers_api.py. Every request goes through auth.js, which adds a token when
// the gateway asks for one.

import { AuthError, authFetch, credentialsProblem, knownMode } from "./auth.js";

const wsOrigin = () => `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;

export const sessionSocketUrl = () => `${wsOrigin()}/ws/session`;
export const eventsSocketUrl = (sessionId) => `${wsOrigin()}/ws/sessions/${encodeURIComponent(sessionId)}/events`;
export const reportUrl = (sessionId, format) =>
  `/v1/sessions/${encodeURIComponent(sessionId)}/report?format=${encodeURIComponent(format)}`;
export const EXPORT_FORMATS = [
  { format: "rttm", label: "RTTM" },
  { format: "json", label: "JSON" },
  { format: "csv", label: "CSV" },
  { format: "text", label: "Text" },
];

// What the topics' SessionId allows (topics/messages.py).
export const SESSION_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

export const jobPath = (jobId) => `/v1/jobs/${encodeURIComponent(jobId)}`;
export const jobExportUrl = (jobId, format) => `${jobPath(jobId)}/export?format=${encodeURIComponent(format)}`;
// jobs_api.py EXPORT_FORMATS, and the extension each is saved with.
export const JOB_EXPORT_FORMATS = [
  { format: "json", label: "JSON", extension: "json" },
  { format: "csv", label: "CSV", extension: "csv" },
  { format: "text", label: "Text", extension: "txt" },
  { format: "rttm", label: "RTTM", extension: "rttm" },
];
export const speakerPath = (profileId) => `/v1/speakers/${encodeURIComponent(profileId)}`;

// A refusal of the HTTP API, its words for the page: the gateway's 4xx and 5xx bodies are
// {"detail": {"code", "message"}} (uploads.py refuse), or FastAPI's list of validation errors.
export class GatewayError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  static async of(response, what) {
    const body = await response.json().catch(() => null);
    const detail = body?.detail;
    let code = null;
    let said = null;
    if (detail && typeof detail === "object" && !Array.isArray(detail)) {
      code = detail.code ?? null;
      said = detail.message ?? null;
    } else if (Array.isArray(detail)) {
      said = detail.map((d) => `${(d.loc ?? []).join(".")}: ${d.msg}`).join("; ");
    } else if (typeof detail === "string") {
      said = detail;
    }
    const tail = `${code ? ` ${code}` : ""}${said ? `: ${said}` : ""}`;
    const message =
      credentialsProblem(response.status, tail) ??
      `The gateway refused ${what} (${response.status}${tail || ` ${response.statusText}`}).`;
    return new GatewayError(response.status, code, message);
  }
}

// A JSON request to the gateway: the answer's JSON (null for 204), or a GatewayError.
export async function requestJson(url, what, init = {}) {
  let response;
  try {
    response = await authFetch(url, { ...init, headers: { Accept: "application/json", ...init.headers } });
  } catch (error) {
    if (error.name === "AbortError" || error instanceof AuthError) throw error;
    throw new GatewayError(0, "unreachable", `Could not reach the gateway (${what}). Is it running?`);
  }
  if (!response.ok) throw await GatewayError.of(response, what);
  return response.status === 204 ? null : response.json();
}

export async function runningSessions() {
  return (await requestJson("/v1/sessions", "the list of sessions")).sessions;
}

// A finished session's report as a report event (protocol.py ReportEvent), or null if it has none yet.
export async function finishedReport(sessionId) {
  const response = await authFetch(reportUrl(sessionId, "json"));
  if (response.status === 404) return null;
  if (!response.ok) throw await GatewayError.of(response, "the report");
  const report = await response.json(); // topics.SessionReport, the bus's field names
  return {
    event: "report",
    speakers: report.speakers.map((s) => ({ id: s.id, totalTimeMs: s.total_time_ms, speakerName: s.speaker_name })),
    turns: report.turns.map((t) => ({ speakerId: t.speaker, startMs: t.start_ms, endMs: t.end_ms })),
  };
}

// Why a socket closed, in words, for a close the page did not ask for.
export function closeProblem(event, what) {
  switch (event.code) {
    case 1000:
      return `The gateway ended ${what}.`;
    case 1001:
    case 1012:
      return `The gateway is shutting down or restarting (close code ${event.code}); ${what} ended.`;
    case 1008:
      // Also how the gateway refuses a missing, expired or insufficient token (auth.js).
      return `The gateway refused ${what}: ${event.reason || "policy violation"} (close code 1008). If it asks for credentials, the token may have expired or lack the scope: try again, and give the API key if asked.`;
    case 1009:
      return `The gateway closed ${what}: a frame was too large (close code 1009).`;
    case 1013:
      return `The gateway is not serving yet (close code 1013): try again in a moment.`;
    default:
      return `Lost the connection to the gateway (close code ${event.code}${event.reason ? `: ${event.reason}` : ""}); ${what} ended. Is the gateway still running?`;
  }
}

// A download link to an export. While the gateway is open it is a plain link; once it requires
// tokens a link cannot carry one, so the file is fetched with it and saved from memory.
export function downloadLink({ href, label, filename = "", onError }) {
  const link = document.createElement("a");
  link.href = href;
  link.download = filename;
  link.textContent = label;
  link.className = "button";
  link.addEventListener("click", async (event) => {
    if (knownMode() !== "required") return;
    event.preventDefault();
    try {
      const response = await authFetch(href);
      if (!response.ok) throw await GatewayError.of(response, `the ${label} download`);
      const saved = document.createElement("a");
      saved.href = URL.createObjectURL(await response.blob());
      saved.download = filename;
      saved.click();
      setTimeout(() => URL.revokeObjectURL(saved.href), 10_000);
    } catch (error) {
      onError?.(error.message);
    }
  });
  return link;
}
