"""Which session speaker each track is, decided live: optimal assignment, cannot-link, twins merged back.

Tracks heard in one window are mapped to the session's speakers by an optimal
one-to-one assignment on cosine distance (`speaker_assignment`). A speaker another
track is talking over at that moment is out of reach (cannot-link). A track opens
a new speaker past `new_speaker_distance`, only with enough speech to be trusted;
centroids move only with confident, long-enough activity. A speaker whose centroid
drifts close to an older one is merged back into it.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.config import OverlapClusteringConfig
from pipeline.stages.accurate.aggregation import WindowActivity
from pipeline.stages.accurate.speaker_assignment import NEW, assign, cosine_distances


class SpeakerIdentityState(BaseModel):
    """One session's speakers (a centroid each) and the speaker of every track identified so far."""

    model_config = ConfigDict(extra="forbid")

    centroid_sums: list[list[float]] = []
    speaker_of_track: dict[int, int] = {}
    provisional: dict[int, int] = {}  # tracks not embedded yet, labelled as the track they follow
    merged_into: dict[int, int] = {}  # speakers retired into an older one


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
    ) -> None:
        """Assign the newest window's freshly embedded tracks, then label its slots (and back-fill earlier ones).

        `windows` are the windows in hand, the newest last; `embeddings` its fresh embeddings in
        slot order, `speech_s` its speech per track and `together` its pairs of tracks talking at once.
        """
        window = windows[-1]
        if embeddings:
            for group in _groups(list(embeddings), together):
                self._assign(state, group, [embeddings[t] for t in group], together, speech_s, speaker_limit)
            self._merge_twins(state, windows)
        for track, before in zip(window.tracks, window.follows):
            # Until its own embedding says otherwise, a run the model heard as the voice before the pause is that voice.
            if track not in state.speaker_of_track and before in state.speaker_of_track:
                state.provisional[track] = state.speaker_of_track[before]
        window.speakers = [speaker_of(state, t) for t in window.tracks]
        for earlier in windows:
            for slot, track in enumerate(earlier.tracks):
                if earlier.speakers[slot] is None:
                    earlier.speakers[slot] = speaker_of(state, track)

    def _assign(
        self,
        state: SpeakerIdentityState,
        fresh: list[int],
        vectors: list[list[float]],
        together: set[tuple[int, int]],
        speech_s: dict[int, float],
        speaker_limit: int,
    ) -> None:
        """One optimal assignment for tracks heard at the same time (a group of `_groups`)."""
        # Speakers of other tracks talking at the same time are out of reach (cannot-link).
        held = {
            state.speaker_of_track[other]
            for track in fresh
            for a, b in together
            for other in ((b,) if a == track else (a,) if b == track else ())
            if other not in fresh and other in state.speaker_of_track
        }
        columns = [s for s in range(len(state.centroid_sums)) if s not in held and s not in state.merged_into]
        centroids = np.asarray([state.centroid_sums[s] for s in columns]).reshape(len(columns), len(vectors[0]))
        choice = assign(
            cosine_distances(np.asarray(vectors), centroids),
            [speech_s[t] >= self.config.update_min_activity_s for t in fresh],
            speaker_limit - len(state.centroid_sums) + len(state.merged_into),
            self.config.new_speaker_distance,
        )
        for track, vector, picked in zip(fresh, vectors, choice):
            if picked is None:
                continue
            if picked == NEW:
                state.centroid_sums.append(list(vector))
                speaker = len(state.centroid_sums) - 1
            else:
                speaker = columns[picked]
                if speech_s[track] >= self.config.update_min_activity_s:
                    state.centroid_sums[speaker] = (
                        np.asarray(state.centroid_sums[speaker]) + np.asarray(vector)
                    ).tolist()
            state.speaker_of_track[track] = speaker

    def _merge_twins(self, state: SpeakerIdentityState, windows: list[WindowActivity]) -> None:
        """A speaker whose centroid has come this close to an older one was that speaker all along.

        A new speaker opened on mixed or noisy evidence drifts towards the voice it really
        is; from then on its tracks carry the older id (the talk time already counted stays
        where it was reported; the report re-clusters everything anyway).
        """
        if self.config.merge_distance is None or len(state.centroid_sums) < 2:
            return
        centroids = np.asarray(state.centroid_sums)
        distances = cosine_distances(centroids, centroids)
        np.fill_diagonal(distances, np.inf)
        for speaker in range(len(centroids) - 1, 0, -1):
            older = int(np.argmin(distances[speaker, :speaker]))
            if distances[speaker, older] < self.config.merge_distance and speaker not in state.merged_into:
                state.merged_into[speaker] = older
                state.centroid_sums[older] = (centroids[older] + centroids[speaker]).tolist()
                for labels in (state.speaker_of_track, state.provisional):
                    for track, owner in labels.items():
                        if owner == speaker:
                            labels[track] = older
                for window in windows:
                    window.speakers = [older if s == speaker else s for s in window.speakers]


def speaker_of(state: SpeakerIdentityState, track: int) -> int | None:
    """The track's speaker, its provisional one until it is embedded, or None (no track, or not known yet)."""
    if track < 0:
        return None
    return state.speaker_of_track.get(track, state.provisional.get(track))


def _groups(tracks: list[int], together: set[tuple[int, int]]) -> list[list[int]]:
    """Connected groups of `tracks` under the talking-at-the-same-time relation."""
    groups: list[list[int]] = []
    for track in tracks:
        linked = [g for g in groups if any((min(track, t), max(track, t)) in together for t in g)]
        merged = [track] + [t for g in linked for t in g]
        groups = [g for g in groups if g not in linked] + [merged]
    return groups
