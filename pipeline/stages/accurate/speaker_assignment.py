"""Which global speaker is each of a window's tracks: an optimal assignment under cannot-link.

Tracks present in one window are different voices (the segmentation model
separated them), so no two of them may map to the same speaker. Among all
one-to-one mappings the one with the least total cosine distance wins; a track
may instead open a new speaker, at the cost `new_speaker_distance`, while the
session is under its speaker limit and the track is allowed to (enough speech
to be trusted with a new identity).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

NEW = -1  # assignment result: the track opens a new speaker
_FORBIDDEN = 1e6


def cosine_distances(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    if not len(vectors) or not len(centroids):
        return np.zeros((len(vectors), len(centroids)))
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    return 1.0 - a @ b.T


def assign(
    distances: np.ndarray, may_open: list[bool], slots_left: int, new_speaker_distance: float
) -> list[int | None]:
    """(tracks, speakers) cosine distances -> per track: a speaker index, NEW, or None (no admissible speaker).

    Tracks trusted to open a speaker are placed first; the others then share the
    speakers left, so a short, uncertain track can never push a confident one aside.
    """
    n, m = distances.shape
    result: list[int | None] = [None] * n
    trusted = [i for i in range(n) if may_open[i]]
    others = [i for i in range(n) if not may_open[i]]
    for i, choice in zip(trusted, _optimal(distances[trusted], slots_left, new_speaker_distance)):
        result[i] = choice
    taken = {c for c in result if c is not None and c != NEW}
    free = [c for c in range(m) if c not in taken]
    for i, choice in zip(others, _optimal(distances[np.ix_(others, free)], 0, new_speaker_distance)):
        result[i] = free[choice] if choice is not None else None
    return result


def _optimal(distances: np.ndarray, slots_left: int, new_speaker_distance: float) -> list[int | None]:
    n, m = distances.shape
    allowed = [True] * n
    while True:
        cost = np.full((n, m + n), _FORBIDDEN)
        cost[:, :m] = distances
        for i in range(n):
            if allowed[i] and slots_left > 0:
                cost[i, m + i] = new_speaker_distance
        rows, cols = linear_sum_assignment(cost)
        result: list[int | None] = [None] * n
        opened = []
        for r, c in zip(rows, cols):
            if cost[r, c] >= _FORBIDDEN:
                continue
            result[r] = NEW if c >= m else int(c)
            if c >= m:
                opened.append(int(r))
        if len(opened) <= slots_left:
            return result
        # More new voices than room: the one closest to an existing speaker gives up its new identity.
        closest = min(opened, key=lambda r: distances[r].min() if m else 0.0)
        allowed[closest] = False
