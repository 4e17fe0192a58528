// The Jobs tab: several recordings sent as one batch job (POST /v1/jobs), its progress per clip
// and overall followed over GET /v1/jobs/{id}/events, then the speakers linked across the clips
// (GET /v1/jobs/{id}/results) and the exports. The job's id is in the address (#jobs/<id>), so a
// reload or a shared link shows the same job; the page keeps nothing else.

import { AuthError } from "./auth.js";
import { confirmDialog } from "./confirm-dialog.js";
import { appendError, hideErrors } from "./error-box.js";
import { downloadLink, GatewayError, JOB_EXPORT_FORMATS, jobExportUrl, jobPath, requestJson } from "./gateway.js";
import { serverEvents } from "./server-events.js";
import { drawTimeline, formatClock, speakerColour } from "./timeline.js";

// After the event stream breaks while the job runs (the gateway restarting, say), it is reopened after this long.
const RECONNECT_MS = 3000;
const STATUS_WORDS = { queued: "waiting", running: "running", done: "done", failed: "failed" };

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;
// Whole percents, rounded down (100 % only when done), and "< 1 %" once something has been labelled.
const percent = (share) => (share > 0 && share < 0.01 ? "< 1 %" : `${Math.floor(100 * share)} %`);

export class JobsPanel {
  constructor(panel) {
    this.panel = panel;
    this.part = (name) => panel.querySelector(`[data-part="${name}"]`);
    this.form = this.part("jobs-form");
    this.jobId = null;
    this.following = null; // AbortController of the event stream being read
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.form.elements.clips.addEventListener("change", () => this.clearError());
    this.part("job-delete").addEventListener("click", () => this.remove());
    this.timelines = new ResizeObserver(() => this.drawTimelines());
  }

  status(text) {
    this.part("jobs-status").textContent = text;
  }

  showError(text) {
    appendError(this.part("jobs-error"), text);
  }

  clearError() {
    hideErrors(this.part("jobs-error"));
  }

  async submit() {
    const files = [...this.form.elements.clips.files];
    if (!files.length) {
      this.showError("Choose one or more recordings first.");
      return;
    }
    this.clearError();
    const body = new FormData();
    for (const file of files) body.append("clips", file, file.name);
    const megabytes = files.reduce((sum, f) => sum + f.size, 0) / 1e6;
    const submit = this.part("jobs-submit");
    submit.disabled = true;
    this.status(`Uploading ${files.length} recording${files.length === 1 ? "" : "s"} (${megabytes.toFixed(1)} MB); the gateway decodes them before the job starts…`);
    let job;
    try {
      job = await requestJson("/v1/jobs", "the job", { method: "POST", body });
    } catch (error) {
      this.status("The job was not started.");
      this.showError(error.message);
      return;
    } finally {
      submit.disabled = false;
    }
    this.form.reset();
    history.replaceState(null, "", `#jobs/${encodeURIComponent(job.id)}`);
    this.open(job.id, job);
  }

  // Shows a job (just submitted, or from the address) and follows it until it ends.
  async open(jobId, job = null) {
    this.following?.abort();
    this.jobId = jobId;
    this.clearError();
    this.panel.dataset.job = jobId;
    this.panel.dataset.state = "loading";
    this.part("job-results").hidden = true;
    this.part("job").hidden = true;
    this.results = null;
    if (job) this.render(job);
    else this.status(`Looking up job ${jobId}…`);
    this.follow(jobId);
  }

  async follow(jobId) {
    const following = new AbortController();
    this.following = following;
    let last = null;
    while (!following.signal.aborted) {
      try {
        for await (const { event, data } of serverEvents(`${jobPath(jobId)}/events`, "the job's progress", following.signal)) {
          if (event === "job") this.render((last = data));
        }
        if (last && last.status !== "running") break; // ended: the stream has said its last
        // Ended while the job runs: the gateway went away, or the job is another gateway's.
      } catch (error) {
        if (following.signal.aborted) return;
        if (error instanceof AuthError || (error instanceof GatewayError && error.status >= 400 && error.status < 500)) {
          this.panel.dataset.state = "missing";
          this.status(`Job ${jobId} cannot be shown.`);
          this.showError(error.message);
          return;
        }
        this.status(`${error.message} Trying again in ${RECONNECT_MS / 1000} s…`);
      }
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
    if (following.signal.aborted || !last) return;
    if (last.status === "done") await this.showResults(jobId);
  }

  render(job) {
    if (job.id !== this.jobId) return;
    this.part("job").hidden = false;
    this.part("job-id").textContent = job.id;
    this.part("job-progress").value = job.progress;
    this.part("job-percent").textContent = percent(job.progress);
    this.panel.dataset.state = job.status;
    this.panel.dataset.progress = String(job.progress);
    this.part("job-clips").replaceChildren(
      ...job.clips.map((clip) => {
        const row = document.createElement("tr");
        row.dataset.clip = clip.name;
        row.dataset.status = clip.status;
        row.dataset.progress = String(clip.progress);
        const name = document.createElement("th");
        name.scope = "row";
        name.textContent = clip.name;
        const length = document.createElement("td");
        length.textContent = formatClock(Math.round(clip.durationMs / 1000));
        const status = document.createElement("td");
        status.textContent = STATUS_WORDS[clip.status] ?? clip.status;
        if (clip.error) status.textContent += `: ${clip.error}`;
        const progress = document.createElement("td");
        const line = document.createElement("div");
        line.className = "progress-cell";
        const bar = document.createElement("progress");
        bar.max = 1;
        bar.value = clip.progress;
        bar.setAttribute("aria-label", `${clip.name} progress`);
        const figure = document.createElement("span");
        figure.className = "figures";
        figure.textContent = percent(clip.progress);
        line.append(bar, figure);
        progress.append(line);
        row.append(name, length, status, progress);
        return row;
      }),
    );
    const done = job.clips.filter((c) => c.status === "done").length;
    if (job.status === "running") {
      this.status(`Job ${job.id}: ${done} of ${job.clips.length} clips done, ${percent(job.progress)} of the audio labelled.`);
    } else if (job.status === "done") {
      this.status(`Job ${job.id} is done; linking its speakers…`);
    } else {
      this.status(`Job ${job.id} ${job.status}.`);
      this.showError(`The job ${job.status}: ${job.error ?? "no reason given"}`);
    }
  }

  async showResults(jobId) {
    let results;
    try {
      results = await requestJson(`${jobPath(jobId)}/results`, "the job's results");
    } catch (error) {
      this.status(`Job ${jobId} is done, but its results could not be read.`);
      this.showError(error.message);
      return;
    }
    if (jobId !== this.jobId) return;
    this.results = results;
    this.renderVoices(results);
    this.renderTimelines(results);
    this.part("job-exports").replaceChildren(
      ...JOB_EXPORT_FORMATS.map(({ format, label, extension }) => {
        const link = downloadLink({
          href: jobExportUrl(jobId, format),
          label,
          filename: `job-${jobId}.${extension}`,
          onError: (text) => this.showError(text),
        });
        link.dataset.format = format;
        return link;
      }),
    );
    this.part("job-results").hidden = false;
    this.panel.dataset.state = "reported";
    const voices = results.labels.length;
    this.status(`Job ${jobId} is done: ${voices} voice${voices === 1 ? "" : "s"} across ${results.clips.length} clips.`);
  }

  // A voice per row, a clip per column: its talk time there, and the clip speaker it is.
  renderVoices(results) {
    const table = this.part("job-voices");
    const head = document.createElement("tr");
    for (const text of ["Voice", "All clips", ...results.clips.map((c) => c.name)]) {
      const cell = document.createElement("th");
      cell.scope = "col";
      cell.textContent = text;
      head.append(cell);
    }
    const rows = results.labels.map((label, index) => {
      const row = document.createElement("tr");
      row.dataset.label = label;
      row.style.setProperty("--colour", speakerColour(index));
      const name = document.createElement("th");
      name.scope = "row";
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.setAttribute("aria-hidden", "true");
      name.append(swatch, label);
      const cells = results.clips.map((clip) => {
        const cell = document.createElement("td");
        const speakers = clip.speakers.filter((s) => s.label === label);
        cell.dataset.clip = clip.name;
        cell.dataset.ms = String(speakers.reduce((sum, s) => sum + s.totalTimeMs, 0));
        cell.dataset.speakers = speakers.map((s) => s.id).join(" ");
        cell.textContent = speakers.length
          ? speakers.map((s) => `${seconds(s.totalTimeMs)} (speaker ${s.id})`).join(", ")
          : "—";
        return cell;
      });
      const total = document.createElement("td");
      total.textContent = seconds(cells.reduce((sum, c) => sum + Number(c.dataset.ms), 0));
      row.append(name, total, ...cells);
      return row;
    });
    const thead = document.createElement("thead");
    thead.append(head);
    const tbody = document.createElement("tbody");
    tbody.append(...rows);
    table.replaceChildren(thead, tbody);
  }

  // Each clip's turns on a timeline, one lane per voice, coloured as in the table.
  renderTimelines(results) {
    this.timelines.disconnect();
    const box = this.part("job-timelines");
    box.replaceChildren(
      ...results.clips.map((clip) => {
        const figure = document.createElement("figure");
        const caption = document.createElement("figcaption");
        caption.textContent = `${clip.name} · ${formatClock(Math.round(clip.durationMs / 1000))}`;
        const canvas = document.createElement("canvas");
        canvas.className = "timeline";
        canvas.setAttribute("role", "img");
        const labels = [...new Set(clip.speakers.map((s) => s.label))];
        canvas.setAttribute(
          "aria-label",
          `Timeline of ${clip.name}: ${labels.join(", ") || "no speech"}; the table above has the figures.`,
        );
        figure.append(caption, canvas);
        this.timelines.observe(canvas);
        return figure;
      }),
    );
  }

  drawTimelines() {
    if (!this.results) return;
    const canvases = this.part("job-timelines").querySelectorAll("canvas");
    this.results.clips.forEach((clip, index) => {
      const lanes = this.results.labels
        .map((label, id) => ({
          id,
          label,
          active: false,
          spans: clip.turns.filter((t) => t.label === label).map((t) => [t.startMs, t.endMs]),
        }))
        .filter((lane) => lane.spans.length);
      drawTimeline(canvases[index], lanes, 0, Math.max(1000, clip.durationMs));
    });
  }

  async remove() {
    const jobId = this.jobId;
    if (!jobId) return;
    const confirmed = await confirmDialog(
      `Delete job ${jobId}?`,
      "A running job is stopped. Its clips' session reports stay on the bus.",
    );
    if (!confirmed) return;
    try {
      await requestJson(jobPath(jobId), "deleting the job", { method: "DELETE" });
    } catch (error) {
      this.showError(error.message);
      return;
    }
    this.following?.abort();
    this.jobId = null;
    this.results = null;
    this.part("job").hidden = true;
    this.panel.dataset.state = "deleted";
    history.replaceState(null, "", "#jobs");
    this.status(`Job ${jobId} was deleted.`);
  }
}
