// Audio for a live session: the microphone, or a file played in real time as if it were one.
// Either way the audio goes through the pcm16-downsampler worklet, which hands back 16 kHz mono
// PCM16 frames; the page sends them to the gateway as they come.

const WORKLET_URL = new URL("./pcm16-worklet.js", import.meta.url);
// Frames of 100 ms: small enough for a live view, 3200 bytes each, far under the gateway's frame limit.
const FRAME_MS = 100;

// An error whose message is meant for the person at the page.
export class AudioSourceError extends Error {}

// The browser's raw signal: echo cancellation, noise suppression and gain control would reshape
// voices before diarization hears them.
const MICROPHONE_CONSTRAINTS = {
  audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
};

export class AudioSource {
  // onFrame(ArrayBuffer) for each frame; onEnded() when a file has played to its end.
  constructor({ onFrame, onEnded }) {
    this.onFrame = onFrame;
    this.onEnded = onEnded;
    this.context = null;
    this.node = null;
    this.input = null;
    this.stream = null;
    this.durationS = null;
  }

  // Called from the click that starts the session: browsers only let a gesture start audio.
  async open(file) {
    if (!window.isSecureContext || !window.AudioWorkletNode) {
      throw new AudioSourceError(
        "This browser gives audio to pages on https or on localhost only: open the console at http://localhost:<port>/ or over https.",
      );
    }
    this.context = new AudioContext();
    await this.context.audioWorklet.addModule(WORKLET_URL);
    this.node = new AudioWorkletNode(this.context, "pcm16-downsampler", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCount: 1,
      channelCountMode: "explicit",
      channelInterpretation: "speakers",
      processorOptions: { frameMs: FRAME_MS },
    });
    this.node.port.onmessage = (event) => {
      if (event.data instanceof ArrayBuffer) this.onFrame(event.data);
      else if (event.data === "flushed") this.flushed?.();
    };
    // The worklet's output is silent; it is connected only so the graph keeps pulling it.
    const mute = new GainNode(this.context, { gain: 0 });
    this.node.connect(mute).connect(this.context.destination);
    if (file) await this.openFile(file);
    else await this.openMicrophone();
  }

  async openMicrophone() {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new AudioSourceError("This browser offers no microphone to pages. Play a file instead.");
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia(MICROPHONE_CONSTRAINTS);
    } catch (error) {
      throw new AudioSourceError(microphoneProblem(error));
    }
    this.input = new MediaStreamAudioSourceNode(this.context, { mediaStream: this.stream });
  }

  async openFile(file) {
    let buffer;
    try {
      buffer = await this.context.decodeAudioData(await file.arrayBuffer());
    } catch (error) {
      throw new AudioSourceError(`The browser cannot decode ${file.name}: ${error.message || error}`);
    }
    this.durationS = buffer.duration;
    this.input = new AudioBufferSourceNode(this.context, { buffer });
    this.input.onended = () => this.onEnded?.();
    // Heard as it is sent, so a person can follow the timeline.
    this.input.connect(this.context.destination);
  }

  // Audio flows from here on; nothing captured before reaches the gateway.
  async start() {
    await this.context.resume();
    this.input.connect(this.node);
    if (this.input instanceof AudioBufferSourceNode) this.input.start();
  }

  // Stops the audio; resolves once the worklet has posted its last frame.
  async stop() {
    if (!this.node) return;
    const flushed = new Promise((resolve) => {
      this.flushed = resolve;
    });
    if (this.input instanceof AudioBufferSourceNode) {
      this.input.onended = null;
      try {
        this.input.stop();
      } catch {
        // never started
      }
    }
    this.input?.disconnect();
    this.node.port.postMessage("flush");
    await Promise.race([flushed, new Promise((resolve) => setTimeout(resolve, 500))]);
    this.close();
  }

  close() {
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.node?.port.close();
    this.context?.close();
    this.context = this.node = this.input = this.stream = null;
  }
}

function microphoneProblem(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was refused. Allow it for this page in the browser's site settings, or play a file instead.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Connect one, or play a file instead.";
    case "NotReadableError":
      return "The microphone is in use by another program or could not be opened.";
    default:
      return `The microphone could not be opened: ${error?.message || error}`;
  }
}
