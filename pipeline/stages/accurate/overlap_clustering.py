"""Overlap-aware online clustering (accurate profile): embedded windows in, updates, turns and a report out.

After the published description of diart (Coria et al., 2021, "Overlap-aware
low-latency online speaker diarization based on end-to-end local
segmentation"), on tracks rather than single windows:

1. Tracks heard in one window are mapped to the session's speakers by an optimal
   one-to-one assignment on cosine distance (`speaker_assignment`); a track opens
   a new speaker past `new_speaker_distance`, only with enough speech to be trusted.
2. Centroids move only with confident, long-enough activity.
3. Each region is labelled `latency_s` after it, from the mean of every window that
   covered it (`aggregation`), with hysteresis; several speakers may be active at once.
4. At stop the tracks are clustered again, all evidence in hand (`reclustering`),
   and the report's turns are relabelled, keeping the live ids where they match.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.config import OverlapClusteringConfig
from pipeline.stages.accurate.aggregation import Binarizer, WindowActivity, aggregate, output_grid
from pipeline.stages.accurate.reclustering import constrained_average_linkage, keep_live_ids
from pipeline.stages.accurate.speaker_assignment import NEW, assign, cosine_distances
from topics.messages import (
    ACTIVITY_SCALE,
    SAMPLE_RATE,
    LabeledSpan,
    ReportedSpeaker,
    SessionReport,
    SessionStart,
    SpeakerTurn,
    SpeakerUpdate,
    WindowEmbeddings,
)

ClusteringOutput = SpeakerUpdate | SpeakerTurn | SessionReport


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


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


class OpenTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_ms: int
    end_ms: int


class OverlapClusteringSessionState(BaseModel):
    """One session's speakers, tracks, recent windows and report material; JSON in the changelog."""

    model_config = ConfigDict(extra="forbid")

    num_speakers: int | None
    speaker_limit: int
    last_step: int = -1
    ingest_ms: int = 0
    end_s: float = 0.0  # end of the newest window
    window_s: float = 0.0
    centroid_sums: list[list[float]] = []
    speaker_of_track: dict[int, int] = {}
    provisional: dict[int, int] = {}  # tracks not embedded yet, labelled as the track they follow
    merged_into: dict[int, int] = {}  # speakers retired into an older one
    embedded: list[Embedded] = []
    # Pairs of `embedded` indices heard in one window: never one speaker.
    cannot_link: set[tuple[int, int]] = set()
    windows: list[WindowActivity] = []
    live_until_s: float = 0.0
    report_until_s: float = 0.0
    live: Binarizer = Binarizer()
    report: Binarizer = Binarizer()
    talk_ms: dict[int, int] = {}
    turns: dict[int, OpenTurn] = {}
    pieces: list[ReportPiece] = []


class OverlapClusteringStage:
    def __init__(self, config: OverlapClusteringConfig) -> None:
        self.config = config
        self._turn_gap_ms = _ms(config.max_turn_gap_s)

    def start(self, message: SessionStart) -> OverlapClusteringSessionState:
        return OverlapClusteringSessionState(num_speakers=message.num_speakers, speaker_limit=message.speaker_limit)

    def push(self, state: OverlapClusteringSessionState, message: WindowEmbeddings) -> list[ClusteringOutput]:
        """Apply one window; replayed windows are ignored."""
        if message.step <= state.last_step:
            return []
        state.last_step = message.step
        state.ingest_ms = max(state.ingest_ms, message.ingest_ms)
        window = WindowActivity(
            start_s=message.start / SAMPLE_RATE,
            end_s=message.end / SAMPLE_RATE,
            frame_offset_s=message.frame_offset_s,
            frame_step_s=message.frame_step_s,
            tracks=message.tracks,
            follows=message.follows,
            activity=(np.asarray(message.activity, np.float32) / ACTIVITY_SCALE).tolist(),
        )
        state.windows.append(window)
        state.end_s = window.end_s
        state.window_s = window.end_s - window.start_s
        self._identify(state, window, message.embeddings)
        latency = min(self.config.latency_s, state.window_s)
        outputs = self._settle_live(state, message.session_id, state.end_s - latency)
        self._settle_report(state, state.end_s - state.window_s)
        self._forget_old_windows(state)
        return outputs

    def stop(
        self, state: OverlapClusteringSessionState, session_id: str, duration_samples: int | None = None
    ) -> list[ClusteringOutput]:
        end_s = state.end_s if duration_samples is None else duration_samples / SAMPLE_RATE
        end_s = max(end_s, state.live_until_s)
        outputs = self._settle_live(state, session_id, end_s)
        outputs += [
            self._turn_message(session_id, speaker, turn, final=True) for speaker, turn in sorted(state.turns.items())
        ]
        state.turns.clear()
        self._settle_report(state, end_s)
        outputs.append(self.report(state, session_id, end_s))
        return outputs

    # ---- live labels --------------------------------------------------------------------------

    def _identify(
        self, state: OverlapClusteringSessionState, window: WindowActivity, embeddings: dict[int, list[float]]
    ) -> None:
        """Assign the freshly embedded tracks, then label this window's slots (and back-fill earlier ones)."""
        present = [t for t in window.tracks if t >= 0]
        speech_s = {
            t: sum(window.activity[slot]) * window.frame_step_s for slot, t in enumerate(window.tracks) if t >= 0
        }
        together = co_active(window)
        fresh = [t for t in present if t in embeddings]
        if fresh:
            centre = (window.start_s + window.end_s) / 2
            item = {t: len(state.embedded) + i for i, t in enumerate(fresh)}
            # Four decimals keep cosine distances to 1e-4 and the changelog record a third the size.
            state.embedded += [
                Embedded(
                    track=t, time_s=centre, speech_s=round(speech_s[t], 3), vector=[round(x, 4) for x in embeddings[t]]
                )
                for t in fresh
            ]
            state.cannot_link |= {(item[a], item[b]) for a, b in together if a in item and b in item}
            for group in _groups(fresh, together):
                self._assign(state, group, [embeddings[t] for t in group], together, speech_s)
            self._merge_twins(state)
        for track, before in zip(window.tracks, window.follows):
            # Until its own embedding says otherwise, a run the model heard as the voice before the pause is that voice.
            if track not in state.speaker_of_track and before in state.speaker_of_track:
                state.provisional[track] = state.speaker_of_track[before]
        window.speakers = [self._speaker(state, t) for t in window.tracks]
        for earlier in state.windows:
            for slot, track in enumerate(earlier.tracks):
                if earlier.speakers[slot] is None:
                    earlier.speakers[slot] = self._speaker(state, track)

    @staticmethod
    def _speaker(state: OverlapClusteringSessionState, track: int) -> int | None:
        if track < 0:
            return None
        return state.speaker_of_track.get(track, state.provisional.get(track))

    def _merge_twins(self, state: OverlapClusteringSessionState) -> None:
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
                for window in state.windows:
                    window.speakers = [older if s == speaker else s for s in window.speakers]

    def _assign(
        self,
        state: OverlapClusteringSessionState,
        fresh: list[int],
        vectors: list[list[float]],
        together: set[tuple[int, int]],
        speech_s: dict[int, float],
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
            state.speaker_limit - len(state.centroid_sums) + len(state.merged_into),
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

    def _settle_live(
        self, state: OverlapClusteringSessionState, session_id: str, until_s: float
    ) -> list[ClusteringOutput]:
        if until_s <= state.live_until_s:
            return []
        times = output_grid(state.live_until_s, until_s)
        state.live_until_s = until_s
        activity, _ = aggregate(state.windows, times)
        pieces = state.live.push(times, activity, self.config.onset, self.config.offset)
        outputs: list[ClusteringOutput] = []
        spans = []
        for speaker, start, end in pieces:
            span = LabeledSpan(speaker=speaker, start_ms=_ms(start), end_ms=_ms(end))
            spans.append(span)
            state.talk_ms[speaker] = state.talk_ms.get(speaker, 0) + span.end_ms - span.start_ms
            outputs += self._extend_turn(state, session_id, span)
        position_ms = _ms(until_s)
        for speaker, turn in sorted(state.turns.items()):
            if position_ms - turn.end_ms > self._turn_gap_ms:
                outputs.append(self._turn_message(session_id, speaker, state.turns.pop(speaker), final=True))
        last = {s: float(a[-1]) for s, a in activity.items() if len(a)}
        active = sorted(state.live.active, key=lambda s: -last.get(s, 0.0))
        outputs.append(
            SpeakerUpdate(
                session_id=session_id,
                position_ms=position_ms,
                current_speaker=active[0] if active else None,
                active_speakers=active,
                spans=spans,
                speaking_time_ms=dict(sorted(state.talk_ms.items())),
                ingest_ms=state.ingest_ms,
            )
        )
        return outputs

    def _extend_turn(
        self, state: OverlapClusteringSessionState, session_id: str, span: LabeledSpan
    ) -> list[ClusteringOutput]:
        turn = state.turns.get(span.speaker)
        if turn is not None and span.start_ms - turn.end_ms <= self._turn_gap_ms:
            turn.end_ms = span.end_ms
            return []
        outputs: list[ClusteringOutput] = []
        if turn is not None:
            outputs.append(self._turn_message(session_id, span.speaker, turn, final=True))
        state.turns[span.speaker] = OpenTurn(start_ms=span.start_ms, end_ms=span.end_ms)
        outputs.append(self._turn_message(session_id, span.speaker, state.turns[span.speaker], final=False))
        return outputs

    @staticmethod
    def _turn_message(session_id: str, speaker: int, turn: OpenTurn, final: bool) -> SpeakerTurn:
        return SpeakerTurn(
            session_id=session_id, speaker=speaker, start_ms=turn.start_ms, end_ms=turn.end_ms, final=final
        )

    # ---- the report -----------------------------------------------------------------------------

    def _settle_report(self, state: OverlapClusteringSessionState, until_s: float) -> None:
        """Label regions a whole window behind, when every window that covers them has voted."""
        if until_s <= state.report_until_s:
            return
        times = output_grid(state.report_until_s, until_s)
        state.report_until_s = until_s
        activity, dominant = aggregate(state.windows, times)
        for live, start, end in state.report.push(times, activity, self.config.onset, self.config.offset):
            inside = (times >= start) & (times < end)
            tracks = dominant[live][inside]
            cuts = np.flatnonzero(np.diff(tracks)) + 1
            bounds = np.concatenate([[0], cuts, [len(tracks)]])
            piece_times = times[inside]
            for a, b in zip(bounds[:-1], bounds[1:]):
                piece_start = start if a == 0 else piece_times[a] - (piece_times[1] - piece_times[0]) / 2
                piece_end = end if b == len(tracks) else piece_times[b] - (piece_times[1] - piece_times[0]) / 2
                self._add_piece(
                    state,
                    ReportPiece(live=live, track=int(tracks[a]), start_ms=_ms(piece_start), end_ms=_ms(piece_end)),
                )

    @staticmethod
    def _add_piece(state: OverlapClusteringSessionState, piece: ReportPiece) -> None:
        for previous in reversed(state.pieces[-4:]):
            if previous.live == piece.live and previous.track == piece.track and previous.end_ms == piece.start_ms:
                previous.end_ms = piece.end_ms
                return
        state.pieces.append(piece)

    def report(self, state: OverlapClusteringSessionState, session_id: str, end_s: float) -> SessionReport:
        label_of_piece = self._final_labels(state)
        by_speaker: dict[int, list[tuple[int, int]]] = {}
        for piece, label in zip(state.pieces, label_of_piece):
            by_speaker.setdefault(label, []).append((piece.start_ms, piece.end_ms))
        turns = []
        totals = {}
        for speaker, intervals in by_speaker.items():
            merged = _merge(intervals, _ms(self.config.report_fill_gap_s))
            totals[speaker] = sum(e - s for s, e in merged)
            turns += [LabeledSpan(speaker=speaker, start_ms=s, end_ms=e) for s, e in merged]
        turns.sort(key=lambda t: (t.start_ms, t.speaker))
        return SessionReport(
            session_id=session_id,
            duration_ms=_ms(end_s),
            speakers=[ReportedSpeaker(id=s, total_time_ms=totals[s]) for s in sorted(totals)],
            turns=turns,
        )

    def _final_labels(self, state: OverlapClusteringSessionState) -> list[int]:
        """A final speaker id for every report piece: the cluster of its track's embedding nearest in time."""
        if not state.pieces:
            return []
        items = state.embedded
        count = len(items)
        cannot = np.zeros((count, count), bool)
        for a, b in state.cannot_link:
            cannot[a, b] = cannot[b, a] = True
        item_of_piece = [self._nearest_item(state, piece) for piece in state.pieces]
        speech = np.full(count, 1e-3)
        for piece, item in zip(state.pieces, item_of_piece):
            if item is not None:
                speech[item] += (piece.end_ms - piece.start_ms) / 1000
        labels = constrained_average_linkage(
            np.asarray([i.vector for i in items]).reshape(count, len(items[0].vector) if items else 0),
            speech,
            cannot,
            distance=self.config.report_distance,
            num_clusters=state.num_speakers,
            max_clusters=state.speaker_limit,
            min_cluster_weight=self.config.report_min_speaker_s,
        )
        clusters = int(labels.max()) + 1 if count else 0
        lives = max(p.live for p in state.pieces) + 1
        overlap = np.zeros((clusters, lives))
        for piece, item in zip(state.pieces, item_of_piece):
            if item is not None:
                overlap[labels[item], piece.live] += piece.end_ms - piece.start_ms
        final = keep_live_ids(overlap)
        # A piece of a track never embedded follows its live speaker's main cluster.
        cluster_of_live = {s: int(np.argmax(overlap[:, s])) for s in range(lives) if clusters and overlap[:, s].any()}
        result = []
        for piece, item in zip(state.pieces, item_of_piece):
            if item is not None:
                result.append(final[int(labels[item])])
            elif piece.live in cluster_of_live:
                result.append(final[cluster_of_live[piece.live]])
            else:
                result.append(piece.live)
        return result

    @staticmethod
    def _nearest_item(state: OverlapClusteringSessionState, piece: ReportPiece) -> int | None:
        middle = (piece.start_ms + piece.end_ms) / 2000
        candidates = [i for i, item in enumerate(state.embedded) if item.track == piece.track]
        return min(candidates, key=lambda i: abs(state.embedded[i].time_s - middle), default=None)

    def _forget_old_windows(self, state: OverlapClusteringSessionState) -> None:
        settled = min(state.live_until_s, state.report_until_s)
        state.windows = [w for w in state.windows if w.end_s > settled]


def co_active(window: WindowActivity, threshold: float = 0.5, min_frames: int = 2) -> set[tuple[int, int]]:
    """Pairs of the window's tracks (a < b) that talk at the same time: never the same speaker."""
    on = (np.asarray(window.activity) >= threshold).astype(np.int32)
    shared = on @ on.T
    tracks = window.tracks
    return {
        (min(tracks[i], tracks[j]), max(tracks[i], tracks[j]))
        for i in range(len(tracks))
        for j in range(i + 1, len(tracks))
        if tracks[i] >= 0 and tracks[j] >= 0 and shared[i, j] >= min_frames
    }


def _groups(tracks: list[int], together: set[tuple[int, int]]) -> list[list[int]]:
    """Connected groups of `tracks` under the talking-at-the-same-time relation."""
    groups: list[list[int]] = []
    for track in tracks:
        linked = [g for g in groups if any((min(track, t), max(track, t)) in together for t in g)]
        merged = [track] + [t for g in linked for t in g]
        groups = [g for g in groups if g not in linked] + [merged]
    return groups


def _merge(intervals: list[tuple[int, int]], fill_gap_ms: int = 0) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + fill_gap_ms:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]
