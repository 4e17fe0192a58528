"""From overlapping windows to one timeline: average the windows that cover each frame, then binarize.

Every time point is seen by up to window/step windows. Labels for a region are
settled `latency` after it: the windows that have covered it by then vote (a
mean of their activity per speaker), so a longer latency means more context per
decision. Activities are read on a fixed output grid of `FRAME_S` so windows
whose model frames do not line up still add up frame by frame.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

FRAME_S = 0.01


class WindowActivity(BaseModel):
    """What the aggregation keeps of one segmented window."""

    model_config = ConfigDict(extra="forbid")

    start_s: float
    end_s: float
    frame_offset_s: float
    frame_step_s: float
    tracks: list[int]
    follows: list[int] = []
    activity: list[list[float]]  # per local speaker, per frame, in [0, 1]
    # The global speaker of each slot as decided when the window arrived (None: not identified yet).
    speakers: list[int | None] = []

    def at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(times, slots) activity at `times` (s), and which of the times this window covers."""
        covered = (times >= self.start_s) & (times < self.end_s)
        if not self.activity:  # nobody spoke in this window
            return np.zeros((len(times), 0), np.float32), covered
        frames = np.asarray(self.activity, np.float32).T
        model_times = self.start_s + self.frame_offset_s + self.frame_step_s * np.arange(frames.shape[0])
        values = np.stack([np.interp(times, model_times, frames[:, k]) for k in range(frames.shape[1])], axis=1)
        return values * covered[:, None], covered


def seconds_to_ms(seconds: float) -> int:
    """A time on the timeline as the messages carry it: whole milliseconds, rounded."""
    return int(round(seconds * 1000))


def output_grid(start_s: float, end_s: float) -> np.ndarray:
    """Centres of the output frames in [start_s, end_s)."""
    first, last = int(round(start_s / FRAME_S)), int(round(end_s / FRAME_S))
    return (np.arange(first, last) + 0.5) * FRAME_S


def aggregate(windows: list[WindowActivity], times: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per speaker: the mean activity over covering windows at `times`, and the dominant track per frame.

    Slots not identified yet do not vote for anyone. Within one window two slots of the
    same speaker add up (capped at 1): a voice split in two by the segmentation counts once.
    """
    sums: dict[int, np.ndarray] = {}
    best_track: dict[int, np.ndarray] = {}
    best_value: dict[int, np.ndarray] = {}
    coverage = np.zeros(len(times))
    for window in windows:
        values, covered = window.at(times)
        if not covered.any():
            continue
        coverage += covered
        per_key: dict[int, np.ndarray] = {}
        for slot, track in enumerate(window.tracks):
            key = window.speakers[slot] if track >= 0 and slot < len(window.speakers) else None
            if key is None:
                continue
            per_key[key] = per_key.get(key, 0.0) + values[:, slot]
            track_sum = best_value.setdefault(key, np.zeros(len(times)))
            better = values[:, slot] > track_sum
            best_value[key] = np.where(better, values[:, slot], track_sum)
            best_track[key] = np.where(better, track, best_track.get(key, np.full(len(times), -1)))
        for key, value in per_key.items():
            sums[key] = sums.get(key, np.zeros(len(times))) + np.minimum(value, 1.0)
    means = {key: total / np.maximum(coverage, 1) for key, total in sums.items()}
    return means, best_track


class Binarizer(BaseModel):
    """Hysteresis per speaker across regions: on at `onset`, off below `offset`."""

    model_config = ConfigDict(extra="forbid")

    active: dict[int, float] = {}  # speaker -> start (s) of the span in progress

    def push(
        self, times: np.ndarray, activity: dict[int, np.ndarray], onset: float, offset: float
    ) -> list[tuple[int, float, float]]:
        """Settle the region spanned by `times`; returns (speaker, start_s, end_s) pieces inside it."""
        if not len(times):
            return []
        region_start, region_end = times[0] - FRAME_S / 2, times[-1] + FRAME_S / 2
        pieces = []
        for speaker in sorted(set(activity) | set(self.active)):
            values = activity.get(speaker, np.zeros(len(times)))
            start = self.active.pop(speaker, None)
            if start is not None:
                start = max(start, region_start)
            for t, value in zip(times, values):
                if start is None and value >= onset:
                    start = t - FRAME_S / 2
                elif start is not None and value < offset:
                    pieces.append((speaker, start, t - FRAME_S / 2))
                    start = None
            if start is not None:
                pieces.append((speaker, start, region_end))
                self.active[speaker] = region_end
        return [p for p in pieces if p[2] > p[1]]
