// The console's tabs (WAI-ARIA tabs: arrow keys move between them) and its addresses:
// #live, #watch, #watch/<session id>.

import { LivePanel } from "./live.js";
import { WatchPanel } from "./watch.js";

const tabs = [...document.querySelectorAll('[role="tab"]')];
const panels = {
  live: new LivePanel(document.querySelector('[data-panel="live"]')),
  watch: new WatchPanel(document.querySelector('[data-panel="watch"]')),
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
}

for (const tab of tabs) {
  tab.addEventListener("click", () => {
    select(tab.dataset.tab);
    history.replaceState(null, "", `#${tab.dataset.tab}`);
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
  const [name, sessionId] = location.hash.slice(1).split("/");
  if (name === "watch") {
    select("watch");
    const id = decodeURIComponent(sessionId ?? "");
    if (id && id !== panels.watch.view.sessionId) {
      if (panels.watch.socket) panels.watch.unwatch("Stopped watching.");
      panels.watch.watch(id);
    }
  } else {
    select("live");
  }
}

window.addEventListener("hashchange", route);
route();
