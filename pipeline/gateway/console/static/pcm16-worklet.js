// AudioWorklet processor: whatever the audio context's rate, mono 16 kHz PCM16 frames for the gateway.
//
// Channels are averaged to mono, then resampled by windowed-sinc interpolation: each output
// sample is the input band-limited below the output's Nyquist rate (so 48 kHz speech does not
// alias into the 16 kHz stream) and read at its fractional input position. The kernel is tabled
// at 1/64 of an input sample, which keeps the cost at a few dozen multiply-adds per output sample.
// Frames of `frameMs` are posted to the page as transferred ArrayBuffers of little-endian int16;
// the message "flush" posts what is left as a last, shorter frame, then "flushed".

const TARGET_RATE = 16000;
const TAPS_PER_SIDE = 16; // zero crossings of the kernel on each side, at the output rate
const TABLE_STEPS = 64; // kernel values per input sample
const CUTOFF = 0.45; // of the output rate: a little under its Nyquist frequency, for the filter's roll-off

class Pcm16Downsampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const frameMs = options.processorOptions?.frameMs ?? 100;
    this.ratio = sampleRate / TARGET_RATE; // input samples per output sample
    // Downsampling narrows the kernel's passband to the output's; upsampling keeps the input's.
    const cutoff = CUTOFF * Math.min(1, 1 / this.ratio); // cycles per input sample
    this.half = Math.ceil(TAPS_PER_SIDE * Math.max(1, this.ratio)); // kernel half-width, input samples
    this.kernel = kernelTable(cutoff, this.half);
    this.input = new Float32Array(4 * this.half + 8192);
    this.filled = this.half; // leading zeros: the first output sample has a full window
    this.position = this.half; // fractional index in `input` of the next output sample
    this.frame = new Int16Array(Math.round((TARGET_RATE * frameMs) / 1000));
    this.frameFill = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.postFrame();
        this.port.postMessage("flushed");
      }
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      this.append(channels);
      this.resample();
    }
    return true;
  }

  append(channels) {
    const length = channels[0].length;
    if (this.filled + length > this.input.length) {
      const keep = Math.floor(this.position) - this.half; // samples no later output needs
      this.input.copyWithin(0, keep, this.filled);
      this.filled -= keep;
      this.position -= keep;
    }
    for (let i = 0; i < length; i++) {
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      this.input[this.filled + i] = sum / channels.length;
    }
    this.filled += length;
  }

  resample() {
    const { input, kernel, half } = this;
    while (this.position + half < this.filled) {
      const centre = Math.floor(this.position);
      const fraction = this.position - centre;
      let sum = 0;
      for (let k = -half + 1; k <= half; k++) {
        const distance = Math.abs(k - fraction); // of input sample centre + k from the output position
        sum += input[centre + k] * kernel[Math.round(distance * TABLE_STEPS)];
      }
      this.push(sum);
      this.position += this.ratio;
    }
  }

  push(sample) {
    const clipped = Math.max(-1, Math.min(1, sample));
    this.frame[this.frameFill++] = Math.round(clipped * 32767);
    if (this.frameFill === this.frame.length) this.postFrame();
  }

  postFrame() {
    if (this.frameFill === 0) return;
    const bytes = new ArrayBuffer(this.frameFill * 2);
    const view = new DataView(bytes);
    for (let i = 0; i < this.frameFill; i++) view.setInt16(2 * i, this.frame[i], true);
    this.frameFill = 0;
    this.port.postMessage(bytes, [bytes]);
  }
}

// A low-pass of `cutoff` cycles per sample, Blackman-windowed over `half` samples each side,
// tabled by distance from the centre in steps of 1/TABLE_STEPS sample.
function kernelTable(cutoff, half) {
  const table = new Float32Array(half * TABLE_STEPS + 2);
  for (let i = 0; i < table.length; i++) {
    const t = i / TABLE_STEPS;
    if (t >= half) break; // zeros beyond the window
    const x = 2 * cutoff * t;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const phase = (Math.PI * (t + half)) / half; // the window over [-half, half] mapped onto [0, 2 pi]
    const window = 0.42 - 0.5 * Math.cos(phase) + 0.08 * Math.cos(2 * phase);
    table[i] = 2 * cutoff * sinc * window;
  }
  return table;
}

registerProcessor("pcm16-downsampler", Pcm16Downsampler);
