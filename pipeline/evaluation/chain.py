"""The stage chain run in one process over one recording, with no broker.

The same stage classes the Faust agents wrap, fed in the order the bus would
feed them: for tuning, evaluation and tests of the stage math.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.config import Profile
from pipeline.stages.fast.clustering import ClusteringOutput
from topics.messages import AudioChunk, SessionReport, SessionStart, SpeakerTurn, SpeakerUpdate


@dataclass
class ChainResult:
    updates: list[SpeakerUpdate] = field(default_factory=list)
    turns: list[SpeakerTurn] = field(default_factory=list)
    report: SessionReport | None = None


def build_stages(profile: Profile):
    """(segment, embed, cluster) stages of the profile's chain, models loaded."""
    if profile.overlap_aware:
        from pipeline.stages.accurate.overlap_clustering import OverlapClusteringStage
        from pipeline.stages.accurate.segmentation import SegmentationModel, SegmentationStage
        from pipeline.stages.accurate.track_embedding import CamppEmbedder, TrackEmbeddingStage

        return (
            SegmentationStage(profile.segmentation, SegmentationModel(profile.segmentation)),
            TrackEmbeddingStage(profile.track_embedding, CamppEmbedder(profile.track_embedding)),
            OverlapClusteringStage(profile.overlap_clustering),
        )
    from pipeline.stages.fast.clustering import ClusteringStage
    from pipeline.stages.fast.embedding import EmbeddingStage, ResemblyzerEmbedder
    from pipeline.stages.fast.vad import SileroVad, VadStage

    return (
        VadStage(profile.vad, SileroVad()),
        EmbeddingStage(ResemblyzerEmbedder(profile.embedding)),
        ClusteringStage(profile.clustering),
    )


class InProcessChain:
    def __init__(self, profile: Profile) -> None:
        self.segment, self.embedding, self.clustering = build_stages(profile)

    def run(self, pcm: np.ndarray, start: SessionStart, chunk_samples: int = 3200) -> ChainResult:
        """Stream int16 PCM through the segment, embed and cluster stages in chunks."""
        session_id = start.session_id
        segment_state = self.segment.new_state()
        cluster_state = self.clustering.start(start)
        result = ChainResult()
        for seq, offset in enumerate(range(0, len(pcm), chunk_samples), start=1):
            chunk = AudioChunk(
                session_id=session_id,
                seq=seq,
                offset=offset,
                producer="inprocess",
                pcm=pcm[offset : offset + chunk_samples].astype("<i2").tobytes(),
            )
            self._collect(result, cluster_state, self.segment.push(segment_state, chunk, ingest_ms=0))
        self._collect(result, cluster_state, self.segment.finish(segment_state, session_id))
        for output in self.clustering.stop(cluster_state, session_id, len(pcm)):
            self._record(result, output)
        return result

    def _collect(self, result: ChainResult, cluster_state, steps) -> None:
        for embedded in self.embedding.process(steps):
            for output in self.clustering.push(cluster_state, embedded):
                self._record(result, output)

    @staticmethod
    def _record(result: ChainResult, output: ClusteringOutput) -> None:
        if isinstance(output, SpeakerUpdate):
            result.updates.append(output)
        elif isinstance(output, SpeakerTurn):
            result.turns.append(output)
        else:
            result.report = output
