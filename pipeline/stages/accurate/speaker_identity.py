"""Which session speaker each track is, decided live: optimal assignment, cannot-link, twins merged back, a count kept.

Tracks heard in one window are mapped to the session's speakers by an optimal one-to-one
assignment on cosine distance (`speaker_assignment`). A speaker another track is talking
over at that moment is out of reach (cannot-link), and two speakers whose tracks were once
heard at the same time, both with evidence of their voice, are never merged. A track opens a
new speaker past `new_speaker_distance`, only with enough speech to be trusted; only
confident, long-enough activity is evidence of a voice. A speaker's centroid is the evidence
of its tracks, and a track still talking carries its evidence along when a later embedding
shows it is another voice: a speaker opened on one track's mixed evidence empties, and is
retired into the voice it was. A speaker whose centroid comes close to an older one, closer
the more evidence both have, is merged back into it.

The speakers are the session's own; what clients see is at most the speaker limit of them
(the count given, or the upper bound): past the limit the speakers are grouped into that many
voices, the groups that cost least to merge first (Ward: distance times the evidence the merge
would move), so a twin opened on mixed evidence never takes one of the N places, and a voice
beyond the first N with no group to join is left unlabelled. Each group keeps the id clients
saw for most of its evidence. While fewer speakers than the session's floor (the count given,
or the lower bound) are open, a voice opens a speaker at a shorter distance: the count says
more voices are coming, and a twin opened on the way is grouped or merged back.

Where voices lie close (a phone line), the first speaker's centroid may absorb a second voice
before the floor is reached: while below it, the session's newest trusted embeddings are
clustered again now and then into one speaker more, and a cluster that lies far enough from
the others to never merge back as a twin opens that speaker, taking the tracks in hand that
are its voice.

A session keeps at most `max_open_speakers` speakers. Past that, a voice farther than
`new_speaker_distance` from all of them waits as a provisional speaker until freeing a place
(merging two speakers, or dropping one as noise) costs less than it would cost to merge the
provisional one into its nearest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.optimize import linear_sum_assignment

from pipeline.config import OverlapClusteringConfig
from pipeline.stages.accurate.aggregation import WindowActivity
from pipeline.stages.accurate.reclustering import LEFT_OUT, constrained_average_linkage
from pipeline.stages.accurate.speaker_assignment import NEW, assign, cosine_distances
from pipeline.stages.speaker_naming import Centroid


class TrackEvidence(BaseModel):
    """The trusted embeddings of a track still talking, summed: they move with the track."""

    model_config = ConfigDict(extra="forbid")

    vector_sum: list[float]
    count: int


@dataclass(frozen=True)
class RecentEvidence:
    """The session's newest trusted embeddings, for a second look below the floor."""

    tracks: list[int]
    vectors: np.ndarray  # one row per embedding
    speech_s: np.ndarray  # the track's speech in the window of each
    cannot_link: np.ndarray  # square, True where two were heard at the same time


class SpeakerIdentityState(BaseModel):
    """One session's speakers (a centroid each), the speaker of every track in hand, and what clients see."""

    model_config = ConfigDict(extra="forbid")

    centroid_sums: list[list[float]] = []  # empty for a speaker no longer open
    evidence: list[int] = []  # trusted embeddings behind each centroid; 0: the speaker holds no voice
    speaker_of_track: dict[int, int] = {}
    follows: dict[int, int] = {}  # tracks not embedded yet: the track before them in their slot
    talking: dict[int, TrackEvidence] = {}  # tracks of the newest window, with the evidence they carry
    merged_into: dict[int, int] = {}  # speakers retired into another one (into themselves: dropped as noise)
    apart: set[tuple[int, int]] = set()  # speaker pairs (a < b) heard at the same time: never one voice
    shown_as: dict[int, int] = {}  # the id clients see for each open speaker
    shown_ids: list[int] = []  # every id clients have seen
    waiting: int | None = None  # the provisional speaker of a voice past `max_open_speakers`


class SpeakerIdentity:
    def __init__(self, config: OverlapClusteringConfig) -> None:
        self.config = config

    def identify(
        self,
        state: SpeakerIdentityState,
        windows: list[WindowActivity],
        embeddings: dict[int, list[float]],
        speech_s: dict[int, float],
        together: set[tuple[int, int]],
        speaker_limit: int,
        speaker_floor: int = 1,
        recent: RecentEvidence | None = None,
    ) -> None:
        """Assign the newest window's freshly embedded tracks, then label the slots of every window in hand.

        `windows` are the windows in hand, the newest last; `embeddings` its fresh embeddings in
        slot order, `speech_s` its speech per track and `together` its pairs of tracks talking at
        once. At most `speaker_limit` ids are shown; below `speaker_floor` speakers open more
        readily, and with `recent` given, a voice the open speakers absorbed may be split off
        while fewer than `speaker_limit` are open.
        """
        window = windows[-1]
        for track, before in zip(window.tracks, window.follows):
            # Until its own embedding says otherwise, a run the model heard as the voice before the pause is that voice.
            if track >= 0 and before >= 0 and track not in state.speaker_of_track:
                state.follows[track] = before
        capacity = max(speaker_limit, self.config.max_open_speakers)
        if embeddings:
            for group in _groups(list(embeddings), together):
                self._assign(state, group, embeddings, together, speech_s, capacity, speaker_floor)
        self._keep_apart(state, together)
        if embeddings:
            self._merge_twins(state)
            self._make_room(state, capacity)
        if recent is not None:
            self._split_off_absorbed_voice(state, recent, speaker_limit)
        # A track missing from the newest window has ended: its evidence stays with its speaker for good.
        state.talking = {t: e for t, e in state.talking.items() if t in window.tracks}
        in_hand = {t for w in windows for t in w.tracks}
        state.speaker_of_track = {t: s for t, s in state.speaker_of_track.items() if t in in_hand}
        state.follows = {t: b for t, b in state.follows.items() if t in in_hand}
        speakers_together = [(speaker_of(state, a), speaker_of(state, b)) for a, b in together]
        heard_together = {_ordered(a, b) for a, b in speakers_together if a is not None and b is not None and a != b}
        shown = show(state, speaker_limit, heard_together)
        for earlier in windows:
            earlier.speakers = [shown.get(speaker_of(state, t)) for t in earlier.tracks]

    def _assign(
        self,
        state: SpeakerIdentityState,
        fresh: list[int],
        embeddings: dict[int, list[float]],
        together: set[tuple[int, int]],
        speech_s: dict[int, float],
        capacity: int,
        speaker_floor: int,
    ) -> None:
        """One optimal assignment for tracks heard at the same time (a group of `_groups`)."""
        # Speakers of other tracks talking at the same time are out of reach (cannot-link).
        held = {
            speaker_of(state, other)
            for track in fresh
            for a, b in together
            for other in ((b,) if a == track else (a,) if b == track else ())
            if other not in fresh
        }
        columns = [s for s in _open(state) if s not in held]
        trusted = [speech_s[t] >= self.config.update_min_activity_s for t in fresh]
        # Each track as its evidence stands with this embedding.
        vectors, distances, alone = [], np.zeros((len(fresh), len(columns))), {}
        for i, (track, trust) in enumerate(zip(fresh, trusted)):
            vector = np.asarray(embeddings[track])
            carried = state.talking.get(track)
            if carried is not None:
                vector = np.asarray(carried.vector_sum) + vector if trust else np.asarray(carried.vector_sum)
            vectors.append(vector)
            for j, speaker in enumerate(columns):
                if carried is not None and state.speaker_of_track.get(track) == speaker:
                    if carried.count >= state.evidence[speaker]:
                        # The speaker is this track alone: it leaves only for a speaker it would merge with as a
                        # twin, and opening a speaker instead is keeping this one.
                        alone[track] = speaker
                        distances[i, j] = min(self.config.merge_distance or np.inf, self.config.new_speaker_distance)
                        continue
                distances[i, j] = cosine_distances(vector[None], np.asarray([state.centroid_sums[speaker]]))[0, 0]
        confirmed = len([s for s in _open(state) if s != state.waiting])
        # Past the capacity one voice may still open a speaker, as the provisional one.
        slots = capacity - confirmed if confirmed < capacity else int(state.waiting is None)
        opening = self.config.new_speaker_distance
        if confirmed < speaker_floor:
            opening = self.config.floor_new_speaker_distance
        choice = assign(distances, trusted, slots, opening)
        for track, trust, vector, picked in zip(fresh, trusted, vectors, choice):
            if picked is None:
                continue
            if picked == NEW and track in alone:
                speaker = alone[track]
            elif picked == NEW:
                state.centroid_sums.append([0.0] * len(vector))
                state.evidence.append(0)
                speaker = len(state.centroid_sums) - 1
                if confirmed >= capacity:
                    state.waiting = speaker
                confirmed += 1
            else:
                speaker = columns[picked]
            # A speaker an earlier track of the group emptied has been retired into the voice it was.
            while speaker in state.merged_into:
                speaker = state.merged_into[speaker]
            carried = state.talking.get(track)
            if carried is not None or trust:
                _move_evidence(state, track, speaker, vector, (carried.count if carried else 0) + int(trust))
            state.speaker_of_track[track] = speaker
            state.follows.pop(track, None)

    @staticmethod
    def _keep_apart(state: SpeakerIdentityState, together: set[tuple[int, int]]) -> None:
        """Speakers of two tracks talking at once are two voices, where both tracks carry evidence of theirs.

        A short track's speaker is a guess; a guess must not keep two speakers apart for good.
        """
        for a, b in together:
            if a in state.talking and b in state.talking:
                speaker_a, speaker_b = state.speaker_of_track.get(a), state.speaker_of_track.get(b)
                if speaker_a is not None and speaker_b is not None and speaker_a != speaker_b:
                    state.apart.add(_ordered(speaker_a, speaker_b))

    def _merge_twins(self, state: SpeakerIdentityState) -> None:
        """A speaker whose centroid has come this close to an older one was that speaker all along.

        A new speaker opened on mixed or noisy evidence drifts towards the voice it really
        is; from then on its tracks carry the older id (the talk time already counted stays
        where it was reported; the report re-clusters everything anyway). How close is close
        depends on the evidence: the centroids of one voice differ by noise that shrinks with
        the embeddings behind each, so the reach is `merge_distance` x (1/n_a + 1/n_b).
        Speakers once heard at the same time are two voices, however alike they sound.
        """
        if self.config.merge_distance is None:
            return
        for speaker in sorted(_open(state), reverse=True):
            older = [s for s in _open(state) if s < speaker and _ordered(s, speaker) not in state.apart]
            if speaker in state.merged_into or not older:
                continue
            distances = cosine_distances(
                np.asarray([state.centroid_sums[speaker]]), np.asarray([state.centroid_sums[s] for s in older])
            )[0]
            evidence = np.asarray([state.evidence[s] for s in older], float)
            reach = self.config.merge_distance * (1 / state.evidence[speaker] + 1 / evidence)
            nearest = int(np.argmin(distances - reach))
            if distances[nearest] < reach[nearest]:
                if older[nearest] == state.waiting:  # the provisional voice is the older one's twin
                    _retire(state, older[nearest], speaker)
                else:
                    _retire(state, speaker, older[nearest])

    def _split_off_absorbed_voice(
        self, state: SpeakerIdentityState, recent: RecentEvidence, speaker_limit: int
    ) -> None:
        """Below the speaker limit, cluster the recent evidence into one speaker more; a cluster far enough off opens it.

        The clusters are matched to the open speakers by their centroids (one to one); the one
        left over is a voice the open speakers absorbed when it lies farther from every other
        cluster than `split_distance` x (1/n_a + 1/n_b), well past where twins would merge,
        and holds at least `split_min_embeddings`. Then every open speaker's evidence is its
        cluster's, the tracks in hand follow their newest embedding's cluster, and clusters heard
        at the same time are kept apart. Evidence already given stays where the clustering put it.
        """
        config = self.config
        confirmed = [s for s in _open(state) if s != state.waiting]
        wanted = len(confirmed) + 1
        if config.split_distance is None or not confirmed or wanted > speaker_limit:
            return
        if len(recent.tracks) < wanted * config.split_min_embeddings:
            return
        labels = constrained_average_linkage(
            recent.vectors,
            recent.speech_s,
            recent.cannot_link,
            distance=config.report_distance,
            num_clusters=wanted,
            min_cluster_weight=config.report_min_speaker_s,
            min_speaker_share=config.report_min_speaker_share,
        )
        if labels.max() + 1 < wanted:
            return
        sums = np.asarray([recent.vectors[labels == c].sum(axis=0) for c in range(wanted)])
        counts = np.asarray([(labels == c).sum() for c in range(wanted)], float)
        rows, cols = linear_sum_assignment(
            cosine_distances(sums, np.asarray([state.centroid_sums[s] for s in confirmed]))
        )
        speaker_of_cluster = {int(r): confirmed[c] for r, c in zip(rows, cols)}
        (new,) = [c for c in range(wanted) if c not in speaker_of_cluster]
        others = list(speaker_of_cluster)
        between = cosine_distances(sums[new][None], sums[others])[0]
        reach = config.split_distance * (1 / counts[new] + 1 / counts[others])
        if counts[new] < config.split_min_embeddings or (between <= reach).any():
            return
        state.centroid_sums.append([])
        state.evidence.append(0)
        speaker_of_cluster[new] = len(state.centroid_sums) - 1
        for c, speaker in speaker_of_cluster.items():
            state.centroid_sums[speaker] = sums[c].tolist()
            state.evidence[speaker] = int(counts[c])
        for track, label in zip(recent.tracks, labels):  # oldest first: each track ends with its newest
            if label != LEFT_OUT and track in state.speaker_of_track:
                state.speaker_of_track[track] = speaker_of_cluster[int(label)]
        for a, b in zip(*np.nonzero(np.triu(recent.cannot_link))):
            if labels[a] != LEFT_OUT and labels[b] != LEFT_OUT and labels[a] != labels[b]:
                state.apart.add(_ordered(speaker_of_cluster[int(labels[a])], speaker_of_cluster[int(labels[b])]))
        state.talking = {}

    def _make_room(self, state: SpeakerIdentityState, capacity: int) -> None:
        """Give the provisional speaker a place: a free one, or one that costs less to free than it costs to wait.

        A place is freed by merging two speakers (Ward: their distance times the evidence the
        merge moves) or by dropping one as noise (its evidence times `new_speaker_distance`: as
        far as a voice may be from every speaker and still be one of them), whichever costs
        least; the provisional speaker weighs its own cost the same way.
        """
        waiting = state.waiting
        if waiting is None:
            return
        confirmed = [s for s in _open(state) if s != waiting]
        if len(confirmed) < capacity:
            state.waiting = None
            return
        drop = self.config.new_speaker_distance
        cost_of_waiting = min(
            [_ward(state, waiting, s) for s in confirmed if _ordered(waiting, s) not in state.apart]
            + [drop * state.evidence[waiting]]
        )
        options = [(drop * state.evidence[s], s, None) for s in confirmed]
        options += [
            (_ward(state, a, b), b, a)
            for i, a in enumerate(confirmed)
            for b in confirmed[i + 1 :]
            if _ordered(a, b) not in state.apart
        ]
        cost, freed, into = min(options, key=lambda option: option[0])
        if cost < cost_of_waiting:
            if into is None:
                _drop(state, freed)
            else:
                _retire(state, freed, into)
            state.waiting = None


def show(state: SpeakerIdentityState, limit: int, heard_together: set[tuple[int, int]] = frozenset()) -> dict[int, int]:
    """The id clients see for each open speaker (missing: not shown), the speakers grouped into at most `limit` voices.

    While the session has no more speakers than that, each is a group of its own. Past it,
    the groups that cost least to merge (Ward) merge until `limit` remain, never two whose
    speakers were heard at the same time (`apart`, or `heard_together` in the newest window);
    a group that may join none is not shown. Each group is shown as the id most of its
    evidence was shown as before (one to one), a new group as one of its own speakers.
    """
    speakers = _open(state)
    groups = [[s] for s in speakers]
    weights = np.asarray([float(state.evidence[s]) for s in speakers])
    if len(groups) > limit:
        # Every pair's cost at once, each merge: this runs on every window of a session past its limit.
        sums = np.asarray([state.centroid_sums[s] for s in speakers], float)
        index = {s: k for k, s in enumerate(speakers)}
        blocked = np.zeros((len(speakers), len(speakers)), bool)
        for a, b in state.apart | heard_together:
            if a in index and b in index:
                blocked[index[a], index[b]] = blocked[index[b], index[a]] = True
        while len(groups) > limit:
            cost = cosine_distances(sums, sums) * np.outer(weights, weights) / np.add.outer(weights, weights)
            cost[blocked | ~np.triu(np.ones_like(blocked), 1)] = np.inf
            i, j = divmod(int(np.argmin(cost)), len(groups))
            if not np.isfinite(cost[i, j]):
                break
            groups[i] += groups.pop(j)
            sums[i] += sums[j]
            weights[i] += weights[j]
            blocked[i] |= blocked[j]
            blocked[:, i] |= blocked[:, j]
            sums, weights = np.delete(sums, j, axis=0), np.delete(weights, j)
            blocked = np.delete(np.delete(blocked, j, axis=0), j, axis=1)
    kept = sorted(range(len(groups)), key=lambda g: -weights[g])[:limit]
    shown = _name_groups(state, [groups[g] for g in kept])
    state.shown_as = shown
    return shown


def shown_centroids(state: SpeakerIdentityState) -> dict[int, Centroid]:
    """Each id clients see, with the evidence of the speakers shown under it (for naming them)."""
    centroids: dict[int, Centroid] = {}
    for speaker, shown in state.shown_as.items():
        if state.evidence[speaker] <= 0 or not state.centroid_sums[speaker]:
            continue
        vector = np.asarray(state.centroid_sums[speaker])
        before = centroids.get(shown)
        if before is not None:
            vector = vector + before.vector_sum
        centroids[shown] = Centroid(vector, state.evidence[speaker] + (before.evidence if before else 0))
    return centroids


def _name_groups(state: SpeakerIdentityState, groups: list[list[int]]) -> dict[int, int]:
    """Each group under the id most of its evidence was shown as before, one to one.

    A group new to clients takes an id shown before that stands for nobody now (a twin's,
    merged into its voice), else one of its own: clients never see more ids than voices.
    """
    before = state.shown_as
    ids = sorted({before[s] for group in groups for s in group if s in before})
    votes = np.zeros((len(groups), len(ids)))
    for g, group in enumerate(groups):
        for s in group:
            if s in before:
                votes[g, ids.index(before[s])] += state.evidence[s]
    names: dict[int, int] = {}
    if ids:
        rows, cols = linear_sum_assignment(-votes)
        names = {int(r): ids[c] for r, c in zip(rows, cols) if votes[r, c] > 0}
    for g in range(len(groups)):
        unused = [i for i in sorted(state.shown_ids) if i not in names.values()]
        if g not in names:
            # Else the lowest id never shown: speakers opened and retired unseen (twins, a split) leave no gaps.
            names[g] = (
                unused[0]
                if unused
                else next(
                    i
                    for i in range(len(state.shown_ids) + len(groups) + 1)
                    if i not in state.shown_ids and i not in names.values()
                )
            )
    state.shown_ids = sorted(set(state.shown_ids) | set(names.values()))
    return {s: names[g] for g, group in enumerate(groups) if g in names for s in group}


def speaker_of(state: SpeakerIdentityState, track: int) -> int | None:
    """The track's speaker, that of the track it follows until it is embedded, or None (no track, or not known yet)."""
    for _ in range(len(state.follows) + 1):
        if track < 0:
            return None
        if track in state.speaker_of_track:
            return state.speaker_of_track[track]
        if track not in state.follows:
            return None
        track = state.follows[track]
    return None


def _move_evidence(state: SpeakerIdentityState, track: int, speaker: int, vector: np.ndarray, count: int) -> None:
    """The track's evidence, now `vector` (a sum of `count` embeddings), goes to `speaker`."""
    carried = state.talking.get(track)
    before = state.speaker_of_track.get(track)
    if carried is not None and before is not None:
        state.centroid_sums[before] = (np.asarray(state.centroid_sums[before]) - carried.vector_sum).tolist()
        state.evidence[before] -= carried.count
        if state.evidence[before] <= 0 and before != speaker:
            # A speaker whose only evidence was this track was this track's voice all along.
            state.evidence[before] = 0
            state.centroid_sums[before] = []
            if _ordered(before, speaker) not in state.apart:
                _retire(state, before, speaker)
    # (An emptied speaker an earlier track of the group had left comes back with this track's evidence.)
    centroid = np.asarray(state.centroid_sums[speaker] or np.zeros(len(vector)))
    state.centroid_sums[speaker] = (centroid + vector).tolist()
    state.evidence[speaker] += count
    state.talking[track] = TrackEvidence(vector_sum=vector.tolist(), count=count)


def _open(state: SpeakerIdentityState) -> list[int]:
    """Speakers holding a voice: not retired, with evidence."""
    return [s for s, count in enumerate(state.evidence) if count > 0 and s not in state.merged_into]


def _ordered(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _ward(state: SpeakerIdentityState, a: int, b: int) -> float:
    """What merging speakers a and b costs: their cosine distance times the evidence the merge moves."""
    distance = cosine_distances(np.asarray([state.centroid_sums[a]]), np.asarray([state.centroid_sums[b]]))[0, 0]
    na, nb = state.evidence[a], state.evidence[b]
    return float(distance) * na * nb / (na + nb)


def _retire(state: SpeakerIdentityState, speaker: int, into: int) -> None:
    """`speaker` was `into` all along: its evidence, tracks and apart pairs become `into`'s."""
    state.merged_into[speaker] = into
    if state.evidence[speaker]:
        state.centroid_sums[into] = (np.asarray(state.centroid_sums[into]) + state.centroid_sums[speaker]).tolist()
    state.evidence[into] += state.evidence[speaker]
    state.evidence[speaker] = 0
    state.centroid_sums[speaker] = []  # a speaker no longer open keeps no centroid
    for track, owner in state.speaker_of_track.items():
        if owner == speaker:
            state.speaker_of_track[track] = into
    renamed = {_ordered(into if a == speaker else a, into if b == speaker else b) for a, b in state.apart}
    state.apart = {(a, b) for a, b in renamed if a != b}
    if state.waiting == speaker:
        state.waiting = None


def _drop(state: SpeakerIdentityState, speaker: int) -> None:
    """`speaker` was noise: its evidence goes, and its tracks in hand are unknown until embedded again."""
    state.merged_into[speaker] = speaker
    state.evidence[speaker] = 0
    state.centroid_sums[speaker] = []
    for track in [t for t, s in state.speaker_of_track.items() if s == speaker]:
        del state.speaker_of_track[track]
        state.talking.pop(track, None)


def _groups(tracks: list[int], together: set[tuple[int, int]]) -> list[list[int]]:
    """Connected groups of `tracks` under the talking-at-the-same-time relation."""
    groups: list[list[int]] = []
    for track in tracks:
        linked = [g for g in groups if any((min(track, t), max(track, t)) in together for t in g)]
        merged = [track] + [t for g in linked for t in g]
        groups = [g for g in groups if g not in linked] + [merged]
    return groups
