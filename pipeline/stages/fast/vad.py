"""Voice activity detection: audio chunks in, one speech step per `step_s` out.

Silero VAD (the ONNX model shipped in the `silero-vad` wheel) labels each 32 ms
frame; hysteresis turns probabilities into voiced/unvoiced samples. Every step
reports its voiced sample count and, when there is enough speech, the voiced
window to embed: the voiced samples within `context_s` of the step that belong
to the speech run the step mostly falls in.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime

from pipeline.config import VadConfig
from pipeline.stages.audio_session import AudioSessionState, true_runs
from pipeline.stages.base import push_each
from topics.messages import SAMPLE_RATE, AudioChunk, SessionStart, SessionStop, SpeechStep

# Silero v5+ keeps this many samples of the previous frame as left context.
_CONTEXT_SAMPLES = 64
_RNN_SHAPE = (2, 1, 128)


def silero_model_path() -> Path:
    # find_spec locates the wheel's data without importing silero_vad (which pulls in torch).
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed; run `make setup`")
    return Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.onnx"


class SileroVad:
    """The model: shared by all sessions; per-session state is passed in and out."""

    def __init__(self, path: Path | None = None) -> None:
        options = onnxruntime.SessionOptions()
        # One frame is tiny; more threads only add contention with the other stages.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(path or silero_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def frame_probability(self, frame: np.ndarray, state: VadSessionState) -> float:
        model_input = np.concatenate([state.model_context, frame])[np.newaxis, :]
        probability, state.rnn_state = self._session.run(
            None, {"input": model_input, "state": state.rnn_state, "sr": self._sr}
        )
        state.model_context = frame[-_CONTEXT_SAMPLES:]
        return float(probability[0, 0])


@dataclass
class VadSessionState(AudioSessionState):
    """Everything one session's VAD needs to resume on another worker."""

    speaking: bool = False
    pause_frames: int = 0  # consecutive frames below `release` while speaking
    next_step: int = 0
    rnn_state: np.ndarray = field(default_factory=lambda: np.zeros(_RNN_SHAPE, np.float32))
    model_context: np.ndarray = field(default_factory=lambda: np.zeros(_CONTEXT_SAMPLES, np.float32))
    unframed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # < one frame, not yet labelled
    # Labelled samples kept for the windows of steps not yet emitted; buffer_start is the position of [0].
    buffer_start: int = 0
    buffer_pcm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    buffer_voiced: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    ARRAYS = ("rnn_state", "model_context", "unframed", "buffer_pcm", "buffer_voiced")
    SCALARS = (*AudioSessionState.SCALARS, "speaking", "pause_frames", "next_step", "buffer_start")


class VadStage:
    """The fast profile's segment stage (`pipeline.stages.base.SegmentStage`)."""

    state_type = VadSessionState
    model_name = "silero-vad"
    device = "cpu"  # SileroVad runs on onnxruntime's CPU provider

    def __init__(self, config: VadConfig, model: SileroVad) -> None:
        self.config = config
        self.model = model
        self._step = config.samples(config.step_s)
        self._context = config.samples(config.context_s)
        self._run_gap = config.samples(config.run_gap_s)
        self._min_window = config.samples(config.min_window_voiced_s)
        self._min_pause_frames = max(1, config.samples(config.min_silence_s) // config.frame_samples)
        if config.min_silence_s > config.context_s:
            raise ValueError("min_silence_s must not exceed context_s: pauses are relabelled before steps leave")

    def start(self, message: SessionStart) -> VadSessionState:
        return VadSessionState(last_seq=message.seq)

    def push(self, state: VadSessionState, chunk: AudioChunk, ingest_ms: int) -> list[SpeechStep]:
        """Feed one chunk; return the steps it completes. Replayed chunks are ignored."""
        pcm = state.accept(chunk, ingest_ms)
        if pcm is None:
            return []
        self._label(state, np.concatenate([state.unframed, pcm]))
        return self._emit(state, session_id=chunk.session_id, final=False)

    def push_many(
        self, pushes: Sequence[tuple[VadSessionState, AudioChunk, int]]
    ) -> list[list[SpeechStep] | Exception]:
        # Silero runs frame by frame on each session's own RNN state: nothing to batch across sessions.
        return push_each(self.push, pushes)

    def finish(self, state: VadSessionState, message: SessionStop) -> list[SpeechStep | SessionStop]:
        """End of stream: label the partial frame, emit every remaining step, then the stop.

        Nothing for a stop already applied.
        """
        if not state.accept_stop(message):
            return []
        if len(state.unframed):
            real = len(state.unframed)
            padded = np.concatenate([state.unframed, np.zeros(self.config.frame_samples - real, np.int16)])
            self._label(state, padded, keep=real)
        return [*self._emit(state, session_id=message.session_id, final=True), message]

    def _label(self, state: VadSessionState, pcm: np.ndarray, keep: int | None = None) -> None:
        frame_len = self.config.frame_samples
        whole = len(pcm) // frame_len * frame_len
        labelled = whole if keep is None else keep
        first = len(state.buffer_pcm)
        state.buffer_pcm = np.concatenate([state.buffer_pcm, pcm[:labelled]])
        state.buffer_voiced = np.concatenate([state.buffer_voiced, np.zeros(labelled, bool)])
        for start in range(first, first + whole, frame_len):
            frame = pcm[start - first : start - first + frame_len].astype(np.float32) / 32768.0
            voiced, unvoice_before = self._hysteresis(state, self.model.frame_probability(frame, state))
            state.buffer_voiced[start - unvoice_before : start] = False
            state.buffer_voiced[start : start + frame_len] = voiced
        state.unframed = pcm[whole:].copy() if keep is None else np.zeros(0, np.int16)

    def _hysteresis(self, state: VadSessionState, probability: float) -> tuple[bool, int]:
        """(is this frame voiced, how many samples before it to relabel as silence).

        Speech starts above `threshold`; it ends only after `min_silence_s` below
        `release`. Frames of a pause are provisionally voiced; once the pause proves
        long enough they are relabelled silent. Emission waits `context_s` >=
        `min_silence_s`, so the relabelled frames are still in the buffer.
        """
        if not state.speaking:
            state.speaking = probability >= self.config.threshold
            return state.speaking, 0
        if probability >= self.config.release:
            state.pause_frames = 0
            return True, 0
        state.pause_frames += 1
        if state.pause_frames < self._min_pause_frames:
            return True, 0
        unvoice_before = (state.pause_frames - 1) * self.config.frame_samples
        state.speaking = False
        state.pause_frames = 0
        return False, unvoice_before

    def _emit(self, state: VadSessionState, session_id: str, final: bool) -> list[SpeechStep]:
        steps = []
        labelled_end = state.buffer_start + len(state.buffer_pcm)
        # Frames of a pause still in progress are provisionally voiced; only what precedes them is final.
        final_end = labelled_end - state.pause_frames * self.config.frame_samples
        while True:
            start = state.next_step * self._step
            end = start + self._step
            # A step waits for its right-hand context unless the stream has ended.
            if not final and end + self._context > final_end:
                break
            if final and start >= labelled_end:
                break
            end = min(end, labelled_end)
            steps.append(self._step_at(state, session_id, start, end))
            state.next_step += 1
        self._trim(state)
        return steps

    def _step_at(self, state: VadSessionState, session_id: str, start: int, end: int) -> SpeechStep:
        base = state.buffer_start
        voiced = state.buffer_voiced[start - base : end - base]
        voiced_in_step = int(voiced.sum())
        window = np.zeros(0, np.int16)
        if voiced_in_step:
            lo = max(start - self._context, base)
            hi = min(end + self._context, base + len(state.buffer_pcm))
            window = self._window(
                state.buffer_pcm[lo - base : hi - base],
                state.buffer_voiced[lo - base : hi - base],
                start - lo,
                end - lo,
            )
        return SpeechStep(
            session_id=session_id,
            step=state.next_step,
            start=start,
            end=end,
            voiced=voiced_in_step,
            ingest_ms=state.ingest_ms,
            speech=[(start + a, start + b) for a, b in true_runs(voiced)],
            pcm=window.astype("<i2").tobytes(),
        )

    def _window(self, pcm: np.ndarray, voiced: np.ndarray, step_lo: int, step_hi: int) -> np.ndarray:
        """Voiced samples of the speech run holding most of the step's speech."""
        indices = np.flatnonzero(voiced)
        breaks = np.flatnonzero(np.diff(indices) > self._run_gap) + 1
        best, best_overlap = None, 0
        for run in np.split(indices, breaks):
            overlap = int(np.count_nonzero((run >= step_lo) & (run < step_hi)))
            if overlap > best_overlap:
                best, best_overlap = run, overlap
        if best is None or len(best) < self._min_window:
            return np.zeros(0, np.int16)
        return pcm[best]

    def _trim(self, state: VadSessionState) -> None:
        keep_from = max(state.next_step * self._step - self._context, state.buffer_start)
        drop = keep_from - state.buffer_start
        if drop > 0:
            state.buffer_pcm = state.buffer_pcm[drop:]
            state.buffer_voiced = state.buffer_voiced[drop:]
            state.buffer_start = keep_from
