// The console's tabs (WAI-ARIA tabs: arrow keys move between them) and its addresses:
// #live, #watch, #watch/<session id>, #jobs, #jobs/<job id>, #speakers.

import { authMode, forget, onAuthChange, signIn } from "./auth.js";
import { JobsPanel } from "./jobs.js";
import { LivePanel } from "./live.js";
import { SpeakersPanel } from "./speakers.js";
import { WatchPanel } from "./watch.js";

const tabs = [...document.querySelectorAll('[role="tab"]')];
const panel = (name) => document.querySelector(`[data-panel="${name}"]`);
const panels = {
  live: new LivePanel(panel("live")),
  watch: new WatchPanel(panel("watch")),
  jobs: new JobsPanel(panel("jobs")),
  speakers: new SpeakersPanel(panel("speakers")),
};

function select(name, { focus = false } = {}) {
  for (const tab of tabs) {
    const selected = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    document.getElementById(tab.getAttribute("aria-controls")).hidden = !selected;
    if (selected && focus) tab.focus();
  }
  panels.watch.shown(name === "watch");
  panels.speakers.shown(name === "speakers");
}

for (const tab of tabs) {
  tab.addEventListener("click", () => {
    select(tab.dataset.tab);
    const jobId = tab.dataset.tab === "jobs" ? panels.jobs.jobId : null;
    history.replaceState(null, "", `#${tab.dataset.tab}${jobId ? `/${encodeURIComponent(jobId)}` : ""}`);
  });
  tab.addEventListener("keydown", (event) => {
    const here = tabs.indexOf(tab);
    const target = {
      ArrowRight: (here + 1) % tabs.length,
      ArrowLeft: (here - 1 + tabs.length) % tabs.length,
      Home: 0,
      End: tabs.length - 1,
    }[event.key];
    if (target === undefined) return;
    event.preventDefault();
    tabs[target].click();
    tabs[target].focus();
  });
}

function route() {
  const [name, rawId] = location.hash.slice(1).split("/");
  const id = decodeURIComponent(rawId ?? "");
  if (name === "watch") {
    select("watch");
    if (id && id !== panels.watch.view.sessionId) {
      if (panels.watch.socket) panels.watch.unwatch("Stopped watching.");
      panels.watch.watch(id);
    }
  } else if (name === "jobs") {
    select("jobs");
    if (id && id !== panels.jobs.jobId) panels.jobs.open(id);
  } else if (name === "speakers") {
    select("speakers");
  } else {
    select("live");
  }
}

// Who the page is signed in as, in the header; only when the gateway requires tokens.
const authNote = document.querySelector("[data-part=auth-note]");
const authButton = authNote.querySelector("[data-part=auth-button]");
let signedIn = false;
function showAuth(text) {
  authNote.hidden = false;
  authNote.querySelector("[data-part=auth-text]").textContent = text;
  authButton.textContent = signedIn ? "Forget the key" : "Sign in";
}
onAuthChange((state) => {
  signedIn = state.signedIn;
  showAuth(
    state.signedIn
      ? `Signed in as tenant ${state.tenant ?? "?"}; the token (until ${new Date(state.expiresAt).toLocaleTimeString()}) is renewed before it expires.`
      : "Not signed in: this gateway requires an API key.",
  );
});
authButton.addEventListener("click", () => {
  if (signedIn) forget({ key: true });
  else signIn().catch(() => {}); // a cancelled dialog leaves the note as it is
});
authMode().then((mode) => {
  document.body.dataset.auth = mode;
  if (mode === "required" && authNote.hidden) showAuth("This gateway requires an API key: the page asks for it once.");
});

window.addEventListener("hashchange", route);
route();
