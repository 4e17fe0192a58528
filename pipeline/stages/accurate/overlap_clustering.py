"""Overlap-aware online clustering (accurate profile): embedded windows in, updates, turns and a report out.

After the published description of diart (Coria et al., 2021, "Overlap-aware
low-latency online speaker diarization based on end-to-end local
segmentation"), on tracks rather than single windows. Three parts, each with its
own part of the session state, share the recent windows this stage keeps:

1. `speaker_identity`: which speaker each track is, by an optimal one-to-one
   assignment under cannot-link; twins merged back; at most the speaker limit
   of them shown, grouped.
2. `live_labels`: each region labelled `latency_s` after it, from the mean of every
   window that covered it, with hysteresis; several speakers may be active at
   once. Updates and turns.
3. `session_report`: regions settled a whole window behind; at the end the tracks
   are clustered again, all evidence in hand, and the report's turns relabelled,
   keeping the live ids where they match.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import ConfigDict, Field

from pipeline.config import OverlapClusteringConfig
from pipeline.stages.accurate.aggregation import WindowActivity
from pipeline.stages.accurate.live_labels import LiveLabels, LiveLabelsState
from pipeline.stages.accurate.session_report import ReportBuilder, ReportState
from pipeline.stages.accurate.speaker_identity import SpeakerIdentity, SpeakerIdentityState, shown_centroids
from pipeline.stages.base import ClusterOutput, JsonSessionState
from pipeline.stages.speaker_naming import Centroid, SpeakerNaming, SpeakerNamingState, with_voices
from topics.messages import ACTIVITY_SCALE, SAMPLE_RATE, SessionReport, SessionStart, SessionStop, WindowEmbeddings


class OverlapClusteringSessionState(JsonSessionState):
    """One session: the speaker count asked for, the windows in hand, and each part's own state."""

    # 4: the names of known speakers (3: the speaker floor; identity with evidence per track, apart pairs and
    # shown ids; 2: identity, live labels and report each in a part of their own; 1: one flat model, unversioned).
    VERSION = 4
    model_config = ConfigDict(extra="forbid")

    num_speakers: int | None
    speaker_limit: int
    speaker_floor: int
    last_step: int = -1
    ingest_ms: int = 0  # the newest ingest time of any window, carried by the updates
    end_s: float = 0.0  # end of the newest window
    window_s: float = 0.0
    # Windows not yet settled by both the live labels and the report.
    windows: list[WindowActivity] = []
    identity: SpeakerIdentityState = Field(default_factory=SpeakerIdentityState)
    live: LiveLabelsState = Field(default_factory=LiveLabelsState)
    report: ReportState = Field(default_factory=ReportState)
    naming: SpeakerNamingState = Field(default_factory=SpeakerNamingState)


class OverlapClusteringStage:
    """The accurate profile's cluster stage (`pipeline.stages.base.ClusterStage`)."""

    state_type = OverlapClusteringSessionState
    input_type = WindowEmbeddings

    def __init__(
        self, config: OverlapClusteringConfig, naming: SpeakerNaming | None = None, embedding_model: str | None = None
    ) -> None:
        self.config = config
        self.embedding_model = embedding_model  # the space of the embeddings it clusters, named in the report
        self.identity = SpeakerIdentity(config)
        self.live = LiveLabels(config)
        self.report = ReportBuilder(config)
        self.naming = naming  # None: speakers are never named

    def start(self, message: SessionStart) -> OverlapClusteringSessionState:
        return OverlapClusteringSessionState(
            num_speakers=message.num_speakers,
            speaker_limit=message.speaker_limit,
            speaker_floor=message.speaker_floor,
            naming=self.naming.start(message) if self.naming is not None else SpeakerNamingState(),
        )

    def push(self, state: OverlapClusteringSessionState, message: WindowEmbeddings) -> list[ClusterOutput]:
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
        speech_s = {
            t: sum(window.activity[slot]) * window.frame_step_s for slot, t in enumerate(window.tracks) if t >= 0
        }
        together = co_active(window, self.config.co_active_threshold, self.config.co_active_min_s)
        # The window's tracks embedded this time, in slot order.
        fresh = {t: message.embeddings[t] for t in window.tracks if t >= 0 and t in message.embeddings}
        if fresh:
            self.report.keep_embeddings(state.report, window, fresh, speech_s, together)
        recent = None
        if fresh and state.speaker_limit > 1 and message.step % self.config.split_every_steps == 0:
            recent = self.report.recent_evidence(
                state.report, self.config.update_min_activity_s, self.config.split_embeddings
            )
        self.identity.identify(
            state.identity, state.windows, fresh, speech_s, together, state.speaker_limit, state.speaker_floor, recent
        )
        latency = min(self.config.latency_s, state.window_s)
        outputs = self.live.settle(
            state.live, message.session_id, state.windows, state.end_s - latency, state.ingest_ms
        )
        self.report.settle(state.report, state.windows, state.end_s - state.window_s)
        self._forget_settled_windows(state)
        if self.naming is not None:
            # Every window, not only those with fresh embeddings: a profile enrolled or deleted meanwhile counts now.
            self.naming.match(state.naming, shown_centroids(state.identity))
            outputs = self.naming.label(state.naming, outputs)
        return outputs

    def finish(self, state: OverlapClusteringSessionState, message: SessionStop) -> list[ClusterOutput]:
        """Label the rest of the stream, close every open turn, then report the session."""
        end_s = max(message.offset / SAMPLE_RATE, state.live.until_s)
        outputs = self.live.settle(state.live, message.session_id, state.windows, end_s, state.ingest_ms)
        outputs += self.live.close_turns(state.live, message.session_id)
        self.report.settle(state.report, state.windows, end_s)
        if self.naming is not None:
            outputs = self.naming.label(state.naming, outputs)
        outputs.append(
            self.report.report(
                state.report,
                message.session_id,
                end_s,
                state.num_speakers,
                state.speaker_limit,
                state.speaker_floor,
                name=lambda report, centroids: self._name_report(state, report, centroids),
            )
        )
        return outputs

    def _name_report(
        self, state: OverlapClusteringSessionState, report: SessionReport, centroids: dict[int, Centroid]
    ) -> SessionReport:
        """The report with its speakers' voices, and their names where they match a profile."""
        report = with_voices(report, centroids, self.embedding_model)
        return report if self.naming is None else self.naming.label_report(state.naming, report, centroids)

    @staticmethod
    def _forget_settled_windows(state: OverlapClusteringSessionState) -> None:
        settled = min(state.live.until_s, state.report.until_s)
        state.windows = [w for w in state.windows if w.end_s > settled]


def co_active(window: WindowActivity, threshold: float, min_s: float) -> set[tuple[int, int]]:
    """Pairs of the window's tracks (a < b) both at least `threshold` active for `min_s` together: two voices."""
    on = (np.asarray(window.activity) >= threshold).astype(np.int32)
    shared = on @ on.T
    frames = max(1, math.ceil(min_s / window.frame_step_s - 1e-6))
    tracks = window.tracks
    return {
        (min(tracks[i], tracks[j]), max(tracks[i], tracks[j]))
        for i in range(len(tracks))
        for j in range(i + 1, len(tracks))
        if tracks[i] >= 0 and tracks[j] >= 0 and shared[i, j] >= frames
    }
