"""The final report's speakers: offline clustering of a session's tracks, once all of it is known.

Live labels had to be decided with the evidence of the moment; at the end every
track's embedding is known, so the tracks are clustered again together
(average linkage on cosine distance, never joining two tracks that were heard
at the same time). A cluster with too little speech to be a speaker of its own
(`min_cluster_weight`) is not counted: it joins its nearest speaker. The number
of speakers is estimated where merging passes `distance`. When fewer are wanted
(the count given, or the upper bound), the speakers go on merging, the pair that
costs least first (Ward: distance times the weight the merge moves), so a small
cluster of noise or of one voice's odd moments joins a speaker before two voices
merge. When more are wanted, the merging stops earlier, at the step nearest the
threshold with the count wanted (after pyannote's `AgglomerativeClustering`). So a
blip of noise never takes one of the speakers asked for. The clusters then take
the live ids clients have already seen, wherever the overlap of talk time allows.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

LEFT_OUT = -1  # label of a vector that belongs to no speaker


class _Linkage:
    """Size-weighted average linkage under cannot-link, merge by merge."""

    def __init__(self, distances: np.ndarray, weights: np.ndarray, cannot_link: np.ndarray) -> None:
        n = len(distances)
        self.dist = distances.copy()
        np.fill_diagonal(self.dist, np.inf)
        self.blocked = cannot_link.astype(bool).copy()
        self.size = np.asarray(weights, float).copy()
        self.members = {i: [i] for i in range(n)}

    def closest(self, rows: list[int] | None = None, columns: list[int] | None = None) -> tuple[int, int, float]:
        """The closest admissible pair (among `rows` x `columns` when given): i, j, distance (inf: none)."""
        masked = np.where(self.blocked, np.inf, self.dist)
        if rows is not None:
            masked = masked[np.ix_(rows, columns)]
        if not masked.size:
            return -1, -1, np.inf
        i, j = divmod(int(np.argmin(masked)), masked.shape[1])
        d = float(masked[i, j])
        return (rows[i], columns[j], d) if rows is not None else (i, j, d)

    def cheapest(self, clusters: list[int]) -> tuple[int, int, float]:
        """The admissible pair of `clusters` that costs least to merge: distance times harmonic weight (Ward)."""
        if len(clusters) < 2:
            return -1, -1, np.inf
        index = np.asarray(clusters)
        size = self.size[index]
        cost = self.dist[np.ix_(index, index)] * np.outer(size, size) / np.add.outer(size, size)
        cost[self.blocked[np.ix_(index, index)] | ~np.triu(np.ones_like(cost, bool), 1)] = np.inf
        i, j = divmod(int(np.argmin(cost)), len(index))
        return int(index[i]), int(index[j]), float(cost[i, j])

    def merge(self, i: int, j: int) -> None:
        dist, wi, wj = self.dist, self.size[i], self.size[j]
        merged = (dist[i] * wi + dist[j] * wj) / (wi + wj)
        dist[i], dist[:, i] = merged, merged
        dist[i, i] = np.inf
        self.blocked[i] |= self.blocked[j]
        self.blocked[:, i] = self.blocked[i]
        dist[j], dist[:, j] = np.inf, np.inf
        self.size[i] += self.size[j]
        self.members[i] += self.members.pop(j)

    def speakers(self, min_weight: float) -> list[int]:
        return [c for c in self.members if self.size[c] >= min_weight]


def constrained_average_linkage(
    vectors: np.ndarray,
    weights: np.ndarray,
    cannot_link: np.ndarray,
    distance: float,
    num_clusters: int | None = None,
    max_clusters: int | None = None,
    min_cluster_weight: float = 0.0,
    min_clusters: int = 1,
    min_speaker_share: float = 0.0,
    max_items: int | None = None,
) -> np.ndarray:
    """Cluster labels 0..k-1 for each vector (`LEFT_OUT` for one that can join no speaker).

    Merges the closest admissible pair (size-weighted average linkage) while it is no
    farther than `distance`; the clusters then weighing at least `min_cluster_weight`
    are the speakers. With `num_clusters` given, or that estimate outside
    [`min_clusters`, `max_clusters`]: fewer wanted, the cheapest pair of speakers (Ward)
    merges, or the lightest is left out where that costs less, until that many remain;
    more wanted, the merging stops instead at the step nearest the threshold where the
    count of speakers is the one wanted, counting there only the clusters with at least
    `min_speaker_share` of an even share of all the weight among the speakers wanted. The
    lighter clusters then join their nearest speaker; one that may join none is left out.
    Pairs linked by `cannot_link` never merge. Past `max_items` vectors, they are first pooled
    into that many (`pool`), and the pools are clustered: the cost grows with the cube of the
    vectors clustered.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros(0, int)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rule = (distance, num_clusters, max_clusters, min_cluster_weight, min_clusters, min_speaker_share)
    if max_items is None or n <= max_items:
        return _clusters(1.0 - unit @ unit.T, weights, cannot_link, *rule)
    # Pools start the agglomeration as clusters: between two, average linkage's distance is the weighted mean
    # of their members' pairwise distances, 1 - (sum of w u over a) . (sum of w u over b) / (W_a W_b).
    pool_of = pool(unit, max_items)
    pools = pool_of.max() + 1
    pool_weights = np.bincount(pool_of, weights=weights, minlength=pools)
    sums = np.zeros((pools, vectors.shape[1]))
    np.add.at(sums, pool_of, unit * np.asarray(weights, float)[:, None])
    pooled_cannot = np.zeros((pools, pools), bool)
    a, b = np.nonzero(cannot_link)
    pooled_cannot[pool_of[a], pool_of[b]] = True
    np.fill_diagonal(pooled_cannot, False)  # a pair pooled together was alike enough to be one voice
    pooled_distances = 1.0 - (sums @ sums.T) / np.outer(pool_weights, pool_weights)
    return _clusters(pooled_distances, pool_weights, pooled_cannot, *rule)[pool_of]


def _clusters(
    distances: np.ndarray,
    weights: np.ndarray,
    cannot_link: np.ndarray,
    distance: float,
    num_clusters: int | None,
    max_clusters: int | None,
    min_cluster_weight: float,
    min_clusters: int,
    min_speaker_share: float,
) -> np.ndarray:
    """`constrained_average_linkage` over items with their pairwise distances."""
    n = len(distances)
    heights, counts = _merge_sequence(distances, weights, cannot_link, min_cluster_weight)
    at_threshold = next((step for step, d in enumerate(heights) if d > distance), len(heights))
    wanted = num_clusters
    if wanted is None:
        estimate = counts[at_threshold]
        ceiling = max_clusters if max_clusters is not None else n
        wanted = None if min_clusters <= estimate <= ceiling else min(max(estimate, min_clusters), ceiling)
    fewer = wanted is not None and wanted < counts[at_threshold]
    stop = at_threshold
    if wanted is not None and not fewer:
        # Blips must not fill the count while two voices share a cluster: each speaker counted weighs its part.
        min_cluster_weight = max(min_cluster_weight, min_speaker_share * float(np.sum(weights)) / wanted)
        _, counts = _merge_sequence(distances, weights, cannot_link, min_cluster_weight)
        stop = min(range(len(counts)), key=lambda step: (abs(counts[step] - wanted), abs(step - at_threshold)))
    linkage = _Linkage(distances, weights, cannot_link)
    for _ in range(stop):
        i, j, _d = linkage.closest()
        linkage.merge(i, j)
    # Fewer wanted: merge the pair that costs least, or leave the lightest speaker out (a voice past the count,
    # or noise) where that costs less: its weight at `distance`, as far as a voice may be from every other.
    left_out: list[int] = []
    while fewer:
        speakers = [c for c in linkage.speakers(min_cluster_weight) if c not in left_out]
        if len(speakers) <= wanted:
            break
        i, j, cost = linkage.cheapest(speakers)
        lightest = min(speakers, key=lambda c: linkage.size[c])
        if linkage.size[lightest] * distance < cost:
            left_out.append(lightest)
        elif np.isfinite(cost):
            linkage.merge(i, j)
        else:
            break
    # The speakers: the clusters that weigh enough, or the heaviest `wanted` where no step has that many
    # (cannot-link may leave more apart than asked for, and a short session may have fewer that weigh enough).
    by_weight = sorted((c for c in linkage.members if c not in left_out), key=lambda c: -linkage.size[c])
    speakers = linkage.speakers(min_cluster_weight)
    if wanted is not None:
        speakers = by_weight[:wanted]
    speakers = speakers or by_weight[:1]
    while True:
        rest = [c for c in linkage.members if c not in speakers and c not in left_out]
        i, j, d = linkage.closest(rest, speakers)
        if not np.isfinite(d):
            break
        linkage.merge(j, i)
    labels = np.full(n, LEFT_OUT)
    for label, root in enumerate(sorted(speakers, key=lambda c: min(linkage.members[c]))):
        labels[linkage.members[root]] = label
    return labels


POOL_BLOCK = 1000  # vectors pooled at a time: the pairwise distances of a block in memory, 4 MB


def pool(vectors: np.ndarray, max_pools: int) -> np.ndarray:
    """The pool (0..) of each vector: at most `max_pools` pools of the most alike vectors.

    Blocks of `POOL_BLOCK` consecutive vectors (a session's embeddings come in time order, so
    a block is a stretch of the session) are each cut from their own average-linkage
    dendrogram on cosine distance into their share of the pools; scipy's linkage takes
    time and memory quadratic in a block.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(vectors)
    blocks = -(-n // POOL_BLOCK)
    share = max(1, max_pools // blocks)
    pools = np.zeros(n, int)
    offset = 0
    for start in range(0, n, POOL_BLOCK):
        block = vectors[start : start + POOL_BLOCK]
        if len(block) <= share:
            labels = np.arange(len(block))
        else:
            tree = linkage(block, method="average", metric="cosine")
            labels = fcluster(tree, t=share, criterion="maxclust") - 1
        _, labels = np.unique(labels, return_inverse=True)
        pools[start : start + len(block)] = labels + offset
        offset += labels.max() + 1
    return pools


def _merge_sequence(
    distances: np.ndarray, weights: np.ndarray, cannot_link: np.ndarray, min_weight: float
) -> tuple[list[float], list[int]]:
    """The whole merge sequence, to find where to stop: the height of each merge, and the speakers before and after each."""
    linkage = _Linkage(distances, weights, cannot_link)
    heights, counts = [], [len(linkage.speakers(min_weight))]
    while len(linkage.members) > 1:
        i, j, d = linkage.closest()
        if not np.isfinite(d):
            break
        linkage.merge(i, j)
        heights.append(d)
        counts.append(len(linkage.speakers(min_weight)))
    return heights, counts


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
