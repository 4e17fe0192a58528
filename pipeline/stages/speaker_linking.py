"""Speakers linked across sessions: the same voice gets one label in every session of a batch.

The step runs over the sessions' reports, once they are all in: each report speaker brings its
voice (`ReportedSpeaker.embedding`, the centroid of its embeddings) and its talk time. The
speakers of all the sessions are clustered by average linkage on cosine distance, weighted by
talk time, up to `link_distance` (`pipeline.stages.accurate.reclustering`), under two rules:
two speakers of one session are two voices (the session has told them apart), and the
speakers one enrolled profile named are one voice, never that of another profile. A linked
voice is labelled with the profile's name where it has one, else `speaker N` (N from 1, in
the order the voices first speak in the batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config import SpeakerLinkingConfig
from pipeline.stages.accurate.reclustering import LEFT_OUT, constrained_average_linkage
from topics.messages import SessionReport


@dataclass(frozen=True)
class LinkedVoice:
    """One voice of the batch: its label, its profile if enrolled, and the session speakers it is."""

    label: str
    profile_id: str | None
    members: tuple[tuple[str, int], ...]  # (session id, speaker id)


class SpeakerLinker:
    def __init__(self, config: SpeakerLinkingConfig) -> None:
        self.config = config

    def link(self, reports: Sequence[SessionReport]) -> list[LinkedVoice]:
        """The batch's voices; a speaker without an embedding (it never was embedded) is a voice of its own."""
        models = {r.embedding_model for r in reports if r.embedding_model is not None}
        if len(models) > 1:
            raise ValueError(f"reports of several embedding models cannot be linked: {sorted(models)}")
        # One item per named profile (its speakers are one voice), one per other speaker.
        items: list[list[tuple[str, int]]] = []
        vectors, weights, profiles, first_ms = [], [], [], []
        by_profile: dict[str, int] = {}
        starts = {
            (r.session_id, s.id): min((t.start_ms for t in r.turns if t.speaker == s.id), default=0)
            for r in reports
            for s in r.speakers
        }
        lone: list[tuple[str, int]] = []
        for order, report in enumerate(reports):
            for speaker in report.speakers:
                member = (report.session_id, speaker.id)
                if speaker.embedding is None:
                    lone.append(member)
                    continue
                vector = np.asarray(speaker.embedding, np.float64) * max(speaker.total_time_ms, 1)
                when = order * 10**9 + starts[member]
                if speaker.profile_id is not None and speaker.profile_id in by_profile:
                    index = by_profile[speaker.profile_id]
                    items[index].append(member)
                    vectors[index] = vectors[index] + vector
                    weights[index] += speaker.total_time_ms
                    first_ms[index] = min(first_ms[index], when)
                    continue
                if speaker.profile_id is not None:
                    by_profile[speaker.profile_id] = len(items)
                items.append([member])
                vectors.append(vector)
                weights.append(float(speaker.total_time_ms))
                profiles.append(speaker.profile_id)
                first_ms.append(when)
        labels = self._cluster(items, vectors, weights, profiles)
        groups: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            groups.setdefault(int(label) if label != LEFT_OUT else -1 - index, []).append(index)
        voices = []
        for members in groups.values():
            profile = next((profiles[i] for i in members if profiles[i] is not None), None)
            voices.append((min(first_ms[i] for i in members), profile, [m for i in members for m in items[i]]))
        voices.sort(key=lambda v: v[0])
        voices += [(0, None, [member]) for member in lone]
        names = {s.profile_id: s.speaker_name for r in reports for s in r.speakers if s.profile_id is not None}
        linked, number = [], 0
        for _, profile, members in voices:
            if profile is None:
                number += 1
            label = names[profile] if profile is not None and names.get(profile) else f"speaker {number}"
            linked.append(LinkedVoice(label=label, profile_id=profile, members=tuple(sorted(members))))
        return linked

    def _cluster(
        self, items: list[list[tuple[str, int]]], vectors: list, weights: list[float], profiles: list[str | None]
    ) -> np.ndarray:
        count = len(items)
        if not count:
            return np.zeros(0, int)
        cannot = np.zeros((count, count), bool)
        sessions = [{session for session, _ in item} for item in items]
        for a in range(count):
            for b in range(a + 1, count):
                two_profiles = profiles[a] is not None and profiles[b] is not None
                if sessions[a] & sessions[b] or two_profiles:
                    cannot[a, b] = cannot[b, a] = True
        units = np.stack([v / (np.linalg.norm(v) or 1.0) for v in vectors])
        return constrained_average_linkage(
            units, np.asarray(weights) / 1000 + 1e-3, cannot, distance=self.config.link_distance, max_clusters=count
        )


def job_labels(voices: Sequence[LinkedVoice]) -> dict[tuple[str, int], str]:
    """(session id, speaker id) -> the batch-wide label of its voice."""
    return {member: voice.label for voice in voices for member in voice.members}
