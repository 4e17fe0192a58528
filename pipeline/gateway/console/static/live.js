// The Live tab: audio from the microphone (or a file played as one) streamed over /ws/session,
// the session drawn as its events come, and the report when it is stopped.

import { AudioSource, AudioSourceError } from "./audio-source.js";
import { forget, socketUrl } from "./auth.js";
import { appendError, hideErrors } from "./error-box.js";
import { closeProblem, sessionSocketUrl } from "./gateway.js";
import { SessionView } from "./session-view.js";

// Errors after which the gateway has ended the session (protocol.py ErrorCode); any other
// error is about one frame or action, and the session goes on.
const SESSION_ENDING_ERRORS = new Set(["report_timeout"]);
const TOGGLE_LABELS = { idle: "Start", opening: "Starting…", connecting: "Starting…", running: "Stop", stopping: "Stopping…" };

export class LivePanel {
  constructor(panel) {
    this.panel = panel;
    this.part = (name) => panel.querySelector(`[data-part="${name}"]`);
    this.form = this.part("live-form");
    this.toggle = this.part("live-toggle");
    this.view = new SessionView(this.part("live-view"), { onError: (text) => this.showError(text) });
    this.state = "idle"; // idle, opening, connecting, running, stopping
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.state === "idle") this.start();
      else if (this.state === "running") this.stop("Stopped.");
    });
    const fileInput = this.form.elements.file;
    for (const radio of this.form.elements.source) {
      radio.addEventListener("change", () => {
        fileInput.hidden = this.form.elements.source.value !== "file";
        if (!fileInput.hidden && !fileInput.files.length) fileInput.click();
      });
    }
  }

  setState(state, status) {
    this.state = state;
    this.toggle.textContent = TOGGLE_LABELS[state];
    this.toggle.disabled = state !== "idle" && state !== "running";
    for (const element of this.form.querySelectorAll("fieldset, select")) element.disabled = state !== "idle";
    if (status !== undefined) this.status(status);
    this.panel.dataset.state = state;
  }

  status(text, link) {
    const line = this.part("live-status");
    line.replaceChildren(text);
    if (link) {
      const anchor = document.createElement("a");
      anchor.href = link.href;
      anchor.target = "_blank";
      anchor.textContent = link.text;
      line.append(" ", anchor);
    }
  }

  showError(text) {
    appendError(this.part("live-error"), text);
  }

  clearError() {
    hideErrors(this.part("live-error"));
  }

  async start() {
    this.clearError();
    const useFile = this.form.elements.source.value === "file";
    const file = useFile ? this.form.elements.file.files[0] : null;
    if (useFile && !file) {
      this.showError("Choose an audio file to play first.");
      return;
    }
    this.setState("opening", useFile ? `Decoding ${file.name}…` : "Asking for the microphone…");
    this.sentMs = 0;
    this.audio = new AudioSource({
      onFrame: (frame) => this.send(frame),
      onEnded: () => this.stop(`${file.name} has played to its end.`),
    });
    try {
      await this.audio.open(file);
    } catch (error) {
      this.audio.close();
      this.setState("idle", "Not started.");
      this.showError(error instanceof AudioSourceError ? error.message : `Could not open the audio: ${error}`);
      return;
    }
    this.connect();
  }

  async connect() {
    this.setState("connecting", "Connecting to the gateway…");
    let url;
    try {
      url = await socketUrl(sessionSocketUrl());
    } catch (error) {
      this.end("Not started.");
      this.showError(error.message);
      return;
    }
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      const count = this.form.elements.num_speakers.value;
      socket.send(JSON.stringify({ action: "start", num_speakers: count ? Number(count) : null }));
    };
    socket.onmessage = (message) => this.onEvent(JSON.parse(message.data));
    socket.onclose = (event) => this.onClose(socket, event);
  }

  async onEvent(event) {
    if (event.event === "started") {
      this.view.reset(event.sessionId);
      this.setState("running");
      this.status(`Session ${event.sessionId} is live.`, {
        href: `#watch/${encodeURIComponent(event.sessionId)}`,
        text: "Watch it in another tab",
      });
      await this.audio.start();
    } else if (event.event === "error") {
      this.showError(`The gateway reported ${event.code}: ${event.message}`);
      if (this.state === "connecting") this.end("The session did not start.");
      else if (SESSION_ENDING_ERRORS.has(event.code)) this.end("The session ended without a report.");
    } else {
      this.view.handle(event);
      if (event.event === "report") this.end(`Session ${this.view.sessionId} is finished; its report is below.`);
    }
  }

  send(frame) {
    if (this.socket?.readyState === WebSocket.OPEN && (this.state === "running" || this.state === "stopping")) {
      this.socket.send(frame);
      this.sentMs += (1000 * frame.byteLength) / 2 / 16000;
      this.panel.dataset.sentMs = String(Math.round(this.sentMs));
    }
  }

  async stop(why) {
    if (this.state !== "running") return;
    this.setState("stopping", `${why} Waiting for the report…`);
    await this.audio.stop(); // its last frames go out before the stop
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify({ action: "stop" }));
    this.status(`${why} ${(this.sentMs / 1000).toFixed(0)} s of audio sent; waiting for the report…`);
  }

  // The session is over (reported, refused or abandoned): release the audio and the socket.
  end(status) {
    const socket = this.socket;
    this.socket = null;
    socket?.close(1000);
    this.audio?.close();
    if (this.view.root.dataset.state === "live") this.view.halt();
    this.setState("idle", status);
  }

  onClose(socket, event) {
    if (socket !== this.socket) return; // closed by end()
    const wasConnecting = this.state === "connecting";
    if (event.code === 1008) forget(); // perhaps the token: the next start gets a fresh one
    this.end("Not connected.");
    this.showError(
      wasConnecting && event.code === 1006
        ? `Could not reach the gateway at ${sessionSocketUrl()}. Is it running?`
        : closeProblem(event, "the session"),
    );
  }
}
