"""Known speakers: a session's speakers named after the enrolled profiles their voices match.

The cluster stage of either chain keeps a centroid per speaker it shows clients; this part of
its state compares those centroids with the registry's profiles (`topics.speaker_profiles`),
the profile embedding of the same model the session's embeddings come from. One optimal
one-to-one assignment (Hungarian, on cosine similarity) names the speakers: two speakers of
one session never carry one profile, and one speaker never carries two. A pair counts only
from `min_similarity` on; below it the speaker stays unknown, and a later match, with more
of its voice in hand, may still name it. A name once given holds a little below the
threshold (`keep_margin`) so it does not flicker as the centroid moves. Every match runs
against the registry as it is then: a profile enrolled during a session can name one of its
speakers, and a deleted one stops naming anyone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.optimize import linear_sum_assignment

from pipeline.config import SpeakerNamingConfig
from pipeline.stages.base import ClusterOutput
from topics.messages import DecodeError, NamedSpeaker, SessionReport, SessionStart, SpeakerTurn, SpeakerUpdate
from topics.speaker_profiles import DEFAULT_TENANT, ProfileKey, SpeakerProfile, decode_profile, encode_profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownVoice:
    """One profile's embedding for one model, ready to compare."""

    profile_id: str
    name: str
    vector: np.ndarray  # unit length


@dataclass(frozen=True)
class Centroid:
    """What a cluster stage knows of one shown speaker's voice: the sum of its embeddings and how many."""

    vector_sum: np.ndarray
    evidence: int


class ProfileRegistry:
    """The registry's records as a mapping of Kafka key to value bytes (a Faust GlobalTable, or a plain dict).

    Records are decoded once each and cached by identity, so reading the registry on every
    window costs a pass over its keys. A record that does not decode is skipped (and logged once).
    """

    def __init__(self, records: MutableMapping[bytes, bytes] | None = None) -> None:
        self.records: MutableMapping[bytes, bytes] = records if records is not None else {}
        self._decoded: dict[bytes, tuple[bytes, SpeakerProfile | None]] = {}

    def put(self, profile: SpeakerProfile) -> None:
        key, value, _ = encode_profile(profile)
        self.records[key] = value

    def remove(self, key: ProfileKey) -> None:
        self.records.pop(key.encode(), None)

    def profiles(self, tenant: str = DEFAULT_TENANT) -> list[SpeakerProfile]:
        found = []
        for key, value in list(self.records.items()):
            cached = self._decoded.get(key)
            if cached is None or cached[0] is not value:
                cached = (value, self._decode(key, value))
                self._decoded[key] = cached
            profile = cached[1]
            if profile is not None and profile.tenant == tenant:
                found.append(profile)
        if len(self._decoded) > 2 * len(self.records) + 16:  # forget the records deleted since
            self._decoded = {k: v for k, v in self._decoded.items() if k in self.records}
        return found

    def voices(self, model_name: str, tenant: str = DEFAULT_TENANT) -> list[KnownVoice]:
        """The tenant's profiles enrolled with `model_name`, in a stable order."""
        voices = [
            KnownVoice(p.profile_id, p.name, _unit(p.embeddings[model_name].vector))
            for p in self.profiles(tenant)
            if model_name in p.embeddings
        ]
        return sorted(voices, key=lambda v: v.profile_id)

    @staticmethod
    def _decode(key: bytes, value: bytes | None) -> SpeakerProfile | None:
        try:
            return decode_profile(key, value)[1]
        except DecodeError as exc:
            log.warning("skipping speaker profile record %r: %s", key, exc)
            return None


class SpeakerNamingState(BaseModel):
    """Whether the session asked to be identified, and the profile each shown speaker carries now."""

    model_config = ConfigDict(extra="forbid")

    identify: bool | None = None
    # The session's tenant (its start's): only that tenant's profiles name its speakers.
    tenant: str = DEFAULT_TENANT
    names: dict[int, NamedSpeaker] = {}


class SpeakerNaming:
    """Names a cluster stage's speakers; `model_name` is the embed stage's, whose space the centroids live in."""

    def __init__(
        self,
        config: SpeakerNamingConfig,
        registry: ProfileRegistry,
        model_name: str,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self.config = config
        self.registry = registry
        self.model_name = model_name
        self.tenant = tenant

    def start(self, message: SessionStart) -> SpeakerNamingState:
        return SpeakerNamingState(identify=message.identify, tenant=message.tenant)

    def match(self, state: SpeakerNamingState, centroids: Mapping[int, Centroid]) -> None:
        """Name the speakers whose centroids match a profile now; the others are unknown."""
        if state.identify is False:
            return
        state.names = self.assign(
            centroids, held=state.names, min_evidence=self.config.min_evidence, tenant=state.tenant
        )

    def assign(
        self,
        centroids: Mapping[int, Centroid],
        held: Mapping[int, NamedSpeaker] | None = None,
        min_evidence: int = 1,
        tenant: str | None = None,
    ) -> dict[int, NamedSpeaker]:
        """The one-to-one assignment of speakers to profiles (speaker -> profile), past the threshold.

        `tenant`: whose profiles may name them (a session's); None: the one this naming was built for.
        """
        voices = self.registry.voices(self.model_name, self.tenant if tenant is None else tenant)
        speakers = [s for s, c in sorted(centroids.items()) if c.evidence >= min_evidence and np.any(c.vector_sum)]
        if not voices or not speakers:
            return {}
        held = held or {}
        similarity = (
            np.stack([_unit(centroids[s].vector_sum) for s in speakers]) @ np.stack([v.vector for v in voices]).T
        )
        bonus = np.array(
            [
                [
                    self.config.keep_margin * (held.get(s) is not None and held[s].profile_id == v.profile_id)
                    for v in voices
                ]
                for s in speakers
            ]
        )
        score = similarity + bonus
        eligible = score >= self.config.min_similarity
        rows, cols = linear_sum_assignment(np.where(eligible, score, -1e3), maximize=True)
        return {
            speakers[r]: NamedSpeaker(profile_id=voices[c].profile_id, speaker_name=voices[c].name)
            for r, c in zip(rows, cols)
            if eligible[r, c]
        }

    def label(self, state: SpeakerNamingState, outputs: list[ClusterOutput]) -> list[ClusterOutput]:
        """The stage's updates and turns with the names the session's speakers carry now."""
        if not state.names:
            return outputs
        labelled: list[ClusterOutput] = []
        for output in outputs:
            if isinstance(output, SpeakerUpdate):
                output = output.model_copy(update={"named": dict(sorted(state.names.items()))})
            elif isinstance(output, SpeakerTurn) and output.speaker in state.names:
                named = state.names[output.speaker]
                output = output.model_copy(update={"speaker_name": named.speaker_name, "profile_id": named.profile_id})
            labelled.append(output)
        return labelled

    def label_report(
        self, state: SpeakerNamingState, report: SessionReport, centroids: Mapping[int, Centroid]
    ) -> SessionReport:
        """The report with its speakers named from the report's own centroids (all evidence in hand)."""
        if state.identify is False:
            return report
        names = self.assign(centroids, tenant=state.tenant)
        if not names:
            return report
        speakers = [
            s.model_copy(update={"speaker_name": names[s.id].speaker_name, "profile_id": names[s.id].profile_id})
            if s.id in names
            else s
            for s in report.speakers
        ]
        return report.model_copy(update={"speakers": speakers})


def with_voices(report: SessionReport, centroids: Mapping[int, Centroid], model_name: str | None) -> SessionReport:
    """The report with each speaker's voice (its unit centroid), so sessions' speakers can be linked later."""
    speakers = [
        s.model_copy(update={"embedding": [round(float(x), 4) for x in _unit(centroids[s.id].vector_sum)]})
        if s.id in centroids and np.any(centroids[s.id].vector_sum)
        else s
        for s in report.speakers
    ]
    return report.model_copy(update={"speakers": speakers, "embedding_model": model_name})


def _unit(vector: list[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    norm = np.linalg.norm(array)
    return array / norm if norm > 0 else array
