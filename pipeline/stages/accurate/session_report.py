"""The session's final report: settled speech at full context, re-clustered once all of it is known.

The report labels each region a whole window behind, when every window that covers
it has voted, and keeps it as pieces (one live speaker, its dominant track). It also
keeps every track embedding and which of them were heard at the same time. At the
end the tracks are clustered again, all evidence in hand (`reclustering`); each
piece takes the cluster of its track, and the clusters keep the live ids clients
have already seen wherever they match.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.config import OverlapClusteringConfig
from pipeline.stages.accurate.aggregation import Binarizer, WindowActivity, aggregate, output_grid, seconds_to_ms
from pipeline.stages.accurate.reclustering import LEFT_OUT, constrained_average_linkage, keep_live_ids
from pipeline.stages.accurate.speaker_identity import RecentEvidence
from pipeline.stages.speaker_naming import Centroid
from topics.messages import LabeledSpan, ReportedSpeaker, SessionReport


class Embedded(BaseModel):
    """One embedding of a track, kept for the final re-clustering."""

    model_config = ConfigDict(extra="forbid")

    track: int
    time_s: float  # centre of the window it came from
    speech_s: float  # the track's activity in that window
    vector: list[float]


class ReportPiece(BaseModel):
    """Settled speech at full context: one live speaker, its dominant track, when."""

    model_config = ConfigDict(extra="forbid")

    live: int
    track: int
    start_ms: int
    end_ms: int


class ReportState(BaseModel):
    """The report's material: settled pieces, every track embedding, and which embeddings never share a speaker."""

    model_config = ConfigDict(extra="forbid")

    until_s: float = 0.0
    binarizer: Binarizer = Binarizer()
    pieces: list[ReportPiece] = []
    embedded: list[Embedded] = []
    # Pairs of `embedded` indices heard in one window: never one speaker.
    cannot_link: set[tuple[int, int]] = set()


class ReportBuilder:
    def __init__(self, config: OverlapClusteringConfig) -> None:
        self.config = config

    @staticmethod
    def keep_embeddings(
        state: ReportState,
        window: WindowActivity,
        embeddings: dict[int, list[float]],
        speech_s: dict[int, float],
        together: set[tuple[int, int]],
    ) -> None:
        """Keep a window's fresh track embeddings, and which of them talked at the same time."""
        centre = (window.start_s + window.end_s) / 2
        item = {t: len(state.embedded) + i for i, t in enumerate(embeddings)}
        # Four decimals keep cosine distances to 1e-4 and the changelog record a third the size.
        state.embedded += [
            Embedded(track=t, time_s=centre, speech_s=round(speech_s[t], 3), vector=[round(x, 4) for x in vector])
            for t, vector in embeddings.items()
        ]
        state.cannot_link |= {(item[a], item[b]) for a, b in together if a in item and b in item}

    @staticmethod
    def recent_evidence(state: ReportState, min_speech_s: float, count: int) -> RecentEvidence:
        """The newest `count` embeddings of tracks with at least `min_speech_s` in their window, oldest first."""
        chosen = [i for i, item in enumerate(state.embedded) if item.speech_s >= min_speech_s][-count:]
        index = {item: row for row, item in enumerate(chosen)}
        cannot = np.zeros((len(chosen), len(chosen)), bool)
        for a, b in state.cannot_link:
            if a in index and b in index:
                cannot[index[a], index[b]] = cannot[index[b], index[a]] = True
        return RecentEvidence(
            tracks=[state.embedded[i].track for i in chosen],
            vectors=np.asarray([state.embedded[i].vector for i in chosen]) if chosen else np.zeros((0, 0)),
            speech_s=np.asarray([state.embedded[i].speech_s for i in chosen]),
            cannot_link=cannot,
        )

    def settle(self, state: ReportState, windows: list[WindowActivity], until_s: float) -> None:
        """Label the region up to `until_s`, once every window that covers it has voted."""
        if until_s <= state.until_s:
            return
        times = output_grid(state.until_s, until_s)
        state.until_s = until_s
        activity, dominant = aggregate(windows, times)
        for live, start, end in state.binarizer.push(times, activity, self.config.onset, self.config.offset):
            inside = (times >= start) & (times < end)
            tracks = dominant[live][inside]
            cuts = np.flatnonzero(np.diff(tracks)) + 1
            bounds = np.concatenate([[0], cuts, [len(tracks)]])
            piece_times = times[inside]
            for a, b in zip(bounds[:-1], bounds[1:]):
                piece_start = start if a == 0 else piece_times[a] - (piece_times[1] - piece_times[0]) / 2
                piece_end = end if b == len(tracks) else piece_times[b] - (piece_times[1] - piece_times[0]) / 2
                _add_piece(
                    state,
                    ReportPiece(
                        live=live,
                        track=int(tracks[a]),
                        start_ms=seconds_to_ms(piece_start),
                        end_ms=seconds_to_ms(piece_end),
                    ),
                )

    def report(
        self,
        state: ReportState,
        session_id: str,
        end_s: float,
        num_speakers: int | None,
        max_speakers: int,
        min_speakers: int = 1,
        name: Callable[[SessionReport, dict[int, Centroid]], SessionReport] | None = None,
    ) -> SessionReport:
        """The report of the whole session: `num_speakers` speakers if given, else an estimate within the bounds.

        `name`, if given, completes it from each speaker's centroid: its voice, and its name where it has one.
        """
        label_of_piece, centroids = self._final_labels(state, num_speakers, min_speakers, max_speakers)
        by_speaker: dict[int, list[tuple[int, int]]] = {}
        for piece, label in zip(state.pieces, label_of_piece):
            if label is not None:
                by_speaker.setdefault(label, []).append((piece.start_ms, piece.end_ms))
        turns = []
        totals = {}
        for speaker, intervals in by_speaker.items():
            merged = _merge(intervals, seconds_to_ms(self.config.report_fill_gap_s))
            totals[speaker] = sum(e - s for s, e in merged)
            turns += [LabeledSpan(speaker=speaker, start_ms=s, end_ms=e) for s, e in merged]
        turns.sort(key=lambda t: (t.start_ms, t.speaker))
        report = SessionReport(
            session_id=session_id,
            duration_ms=seconds_to_ms(end_s),
            speakers=[ReportedSpeaker(id=s, total_time_ms=totals[s]) for s in sorted(totals)],
            turns=turns,
        )
        return name(report, {s: c for s, c in centroids.items() if s in totals}) if name is not None else report

    def _final_labels(
        self, state: ReportState, num_speakers: int | None, min_speakers: int, max_speakers: int
    ) -> tuple[list[int | None], dict[int, Centroid]]:
        """A final speaker id for every report piece: the cluster of its track's embedding nearest in time.

        None for a piece whose embedding belongs to no speaker (a voice past the count, heard over every speaker).
        Also each final speaker's centroid: the embeddings of its cluster.
        """
        if not state.pieces:
            return [], {}
        items = state.embedded
        count = len(items)
        cannot = np.zeros((count, count), bool)
        for a, b in state.cannot_link:
            cannot[a, b] = cannot[b, a] = True
        item_of_piece = [_nearest_item(state, piece) for piece in state.pieces]
        speech = np.full(count, 1e-3)
        for piece, item in zip(state.pieces, item_of_piece):
            if item is not None:
                speech[item] += (piece.end_ms - piece.start_ms) / 1000
        labels = constrained_average_linkage(
            np.asarray([i.vector for i in items]).reshape(count, len(items[0].vector) if items else 0),
            speech,
            cannot,
            distance=self.config.report_distance,
            num_clusters=num_speakers,
            max_clusters=max_speakers,
            min_cluster_weight=self.config.report_min_speaker_s,
            min_clusters=min_speakers,
            min_speaker_share=self.config.report_min_speaker_share,
            max_items=self.config.report_max_embeddings,
        )
        clusters = int(labels.max()) + 1 if count else 0
        lives = max(p.live for p in state.pieces) + 1
        overlap = np.zeros((clusters, lives))
        for piece, item in zip(state.pieces, item_of_piece):
            if item is not None and labels[item] != LEFT_OUT:
                overlap[labels[item], piece.live] += piece.end_ms - piece.start_ms
        final = keep_live_ids(overlap)
        vectors = np.asarray([i.vector for i in items])
        centroids = {
            final[c]: Centroid(vectors[labels == c].sum(axis=0), int((labels == c).sum()))
            for c in range(clusters)
            if c in final and (labels == c).any()
        }
        # A piece of a track never embedded follows its live speaker's main cluster.
        cluster_of_live = {s: int(np.argmax(overlap[:, s])) for s in range(lives) if clusters and overlap[:, s].any()}
        result = []
        for piece, item in zip(state.pieces, item_of_piece):
            if item is not None:
                result.append(final[int(labels[item])] if labels[item] != LEFT_OUT else None)
            elif piece.live in cluster_of_live:
                result.append(final[cluster_of_live[piece.live]])
            else:  # no evidence of whose voice it is: a speaker of its own, unless the count is already full
                result.append(piece.live if num_speakers is None else None)
        return result, centroids


def _add_piece(state: ReportState, piece: ReportPiece) -> None:
    """Append a piece, or extend the recent one it continues (same live speaker and track, no gap)."""
    for previous in reversed(state.pieces[-4:]):
        if previous.live == piece.live and previous.track == piece.track and previous.end_ms == piece.start_ms:
            previous.end_ms = piece.end_ms
            return
    state.pieces.append(piece)


def _nearest_item(state: ReportState, piece: ReportPiece) -> int | None:
    """The `embedded` index of the piece's track nearest the piece in time, if the track was ever embedded."""
    middle = (piece.start_ms + piece.end_ms) / 2000
    candidates = [i for i, item in enumerate(state.embedded) if item.track == piece.track]
    return min(candidates, key=lambda i: abs(state.embedded[i].time_s - middle), default=None)


def _merge(intervals: list[tuple[int, int]], fill_gap_ms: int = 0) -> list[tuple[int, int]]:
    """Sorted, overlapping (or closer than `fill_gap_ms`) intervals joined."""
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + fill_gap_ms:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]
