"""The one place a profile picks its stages: a builder per role, and `build_chain` for all three.

The Faust agents (`pipeline.agents`) build the stage of their role, the in-process chain
(`pipeline.evaluation.chain`) all three. Each builder imports the modules of the profile it
builds only when called, so a worker loads only what its own stage runs: the cluster worker
never imports torch, and the fast profile never imports pyannote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from pipeline.config import Profile
from pipeline.stages.base import ClusterStage, EmbedStage, SegmentStage

if TYPE_CHECKING:
    from pipeline.stages.speaker_naming import ProfileRegistry

# The embed stages' `model_name`s, the keys of a profile's embeddings (`topics.speaker_profiles`): known here
# without importing torch, as the cluster stage must name speakers in the space its embeddings come from.
EMBEDDING_MODELS = {"accurate": "campplus", "fast": "resemblyzer-ge2e"}


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


def build_cluster(profile: Profile, registry: ProfileRegistry | None = None) -> ClusterStage[Any]:
    """The profile's cluster stage: no model, numpy and scipy only; naming speakers after `registry`'s profiles."""
    from pipeline.stages.speaker_naming import SpeakerNaming

    naming = None
    if registry is not None:
        naming = SpeakerNaming(profile.naming, registry, EMBEDDING_MODELS[profile.name])
    if profile.overlap_aware:
        from pipeline.stages.accurate.overlap_clustering import OverlapClusteringStage

        return OverlapClusteringStage(profile.overlap_clustering, naming, EMBEDDING_MODELS[profile.name])
    from pipeline.stages.fast.clustering import ClusteringStage

    return ClusteringStage(profile.clustering, naming, EMBEDDING_MODELS[profile.name])


def build_chain(profile: Profile) -> Chain:
    return Chain(build_segment(profile), build_embed(profile), build_cluster(profile))
