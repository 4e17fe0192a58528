"""The one place a profile picks its stages: a builder per role, and `build_chain` for all three.

The Faust agents (`pipeline.agents`) build the stage of their role, the in-process chain
(`pipeline.evaluation.chain`) all three. Each builder imports the modules of the profile it
builds only when called, so a worker loads only what its own stage runs: the cluster worker
never imports torch, and the fast profile never imports pyannote.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pipeline.config import Profile
from pipeline.stages.base import ClusterStage, EmbedStage, SegmentStage


class Chain(NamedTuple):
    """A profile's stages, in the order audio flows through them (`pipeline.stages.base.STAGES`)."""

    segment: SegmentStage[Any]
    embed: EmbedStage
    cluster: ClusterStage[Any]


def build_segment(profile: Profile) -> SegmentStage[Any]:
    """The profile's segment stage, its model loaded."""
    if profile.overlap_aware:
        from pipeline.stages.accurate.segmentation import SegmentationModel, SegmentationStage

        return SegmentationStage(profile.segmentation, SegmentationModel(profile.segmentation))
    from pipeline.stages.fast.vad import SileroVad, VadStage

    return VadStage(profile.vad, SileroVad())


def build_embed(profile: Profile) -> EmbedStage:
    """The profile's embed stage, its model loaded."""
    if profile.overlap_aware:
        from pipeline.stages.accurate.track_embedding import CamppEmbedder, TrackEmbeddingStage

        return TrackEmbeddingStage(profile.track_embedding, CamppEmbedder(profile.track_embedding))
    from pipeline.stages.fast.embedding import EmbeddingStage, ResemblyzerEmbedder

    return EmbeddingStage(ResemblyzerEmbedder(profile.embedding))


def build_cluster(profile: Profile) -> ClusterStage[Any]:
    """The profile's cluster stage: no model, numpy and scipy only."""
    if profile.overlap_aware:
        from pipeline.stages.accurate.overlap_clustering import OverlapClusteringStage

        return OverlapClusteringStage(profile.overlap_clustering)
    from pipeline.stages.fast.clustering import ClusteringStage

    return ClusteringStage(profile.clustering)


def build_chain(profile: Profile) -> Chain:
    return Chain(build_segment(profile), build_embed(profile), build_cluster(profile))
