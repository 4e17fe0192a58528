"""Speaker embedding: speech steps in, steps with a Resemblyzer embedding out.

Stateless per session, so embedding workers scale out freely. Windows from
many sessions go through the encoder as one padded batch; the LSTM is run on
packed sequences so that padding never reaches the final hidden state.
"""

from __future__ import annotations

import numpy as np
import torch
from resemblyzer import VoiceEncoder
from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram

from pipeline.config import EmbeddingConfig
from pipeline.stages.device import pick_device
from topics.messages import SpeechStep, StepEmbedding


class ResemblyzerEmbedder:
    """Resemblyzer's GE2E encoder (weights ship in its wheel) applied to a batch of windows."""

    dimension = 256

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self.device = pick_device(config.device, config.cpu_threads)
        self.encoder = VoiceEncoder(device=self.device, verbose=False)
        self.encoder.eval()

    @torch.inference_mode()
    def embed(self, windows: list[np.ndarray]) -> np.ndarray:
        """int16 windows -> (len(windows), 256) unit vectors."""
        if not windows:
            return np.zeros((0, self.dimension), np.float32)
        mels = [
            torch.from_numpy(
                wav_to_mel_spectrogram(
                    normalize_volume(w.astype(np.float32) / 32768.0, self.config.target_dbfs, increase_only=True)
                )
            )
            for w in windows
        ]
        lengths = torch.tensor([m.shape[0] for m in mels])
        padded = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True).to(self.device)
        packed = torch.nn.utils.rnn.pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.encoder.lstm(packed)
        raw = self.encoder.relu(self.encoder.linear(hidden[-1]))
        return torch.nn.functional.normalize(raw, dim=1).cpu().numpy()


class EmbeddingStage:
    """The fast profile's embed stage (`pipeline.stages.base.EmbedStage`)."""

    input_type = SpeechStep
    model_name = "resemblyzer-ge2e"

    def __init__(self, embedder: ResemblyzerEmbedder) -> None:
        self.embedder = embedder
        self.max_batch = embedder.config.max_batch
        self.max_wait_s = embedder.config.max_wait_s

    @property
    def device(self) -> str:
        return self.embedder.device.type

    def process(self, steps: list[SpeechStep]) -> list[StepEmbedding]:
        """Embed every step that carries a window, in one batch; keep order."""
        with_window = [i for i, s in enumerate(steps) if s.num_samples]
        vectors = self.embedder.embed([np.frombuffer(steps[i].pcm, dtype="<i2") for i in with_window])
        embedding_of = {i: vectors[row].tolist() for row, i in enumerate(with_window)}
        return [
            StepEmbedding(
                session_id=s.session_id,
                step=s.step,
                start=s.start,
                end=s.end,
                voiced=s.voiced,
                ingest_ms=s.ingest_ms,
                embedding=embedding_of.get(i),
                speech=s.speech,
            )
            for i, s in enumerate(steps)
        ]
