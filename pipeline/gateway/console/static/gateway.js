// The gateway's endpoints, as reached from the page's own origin (the gateway serves the page).
// Paths as in pipeline/gateway/protocol.py (SESSION_PATH, EVENTS_PATH) and sessions_api.py.

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

export async function runningSessions() {
  const response = await fetch("/v1/sessions", { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`the gateway answered ${response.status} ${response.statusText}`);
  return (await response.json()).sessions;
}

// A finished session's report as a report event (protocol.py ReportEvent), or null if it has none yet.
export async function finishedReport(sessionId) {
  const response = await fetch(reportUrl(sessionId, "json"));
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(`the gateway answered ${response.status} ${response.statusText}`);
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
      return `The gateway refused ${what}: ${event.reason || "policy violation"} (close code 1008).`;
    case 1009:
      return `The gateway closed ${what}: a frame was too large (close code 1009).`;
    case 1013:
      return `The gateway is not serving yet (close code 1013): try again in a moment.`;
    default:
      return `Lost the connection to the gateway (close code ${event.code}${event.reason ? `: ${event.reason}` : ""}); ${what} ended. Is the gateway still running?`;
  }
}
