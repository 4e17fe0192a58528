// A recording made in the page, for enrolment: the microphone through the same capture as the
// Live tab (audio-source.js: 16 kHz mono PCM16 frames), kept in memory and handed back as a WAV file.

import { AudioSource } from "./audio-source.js";
import { wavBlob } from "./wav.js";

const SAMPLE_RATE = 16000;

export class ClipRecorder {
  // onProgress(seconds) as frames come.
  constructor({ onProgress } = {}) {
    this.onProgress = onProgress;
    this.frames = [];
    this.bytes = 0;
    this.source = null;
  }

  get seconds() {
    return this.bytes / 2 / SAMPLE_RATE;
  }

  // Asks for the microphone (AudioSourceError, in words, if refused) and records from then on.
  async start() {
    this.frames = [];
    this.bytes = 0;
    this.source = new AudioSource({
      onFrame: (frame) => {
        this.frames.push(frame);
        this.bytes += frame.byteLength;
        this.onProgress?.(this.seconds);
      },
    });
    try {
      await this.source.open(null);
      await this.source.start();
    } catch (error) {
      this.source.close();
      this.source = null;
      throw error;
    }
  }

  // Stops, and resolves with the recording as a WAV file.
  async stop() {
    await this.source?.stop(); // the worklet's last frame comes before it resolves
    this.source = null;
    return new File([wavBlob(this.frames, SAMPLE_RATE)], "recording.wav", { type: "audio/wav" });
  }

  cancel() {
    this.source?.close();
    this.source = null;
    this.frames = [];
    this.bytes = 0;
  }
}
