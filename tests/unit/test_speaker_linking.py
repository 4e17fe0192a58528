"""Speakers linked across sessions without Kafka: one voice one label, never two voices of a session as one."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import SpeakerLinkingConfig
from pipeline.stages.speaker_linking import SpeakerLinker, job_labels
from topics import ReportedSpeaker, SessionReport
from topics.messages import ReportedTurn

LINKER = SpeakerLinker(SpeakerLinkingConfig(link_distance=0.15))


def voice(index: int, jitter: float = 0.0, seed: int = 0) -> list[float]:
    vector = np.zeros(8)
    vector[index] = 1.0
    vector += jitter * np.random.default_rng(seed).normal(size=8)
    return (vector / np.linalg.norm(vector)).tolist()


def report(session: str, *speakers: tuple[list[float] | None, str | None], model: str = "m") -> SessionReport:
    return SessionReport(
        session_id=session,
        duration_ms=10_000,
        speakers=[
            ReportedSpeaker(
                id=i,
                total_time_ms=3000,
                embedding=vector,
                profile_id=profile,
                speaker_name=None if profile is None else profile.upper(),
            )
            for i, (vector, profile) in enumerate(speakers)
        ],
        turns=[ReportedTurn(speaker=i, start_ms=1000 * i, end_ms=1000 * i + 900) for i in range(len(speakers))],
        embedding_model=model,
    )


def test_one_voice_in_several_sessions_gets_one_label_and_other_voices_their_own():
    reports = [
        report("a", (voice(0), None), (voice(1), None)),
        report("b", (voice(1, 0.05, seed=1), None), (voice(2), None)),
    ]
    labels = job_labels(LINKER.link(reports))
    assert labels[("a", 1)] == labels[("b", 0)]
    assert len({labels[("a", 0)], labels[("a", 1)], labels[("b", 1)]}) == 3
    assert labels[("a", 0)] == "speaker 1"  # numbered in the order the voices first speak


def test_two_speakers_of_one_session_are_never_linked_however_alike():
    labels = job_labels(LINKER.link([report("a", (voice(0), None), (voice(0, 0.01, seed=2), None))]))
    assert labels[("a", 0)] != labels[("a", 1)]


def test_speakers_named_after_one_profile_are_one_voice_under_its_name_and_two_profiles_never_merge():
    reports = [
        report("a", (voice(0), "ada"), (voice(3), None)),
        report("b", (voice(4), "ada"), (voice(0, 0.02, seed=3), "bob")),
    ]
    voices = LINKER.link(reports)
    labels = job_labels(voices)
    assert labels[("a", 0)] == labels[("b", 0)] == "ADA"  # linked by the profile though they sound apart
    assert labels[("b", 1)] == "BOB"  # as close to Ada's voice as can be, but another profile
    assert {v.profile_id for v in voices} == {"ada", "bob", None}


def test_a_speaker_never_embedded_stays_a_voice_of_its_own_and_models_do_not_mix():
    voices = LINKER.link([report("a", (voice(0), None), (None, None)), report("b", (voice(0), None))])
    labels = job_labels(voices)
    assert labels[("a", 0)] == labels[("b", 0)] != labels[("a", 1)]
    with pytest.raises(ValueError, match="several embedding models"):
        LINKER.link([report("a", (voice(0), None)), report("b", (voice(0), None), model="other")])
