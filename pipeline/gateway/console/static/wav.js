// 16-bit PCM as a WAV file: the RIFF header (44 bytes) and the samples, little-endian. The
// gateway's uploads take WAV, FLAC, MP3 or OGG; WAV is the one a page can write without a codec.

export function wavBlob(frames, sampleRate, channels = 1) {
  const dataBytes = frames.reduce((sum, frame) => sum + frame.byteLength, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, value) => [...value].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  header.setUint32(4, 36 + dataBytes, true);
  text(8, "WAVE");
  text(12, "fmt ");
  header.setUint32(16, 16, true); // the fmt chunk's size
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, channels, true);
  header.setUint32(24, sampleRate, true);
  header.setUint32(28, sampleRate * channels * 2, true); // bytes per second
  header.setUint16(32, channels * 2, true); // bytes per sample frame
  header.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  header.setUint32(40, dataBytes, true);
  return new Blob([header, ...frames], { type: "audio/wav" });
}
