"""The final report's speakers: offline clustering of a session's tracks, once all of it is known.

Live labels had to be decided with the evidence of the moment; at the end every
track's embedding is known, so the tracks are clustered again together
(average linkage on cosine distance, never joining two tracks that were heard
at the same time). The number of speakers is given, or estimated: merging stops
at `distance`, and a cluster with too little speech to be a speaker of its own
joins its nearest neighbour. The clusters then take the live ids clients have
already seen, wherever the overlap of talk time allows.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def constrained_average_linkage(
    vectors: np.ndarray,
    weights: np.ndarray,
    cannot_link: np.ndarray,
    distance: float,
    num_clusters: int | None = None,
    max_clusters: int | None = None,
    min_cluster_weight: float = 0.0,
) -> np.ndarray:
    """Cluster labels 0..k-1 for each vector.

    Merges the closest admissible pair (size-weighted average linkage) until the
    closest pair is farther than `distance` (when `num_clusters` is None) or
    `num_clusters` remain; then clusters lighter than `min_cluster_weight` join
    their nearest admissible cluster, and past `max_clusters` the closest pairs
    keep merging. Pairs linked by `cannot_link` never merge.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros(0, int)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    dist = 1.0 - unit @ unit.T
    blocked = cannot_link.astype(bool).copy()
    np.fill_diagonal(dist, np.inf)
    size = np.asarray(weights, float).copy()
    members = {i: [i] for i in range(n)}

    def closest(candidates: list[int] | None = None) -> tuple[int, int, float]:
        masked = np.where(blocked, np.inf, dist)
        if candidates is not None:
            rows = np.full(n, np.inf)
            cols = np.full(n, -1)
            for c in candidates:
                cols[c] = int(np.argmin(masked[c]))
                rows[c] = masked[c, cols[c]]
            i = int(np.argmin(rows))
            return i, int(cols[i]), float(rows[i])
        flat = int(np.argmin(masked))
        i, j = divmod(flat, n)
        return i, j, float(masked[i, j])

    def merge(i: int, j: int) -> None:
        wi, wj = size[i], size[j]
        merged = (dist[i] * wi + dist[j] * wj) / (wi + wj)
        dist[i], dist[:, i] = merged, merged
        dist[i, i] = np.inf
        blocked[i] |= blocked[j]
        blocked[:, i] = blocked[i]
        dist[j], dist[:, j] = np.inf, np.inf
        size[i] += size[j]
        members[i] += members.pop(j)

    def stop(d: float) -> bool:
        if not np.isfinite(d):
            return True
        if num_clusters is not None:
            return len(members) <= num_clusters
        return d > distance and (max_clusters is None or len(members) <= max_clusters)

    while len(members) > 1:
        i, j, d = closest()
        if stop(d):
            break
        merge(i, j)
    floor = num_clusters if num_clusters is not None else 1
    while len(members) > floor:
        light = [c for c in members if size[c] < min_cluster_weight]
        if not light:
            break
        i, j, d = closest(light)
        if not np.isfinite(d):
            break
        merge(i, j)
    labels = np.zeros(n, int)
    for label, root in enumerate(sorted(members, key=lambda c: min(members[c]))):
        labels[members[root]] = label
    return labels


def keep_live_ids(overlap: np.ndarray) -> dict[int, int]:
    """(clusters, live speakers) shared talk time -> final id per cluster.

    Each live speaker's id goes to the cluster sharing most talk time with it (one to
    one); a cluster that matches no live speaker gets an id no live speaker used.
    """
    clusters, live = overlap.shape
    final: dict[int, int] = {}
    if live:
        rows, cols = linear_sum_assignment(-overlap)
        final = {int(r): int(c) for r, c in zip(rows, cols) if overlap[r, c] > 0}
    next_id = live
    for c in range(clusters):
        if c not in final:
            final[c] = next_id
            next_id += 1
    return final
