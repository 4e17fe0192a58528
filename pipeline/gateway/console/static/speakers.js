// The Speakers tab: enrol a known speaker from files or a recording made in the page
// (POST /v1/speakers), list the profiles (GET /v1/speakers), add clips to one
// (POST /v1/speakers/{id}/clips) and delete one (DELETE /v1/speakers/{id}). The gateway's
// refusals (too little speech, several voices, not audio, too large) are shown as it words them.

import { AudioSourceError } from "./audio-source.js";
import { ClipRecorder } from "./clip-recorder.js";
import { confirmDialog } from "./confirm-dialog.js";
import { appendError, hideErrors } from "./error-box.js";
import { requestJson, speakerPath } from "./gateway.js";

// The least speech the gateway enrols from (speaker_enrolment.py EnrolmentConfig.min_speech_s):
// the recording says when it has that much sound, not whether the gateway will hear speech in it.
const ENOUGH_S = 3;

export class SpeakersPanel {
  constructor(panel) {
    this.panel = panel;
    this.part = (name) => panel.querySelector(`[data-part="${name}"]`);
    this.form = this.part("enrol-form");
    this.recording = null; // the File of the last recording, until enrolled or discarded
    this.recorder = null;
    this.addingTo = null; // the profile the add-clips chooser is for
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.enrol();
    });
    this.part("record-toggle").addEventListener("click", () => (this.recorder ? this.stopRecording() : this.record()));
    this.part("record-discard").addEventListener("click", () => this.discardRecording());
    this.part("profiles-refresh").addEventListener("click", () => this.refresh());
    this.part("add-clips").addEventListener("change", (event) => this.addClips(event.target));
  }

  shown(visible) {
    if (visible) this.refresh();
  }

  status(text) {
    this.part("speakers-status").textContent = text;
  }

  showError(text) {
    appendError(this.part("speakers-error"), text);
  }

  clearError() {
    hideErrors(this.part("speakers-error"));
  }

  busy(on) {
    this.panel.dataset.busy = on ? "true" : "";
    for (const button of this.panel.querySelectorAll("button")) button.disabled = on;
    if (this.recorder) this.part("record-toggle").disabled = false; // a recording can always be stopped
  }

  async record() {
    this.clearError();
    this.discardRecording();
    const toggle = this.part("record-toggle");
    const line = this.part("record-status");
    this.recorder = new ClipRecorder({
      onProgress: (s) => {
        this.panel.dataset.recordedS = s.toFixed(1);
        // Once a second: the line is a live region, read out by screen readers as it changes.
        if (Math.floor(s) === Math.floor(s - 0.1)) return;
        line.textContent = `Recording: ${Math.floor(s)} s${s < ENOUGH_S ? ` (speak for at least ${ENOUGH_S} s)` : ""}`;
      },
    });
    toggle.disabled = true;
    line.textContent = "Asking for the microphone…";
    try {
      await this.recorder.start();
    } catch (error) {
      this.recorder = null;
      line.textContent = "Not recording.";
      this.showError(error instanceof AudioSourceError ? error.message : `Could not record: ${error}`);
      return;
    } finally {
      toggle.disabled = false;
    }
    toggle.textContent = "Stop recording";
    toggle.setAttribute("aria-pressed", "true");
    this.panel.dataset.recording = "on";
    line.textContent = "Recording: speak now (one voice only).";
  }

  async stopRecording() {
    const recorder = this.recorder;
    this.recorder = null;
    const toggle = this.part("record-toggle");
    toggle.disabled = true;
    const file = await recorder.stop();
    toggle.disabled = false;
    toggle.textContent = "Record again";
    toggle.removeAttribute("aria-pressed");
    this.panel.dataset.recording = "done";
    this.recording = file;
    const preview = this.part("record-preview");
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    this.part("record-discard").hidden = false;
    this.part("record-status").textContent = `Recorded ${recorder.seconds.toFixed(1)} s; it is sent with Enrol.`;
  }

  discardRecording() {
    const preview = this.part("record-preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.removeAttribute("src");
    preview.hidden = true;
    this.part("record-discard").hidden = true;
    this.part("record-toggle").textContent = "Record";
    this.part("record-status").textContent = "or record here";
    this.recording = null;
    this.panel.dataset.recording = "";
  }

  clipsForm() {
    const body = new FormData();
    for (const file of this.form.elements.clips.files) body.append("clips", file, file.name);
    if (this.recording) body.append("clips", this.recording, this.recording.name);
    return body;
  }

  async enrol() {
    this.clearError();
    if (this.recorder) await this.stopRecording();
    const name = this.form.elements.name.value.trim();
    const body = this.clipsForm();
    if (!name) {
      this.showError("Give the speaker a name.");
      return;
    }
    if (!body.has("clips")) {
      this.showError("Choose files of their voice, or record it, first.");
      return;
    }
    body.append("name", name);
    this.busy(true);
    this.status(`Enrolling ${name}: the gateway embeds the speech of each clip…`);
    let profile;
    try {
      profile = await requestJson("/v1/speakers", "the enrolment", { method: "POST", body });
    } catch (error) {
      this.status(`${name} was not enrolled.`);
      this.showError(error.message);
      return;
    } finally {
      this.busy(false);
    }
    this.form.reset();
    this.discardRecording();
    this.status(`Enrolled ${profile.name} from ${profile.clips} clip${profile.clips === 1 ? "" : "s"} (${profile.speechS.toFixed(1)} s of speech).`);
    await this.refresh();
  }

  async refresh() {
    const note = this.part("profiles-note");
    let speakers;
    try {
      ({ speakers } = await requestJson("/v1/speakers", "the list of speakers"));
    } catch (error) {
      note.textContent = `Could not list the speakers: ${error.message}`;
      return;
    }
    note.textContent = speakers.length
      ? `${speakers.length} enrolled: live sessions and jobs name these voices when they hear them.`
      : "Nobody is enrolled yet.";
    this.part("profiles").replaceChildren(...speakers.map((speaker) => this.row(speaker)));
  }

  row(speaker) {
    const row = document.createElement("tr");
    row.dataset.profile = speaker.id;
    const name = document.createElement("th");
    name.scope = "row";
    const models = document.createElement("span");
    models.className = "help models";
    models.textContent = speaker.models.join(", ");
    name.append(speaker.name, document.createElement("br"), models);
    const speech = document.createElement("td");
    speech.textContent = `${speaker.speechS.toFixed(1)} s`;
    const clips = document.createElement("td");
    clips.textContent = String(speaker.clips);
    const actions = document.createElement("td");
    actions.className = "actions";
    const add = document.createElement("button");
    add.type = "button";
    add.textContent = "Add clips…";
    add.setAttribute("aria-label", `Add clips to ${speaker.name}`);
    add.addEventListener("click", () => {
      this.addingTo = speaker;
      this.part("add-clips").click();
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${speaker.name}`);
    remove.addEventListener("click", () => this.remove(speaker));
    actions.append(add, remove);
    row.append(name, speech, clips, actions);
    return row;
  }

  async addClips(input) {
    const speaker = this.addingTo;
    const files = [...input.files];
    input.value = "";
    if (!speaker || !files.length) return;
    this.clearError();
    const body = new FormData();
    for (const file of files) body.append("clips", file, file.name);
    this.busy(true);
    this.status(`Adding ${files.length} clip${files.length === 1 ? "" : "s"} to ${speaker.name}…`);
    try {
      const updated = await requestJson(`${speakerPath(speaker.id)}/clips`, "the clips", { method: "POST", body });
      this.status(`${updated.name} now has ${updated.clips} clips (${updated.speechS.toFixed(1)} s of speech).`);
    } catch (error) {
      this.status(`No clip was added to ${speaker.name}.`);
      this.showError(error.message);
    } finally {
      this.busy(false);
    }
    await this.refresh();
  }

  async remove(speaker) {
    const confirmed = await confirmDialog(
      `Delete ${speaker.name}?`,
      "Sessions from now on no longer name this voice. The profile cannot be brought back; enrol the voice again instead.",
    );
    if (!confirmed) return;
    this.clearError();
    try {
      await requestJson(speakerPath(speaker.id), "deleting the speaker", { method: "DELETE" });
      this.status(`${speaker.name} was deleted.`);
    } catch (error) {
      this.showError(error.message);
    }
    await this.refresh();
  }
}
