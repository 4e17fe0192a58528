// The Watch tab: any session, by id or from the list of running ones, drawn from its
// /ws/sessions/{id}/events socket exactly as the Live tab draws its own.

import { forget, socketUrl } from "./auth.js";
import { appendError } from "./error-box.js";
import { closeProblem, eventsSocketUrl, finishedReport, runningSessions, SESSION_ID_PATTERN } from "./gateway.js";
import { SessionView } from "./session-view.js";

const LIST_REFRESH_MS = 5000;

export class WatchPanel {
  constructor(panel) {
    this.panel = panel;
    this.part = (name) => panel.querySelector(`[data-part="${name}"]`);
    this.form = this.part("watch-form");
    this.toggle = this.part("watch-toggle");
    this.view = new SessionView(this.part("watch-view"), { onError: (text) => this.showError(text) });
    this.socket = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.socket) this.unwatch("Stopped watching.");
      else this.watch(this.form.elements.session_id.value.trim());
    });
    this.part("running-refresh").addEventListener("click", () => this.refreshList());
  }

  // Called when the tab is shown or hidden: the list refreshes only while someone looks at it.
  shown(visible) {
    clearInterval(this.listTimer);
    if (visible) {
      this.refreshList();
      this.listTimer = setInterval(() => this.refreshList(), LIST_REFRESH_MS);
    }
  }

  status(text) {
    this.part("watch-status").textContent = text;
  }

  showError(text) {
    appendError(this.part("watch-error"), text);
  }

  async refreshList() {
    const list = this.part("running-list");
    const note = this.part("running-note");
    let sessions;
    try {
      sessions = await runningSessions();
    } catch (error) {
      note.textContent = `Could not list the running sessions: ${error.message}`;
      return;
    }
    note.textContent = sessions.length
      ? `${sessions.length} running, newest first.`
      : "No session is running (none has produced results lately).";
    list.replaceChildren(
      ...sessions.map((session) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = session.sessionId;
        button.dataset.session = session.sessionId;
        button.addEventListener("click", () => {
          if (this.socket) this.unwatch("Stopped watching.");
          this.watch(session.sessionId);
        });
        const started = new Date(session.firstResultAt).toLocaleTimeString();
        item.append(button, ` since ${started}, ${session.speakers} speaker${session.speakers === 1 ? "" : "s"}`);
        return item;
      }),
    );
  }

  async watch(sessionId) {
    this.part("watch-error").hidden = true;
    if (!SESSION_ID_PATTERN.test(sessionId)) {
      this.showError("A session id is 1 to 128 letters, digits, '.', '_', ':' or '-'.");
      return;
    }
    this.form.elements.session_id.value = sessionId;
    history.replaceState(null, "", `#watch/${encodeURIComponent(sessionId)}`);
    this.view.reset(sessionId);
    this.status(`Watching session ${sessionId}: waiting for its results…`);
    this.toggle.textContent = "Stop watching";
    this.form.elements.session_id.disabled = true;
    // Taken at once, so a second click (or unwatch) while the token comes finds it watching.
    const pending = { close() {} };
    this.socket = pending;
    let url;
    try {
      url = await socketUrl(eventsSocketUrl(sessionId));
    } catch (error) {
      if (this.socket === pending) {
        this.unwatch("Not watching.");
        this.showError(error.message);
      }
      return;
    }
    if (this.socket !== pending) return; // unwatched meanwhile
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => {
      this.panel.dataset.state = "watching";
    };
    socket.onmessage = (message) => this.onEvent(sessionId, JSON.parse(message.data));
    this.showIfFinished(sessionId, socket);
    socket.onclose = (event) => {
      if (socket !== this.socket) return; // closed by unwatch()
      const opened = this.panel.dataset.state === "watching";
      if (event.code === 1008) forget(); // perhaps the token: the next watch gets a fresh one
      this.unwatch("Not watching.");
      this.showError(
        event.code === 1006 && !opened
          ? `Could not reach the gateway at ${eventsSocketUrl(sessionId)}. Is it running?`
          : closeProblem(event, `watching session ${sessionId}`),
      );
    };
  }

  // A session that has ended sends no more events: its report is read back instead.
  async showIfFinished(sessionId, socket) {
    let report;
    try {
      report = await finishedReport(sessionId);
    } catch (error) {
      this.showError(`Could not look up the report of session ${sessionId}: ${error.message}`);
      return;
    }
    if (report && socket === this.socket && this.view.root.dataset.speakers === "0") {
      this.onEvent(sessionId, report);
    }
  }

  onEvent(sessionId, event) {
    if (event.event === "error") {
      this.showError(`The gateway reported ${event.code}: ${event.message}`);
      return;
    }
    if (event.event === "speaker" && this.view.root.dataset.speakers === "0") {
      this.status(`Watching session ${sessionId}.`);
    }
    this.view.handle(event);
    if (event.event === "report") this.unwatch(`Session ${sessionId} is finished; its report is below.`);
  }

  unwatch(status) {
    const socket = this.socket;
    this.socket = null;
    socket?.close(1000);
    if (this.view.root.dataset.state === "live") this.view.halt();
    this.toggle.textContent = "Watch";
    this.form.elements.session_id.disabled = false;
    this.panel.dataset.state = "idle";
    this.status(status);
  }
}
