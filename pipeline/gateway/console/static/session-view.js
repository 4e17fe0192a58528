// One session on screen, fed by the gateway's events: the scrolling live timeline, talk time per
// speaker, and once the report comes, the report's timeline, table and downloads. The Live and
// Watch tabs each hold one; neither keeps anything the events did not carry.

import { downloadLink, EXPORT_FORMATS, reportUrl } from "./gateway.js";
import { drawTimeline, formatClock, speakerColour } from "./timeline.js";

// Seconds of the live timeline in view: the newest at the right edge.
const LIVE_WINDOW_MS = { wide: 30000, narrow: 15000 };
// Speaker events carry no stream position; they are placed by when they arrive. Once none has
// come for this long the stream has paused or ended, and the live edge stops moving.
const STALL_MS = 1500;
const REDRAW_MS = 200;

export const speakerLabel = (id, names) => names.get(id) ?? `Speaker ${id}`;

export class SessionView {
  // onError(text): a problem the panel shows (a download the gateway refused).
  constructor(root, { onError } = {}) {
    this.root = root;
    this.onError = onError;
    root.replaceChildren(document.getElementById("session-view").content.cloneNode(true));
    this.part = (name) => root.querySelector(`[data-part="${name}"]`);
    this.liveCanvas = this.part("live-timeline");
    this.reportCanvas = this.part("report-timeline");
    new ResizeObserver(() => this.draw()).observe(this.liveCanvas);
    new ResizeObserver(() => this.drawReport()).observe(this.reportCanvas);
    this.reset();
  }

  reset(sessionId = null) {
    clearInterval(this.redraw);
    this.redraw = null;
    this.sessionId = sessionId;
    this.talkMs = new Map();
    this.active = [];
    this.names = new Map();
    this.marks = new Map(); // speaker id -> [[startMs, endMs], ...] of the live timeline
    this.firstEventAt = null;
    this.lastEventAt = null;
    this.lastMs = 0;
    this.report = null;
    this.part("talk-times").replaceChildren();
    this.part("live").hidden = sessionId === null;
    this.part("report").hidden = true;
    this.part("summary").textContent = "";
    this.root.dataset.state = sessionId === null ? "idle" : "live";
    this.root.dataset.session = sessionId ?? "";
    this.root.dataset.speakers = "0";
    this.root.dataset.active = "";
    this.draw();
  }

  // One server event (protocol.py: speaker, turn, report); other events are the caller's.
  handle(event) {
    this.learnNames(event);
    if (event.event === "speaker") this.onSpeaker(event);
    else if (event.event === "turn") this.ensureSpeaker(event.speakerId);
    else if (event.event === "report") this.showReport(event);
  }

  // Names of voices that matched an enrolled profile, where the events carry them (protocol.py:
  // speakerName on turns and report speakers, namedSpeakers on speaker events); the rest stay numbered.
  learnNames(event) {
    const named = (value) => typeof value === "string" && value !== "";
    if (event.event === "turn" && named(event.speakerName)) this.names.set(event.speakerId, event.speakerName);
    for (const speaker of event.event === "report" ? event.speakers : []) {
      if (named(speaker.speakerName)) this.names.set(speaker.id, speaker.speakerName);
    }
    for (const [id, profile] of Object.entries(event.event === "speaker" ? (event.namedSpeakers ?? {}) : {})) {
      if (named(profile?.speakerName)) this.names.set(Number(id), profile.speakerName);
    }
  }

  onSpeaker(event) {
    const now = performance.now();
    this.firstEventAt ??= now;
    this.lastEventAt = now;
    const ms = Math.max(this.lastMs, now - this.firstEventAt);
    for (const id of event.activeSpeakerIds) {
      const spans = this.marks.get(id) ?? [];
      const last = spans.at(-1);
      if (last && last[1] === this.lastMs) last[1] = ms;
      else spans.push([this.lastMs, ms]);
      this.marks.set(id, spans);
    }
    this.lastMs = ms;
    for (const [id, talk] of Object.entries(event.speakingTimeMs)) this.talkMs.set(Number(id), talk);
    for (const id of event.activeSpeakerIds) this.ensureSpeaker(id);
    this.active = event.activeSpeakerIds;
    this.root.dataset.active = this.active.join(" ");
    this.redraw ??= setInterval(() => this.draw(), REDRAW_MS);
    this.renderTalkTimes();
    this.draw();
  }

  ensureSpeaker(id) {
    if (!this.talkMs.has(id)) this.talkMs.set(id, 0);
  }

  speakerIds() {
    return [...this.talkMs.keys()].sort((a, b) => a - b);
  }

  // Where the live edge is: real time since the first event, held while events stall.
  liveEdgeMs() {
    if (this.firstEventAt === null) return 0;
    const now = Math.min(performance.now(), this.lastEventAt + STALL_MS);
    return Math.max(this.lastMs, now - this.firstEventAt);
  }

  draw() {
    if (this.part("live").hidden) return;
    const edge = this.liveEdgeMs();
    const windowMs = this.liveCanvas.clientWidth < 480 ? LIVE_WINDOW_MS.narrow : LIVE_WINDOW_MS.wide;
    const lanes = this.speakerIds().map((id) => ({
      id,
      label: speakerLabel(id, this.names),
      active: this.active.includes(id),
      spans: (this.marks.get(id) ?? []).map(([start, end]) => [start, end === this.lastMs ? edge : end]),
    }));
    drawTimeline(this.liveCanvas, lanes, Math.max(0, edge - windowMs), Math.max(edge, windowMs));
    const talking = this.active.map((id) => speakerLabel(id, this.names));
    this.liveCanvas.setAttribute(
      "aria-label",
      `Live timeline of ${lanes.length} speaker${lanes.length === 1 ? "" : "s"}; ` +
        (talking.length ? `${talking.join(" and ")} talking now.` : "nobody talking now."),
    );
  }

  renderTalkTimes() {
    const list = this.part("talk-times");
    const total = [...this.talkMs.values()].reduce((a, b) => a + b, 0);
    const longest = Math.max(1, ...this.talkMs.values());
    list.replaceChildren(
      ...this.speakerIds().map((id) => {
        const item = document.getElementById("talk-time").content.firstElementChild.cloneNode(true);
        const ms = this.talkMs.get(id);
        const speaking = this.active.includes(id);
        item.dataset.speaker = id;
        item.dataset.ms = ms;
        item.classList.toggle("speaking", speaking);
        item.style.setProperty("--colour", speakerColour(id));
        item.querySelector(".name").textContent = speakerLabel(id, this.names);
        item.querySelector(".now").textContent = speaking ? "speaking" : "";
        item.querySelector(".bar > span").style.width = `${(100 * ms) / longest}%`;
        const share = total ? Math.round((100 * ms) / total) : 0;
        item.querySelector(".figures").textContent = `${(ms / 1000).toFixed(1)} s · ${share} %`;
        return item;
      }),
    );
    this.root.dataset.speakers = String(this.talkMs.size);
    this.part("summary").textContent =
      `${this.talkMs.size} speaker${this.talkMs.size === 1 ? "" : "s"} so far · ${formatClock(Math.round(this.lastMs / 1000))}`;
  }

  showReport(event) {
    clearInterval(this.redraw);
    this.redraw = null;
    this.report = event;
    this.active = [];
    this.root.dataset.active = "";
    this.draw();
    // The report's figures replace the live ones, which the report has revised.
    this.talkMs = new Map(event.speakers.map((s) => [s.id, s.totalTimeMs]));
    this.renderTalkTimes();
    this.part("summary").textContent = `${event.speakers.length} speakers · final figures`;
    const rows = this.part("report-rows");
    const total = event.speakers.reduce((sum, s) => sum + s.totalTimeMs, 0);
    rows.replaceChildren(
      ...[...event.speakers]
        .sort((a, b) => a.id - b.id)
        .map((speaker) => {
          const row = document.getElementById("report-row").content.firstElementChild.cloneNode(true);
          row.dataset.speaker = speaker.id;
          row.dataset.ms = speaker.totalTimeMs;
          row.style.setProperty("--colour", speakerColour(speaker.id));
          const cells = row.querySelectorAll("th, td");
          cells[0].querySelector(".name").textContent = speakerLabel(speaker.id, this.names);
          cells[1].textContent = `${(speaker.totalTimeMs / 1000).toFixed(1)} s`;
          cells[2].textContent = `${total ? Math.round((100 * speaker.totalTimeMs) / total) : 0} %`;
          cells[3].textContent = String(event.turns.filter((t) => t.speakerId === speaker.id).length);
          return row;
        }),
    );
    const links = this.part("exports");
    links.replaceChildren(
      ...EXPORT_FORMATS.map(({ format, label }) => {
        const link = downloadLink({ href: reportUrl(this.sessionId, format), label, onError: this.onError });
        link.dataset.format = format;
        return link;
      }),
    );
    this.part("report").hidden = false;
    this.root.dataset.state = "reported";
    this.drawReport();
  }

  drawReport() {
    if (!this.report || this.part("report").hidden) return;
    const ids = [...new Set([...this.report.speakers.map((s) => s.id), ...this.report.turns.map((t) => t.speakerId)])];
    const lanes = ids
      .sort((a, b) => a - b)
      .map((id) => ({
        id,
        label: speakerLabel(id, this.names),
        active: false,
        spans: this.report.turns.filter((t) => t.speakerId === id).map((t) => [t.startMs, t.endMs]),
      }));
    const endMs = Math.max(1000, ...this.report.turns.map((t) => t.endMs));
    drawTimeline(this.reportCanvas, lanes, 0, endMs);
    this.reportCanvas.setAttribute(
      "aria-label",
      `Report timeline: ${lanes.length} speakers over ${formatClock(Math.round(endMs / 1000))}; the table below has the figures.`,
    );
  }

  // The session ended without a report (the connection went, or the report never came).
  halt() {
    clearInterval(this.redraw);
    this.redraw = null;
    this.active = [];
    this.root.dataset.active = "";
    if (this.talkMs.size) this.renderTalkTimes();
    this.draw();
    if (this.root.dataset.state === "live") this.root.dataset.state = "halted";
  }
}
