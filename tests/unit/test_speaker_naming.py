"""Known speakers without Kafka: the registry's records, the one-to-one naming, and both cluster stages naming."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import PROFILES, ClusteringConfig, OverlapClusteringConfig, SpeakerNamingConfig
from pipeline.stages.accurate.overlap_clustering import OverlapClusteringSessionState, OverlapClusteringStage
from pipeline.stages.chains import EMBEDDING_MODELS, build_cluster
from pipeline.stages.fast.clustering import ClusteringStage
from pipeline.stages.speaker_naming import Centroid, ProfileRegistry, SpeakerNaming, SpeakerNamingState
from topics import (
    ProfileEmbedding,
    SessionReport,
    SessionStart,
    SessionStop,
    SpeakerProfile,
    SpeakerTurn,
    SpeakerUpdate,
    StepEmbedding,
    WindowEmbeddings,
)
from topics.speaker_profiles import ProfileKey, decode_profile, encode_profile, encode_tombstone

MODEL = "test-model"
CONFIG = SpeakerNamingConfig(min_similarity=0.6, keep_margin=0.05, min_evidence=2)
SESSION = "naming-1"


def direction(index: int, size: int = 16, toward: int | None = None, mix: float = 0.0) -> np.ndarray:
    vector = np.zeros(size)
    vector[index] = 1.0
    if toward is not None:
        vector[toward] = mix
    return vector / np.linalg.norm(vector)


def profile(profile_id: str, name: str, vector: np.ndarray, model: str = MODEL) -> SpeakerProfile:
    return SpeakerProfile(
        profile_id=profile_id,
        name=name,
        embeddings={model: ProfileEmbedding(vector=vector.tolist(), windows=3)},
        speech_s=6.0,
        clips=1,
        created_ms=1,
        updated_ms=1,
    )


def registry_of(*profiles: SpeakerProfile) -> ProfileRegistry:
    registry = ProfileRegistry()
    for p in profiles:
        registry.put(p)
    return registry


def centroid(vector: np.ndarray, evidence: int = 4) -> Centroid:
    return Centroid(vector * evidence, evidence)


# ---- the records ------------------------------------------------------------------------


def test_a_profile_record_round_trips_and_a_tombstone_deletes():
    ada = profile("p1", "Ada", direction(0))
    key, value, headers = encode_profile(ada)
    assert key == b"default/p1"
    assert decode_profile(key, value, headers) == (ProfileKey("default", "p1"), ada)
    tomb_key, tomb_value, tomb_headers = encode_tombstone(ada.key)
    assert (tomb_key, tomb_value) == (key, None)
    assert decode_profile(tomb_key, tomb_value, tomb_headers) == (ProfileKey("default", "p1"), None)


@pytest.mark.parametrize(
    "key, value",
    [
        (b"no-slash", None),
        (b"default/p2", profile("p1", "Ada", direction(0)).model_dump_json().encode()),  # another profile's key
        (b"default/p1", b'{"profile_id": "p1"}'),
    ],
)
def test_a_malformed_profile_record_is_refused(key, value):
    from topics import DecodeError

    with pytest.raises(DecodeError):
        decode_profile(key, value)


def test_the_registry_reads_the_records_it_is_given_and_skips_bad_ones():
    records = {}
    registry = ProfileRegistry(records)
    registry.put(profile("p1", "Ada", direction(0)))
    records[b"default/broken"] = b"not json"
    records[b"other/p9"] = (
        profile("p9", "Eve", direction(3)).model_copy(update={"tenant": "other"}).model_dump_json().encode()
    )
    records[b"default/p2"] = profile("p2", "Bob", direction(1), model="another-model").model_dump_json().encode()
    assert [v.name for v in registry.voices(MODEL)] == ["Ada"]
    assert [v.name for v in registry.voices("another-model")] == ["Bob"]
    assert [p.name for p in registry.profiles("other")] == ["Eve"]
    registry.remove(ProfileKey("default", "p1"))
    assert registry.voices(MODEL) == []


# ---- naming -----------------------------------------------------------------------------


def test_a_speaker_past_the_threshold_is_named_and_one_below_stays_unknown():
    naming = SpeakerNaming(CONFIG, registry_of(profile("p1", "Ada", direction(0))), MODEL)
    close = direction(0, toward=5, mix=0.5)  # similarity 0.89
    far = direction(0, toward=5, mix=2.0)  # similarity 0.45
    names = naming.assign({0: centroid(close), 1: centroid(far)})
    assert {s: n.speaker_name for s, n in names.items()} == {0: "Ada"}
    assert naming.assign({1: centroid(far)}) == {}


def test_two_speakers_of_one_session_never_share_a_profile():
    naming = SpeakerNaming(CONFIG, registry_of(profile("p1", "Ada", direction(0))), MODEL)
    a = direction(0, toward=5, mix=0.3)
    b = direction(0, toward=6, mix=0.6)
    names = naming.assign({0: centroid(a), 1: centroid(b)})
    assert list(names) == [0]  # the closer one


def test_the_assignment_is_optimal_over_the_whole_session():
    # Speaker 0 is a little closer to Ada than to Bob, speaker 1 only close to Ada: greedy would give
    # Ada to speaker 0 and leave speaker 1 unknown; one-to-one, both are named.
    ada, bob = direction(0), direction(1)
    registry = registry_of(profile("p1", "Ada", ada), profile("p2", "Bob", bob))
    naming = SpeakerNaming(CONFIG, registry, MODEL)
    speaker0 = (ada * 0.75 + bob * 0.7) / np.linalg.norm(ada * 0.75 + bob * 0.7)
    speaker1 = direction(0, toward=4, mix=0.6)
    names = naming.assign({0: centroid(speaker0), 1: centroid(speaker1)})
    assert {s: n.speaker_name for s, n in names.items()} == {0: "Bob", 1: "Ada"}


def test_a_speaker_with_too_little_evidence_waits_and_a_later_match_names_it():
    naming = SpeakerNaming(CONFIG, registry_of(profile("p1", "Ada", direction(0))), MODEL)
    state = SpeakerNamingState()
    naming.match(state, {0: centroid(direction(0), evidence=1)})
    assert state.names == {}
    naming.match(state, {0: centroid(direction(0), evidence=2)})
    assert state.names[0].speaker_name == "Ada"


def test_a_name_holds_a_little_below_the_threshold_and_goes_past_the_margin():
    naming = SpeakerNaming(CONFIG, registry_of(profile("p1", "Ada", direction(0))), MODEL)
    state = SpeakerNamingState()

    def at(similarity: float) -> np.ndarray:
        return direction(0) * similarity + direction(7) * np.sqrt(1 - similarity**2)

    naming.match(state, {0: centroid(at(0.62))})
    assert 0 in state.names
    naming.match(state, {0: centroid(at(0.57))})
    assert 0 in state.names  # within keep_margin of the threshold
    naming.match(state, {0: centroid(at(0.53))})
    assert state.names == {}
    naming.match(state, {0: centroid(at(0.58))})
    assert state.names == {}  # not named again until past the threshold itself


def test_a_deleted_profile_stops_naming_and_a_new_one_names_at_the_next_match():
    registry = registry_of(profile("p1", "Ada", direction(0)))
    naming = SpeakerNaming(CONFIG, registry, MODEL)
    state = SpeakerNamingState()
    speakers = {0: centroid(direction(0)), 1: centroid(direction(1))}
    naming.match(state, speakers)
    assert set(state.names) == {0}
    registry.remove(ProfileKey("default", "p1"))
    registry.put(profile("p2", "Bob", direction(1)))
    naming.match(state, speakers)
    assert {s: n.speaker_name for s, n in state.names.items()} == {1: "Bob"}


def test_a_session_that_asks_not_to_be_identified_is_never_named():
    naming = SpeakerNaming(CONFIG, registry_of(profile("p1", "Ada", direction(0))), MODEL)
    state = naming.start(SessionStart(session_id=SESSION, identify=False))
    naming.match(state, {0: centroid(direction(0))})
    assert state.names == {}
    assert naming.start(SessionStart(session_id=SESSION)).identify is None


def test_updates_and_turns_carry_the_names():
    naming = SpeakerNaming(CONFIG, registry_of(profile("p1", "Ada", direction(0))), MODEL)
    state = SpeakerNamingState()
    naming.match(state, {0: centroid(direction(0)), 1: centroid(direction(1))})
    update = SpeakerUpdate(
        session_id=SESSION, position_ms=500, current_speaker=0, speaking_time_ms={0: 500}, ingest_ms=0
    )
    turns = [
        SpeakerTurn(session_id=SESSION, speaker=0, start_ms=0, end_ms=500, final=False),
        SpeakerTurn(session_id=SESSION, speaker=1, start_ms=0, end_ms=500, final=True),
    ]
    named_update, ada_turn, unknown_turn = naming.label(state, [update, *turns])
    assert named_update.named[0].speaker_name == "Ada" and 1 not in named_update.named
    assert (ada_turn.speaker_name, ada_turn.profile_id) == ("Ada", "p1")
    assert unknown_turn.speaker_name is None and unknown_turn.profile_id is None


# ---- the cluster stages -----------------------------------------------------------------


def accurate_windows(talk: dict[int, tuple[float, float]], voices: dict[int, list[float]], duration_s: float):
    """Half-second steps of 5 s windows; track t talks over its interval with voice voices[t]."""
    frame_s, rate = 0.05, 16_000
    windows = []
    for step in range(int(duration_s / 0.5)):
        end = (step + 1) * 0.5
        start = end - 5.0
        times = start + frame_s / 2 + frame_s * np.arange(100)
        tracks, activity = [], []
        for track, (a, b) in talk.items():
            on = ((times >= a) & (times < b)) * 100
            if on.any():
                tracks.append(track)
                activity.append(on.astype(int).tolist())
        windows.append(
            WindowEmbeddings(
                session_id=SESSION,
                step=step,
                start=int(start * rate),
                end=int(end * rate),
                ingest_ms=0,
                frame_offset_s=frame_s / 2,
                frame_step_s=frame_s,
                tracks=tracks,
                activity=activity,
                embeddings={t: voices[t] for t in tracks},
            )
        )
    return windows


def test_the_accurate_stage_names_live_speakers_turns_and_the_report():
    ada = direction(0)
    registry = registry_of(profile("p1", "Ada", ada, model=EMBEDDING_MODELS["accurate"]))
    naming = SpeakerNaming(CONFIG, registry, EMBEDDING_MODELS["accurate"])
    stage = OverlapClusteringStage(OverlapClusteringConfig(latency_s=1.0), naming)
    state = stage.start(SessionStart(session_id=SESSION))
    voices = {0: ada.tolist(), 1: direction(1).tolist()}
    outputs = []
    for window in accurate_windows({0: (0.0, 5.0), 1: (6.0, 11.0)}, voices, 12.0):
        outputs += stage.push(state, window)
        # The state, names included, survives the changelog.
        state = OverlapClusteringSessionState.from_bytes(state.to_bytes())
    outputs += stage.finish(state, SessionStop(session_id=SESSION, seq=1, offset=12 * 16_000))
    updates = [o for o in outputs if isinstance(o, SpeakerUpdate)]
    named = {s: n.speaker_name for u in updates for s, n in u.named.items()}
    assert named == {0: "Ada"}
    assert any(u.current_speaker == 1 for u in updates) and all(1 not in u.named for u in updates)
    final_turns = [o for o in outputs if isinstance(o, SpeakerTurn) and o.final]
    assert {t.speaker: t.speaker_name for t in final_turns} == {0: "Ada", 1: None}
    (report,) = [o for o in outputs if isinstance(o, SessionReport)]
    assert {s.id: s.speaker_name for s in report.speakers} == {0: "Ada", 1: None}
    assert {s.id: s.profile_id for s in report.speakers} == {0: "p1", 1: None}
    # Each reported speaker carries its voice, for linking across sessions.
    assert np.dot(report.speakers[0].embedding, ada) == pytest.approx(1.0, abs=1e-3)
    assert np.dot(report.speakers[1].embedding, direction(1)) == pytest.approx(1.0, abs=1e-3)


def test_the_fast_stage_names_speakers_and_the_report():
    ada = direction(0)
    registry = registry_of(profile("p1", "Ada", ada, model=EMBEDDING_MODELS["fast"]))
    stage = ClusteringStage(ClusteringConfig(), SpeakerNaming(CONFIG, registry, EMBEDDING_MODELS["fast"]))
    state = stage.start(SessionStart(session_id=SESSION, num_speakers=2))
    outputs = []
    for index in range(20):
        vector = ada if index < 10 else direction(1)
        step = StepEmbedding(
            session_id=SESSION,
            step=index,
            start=index * 8000,
            end=(index + 1) * 8000,
            voiced=8000,
            ingest_ms=0,
            embedding=vector.tolist(),
            speech=[(index * 8000, (index + 1) * 8000)],
        )
        outputs += stage.push(state, step)
    outputs += stage.finish(state, SessionStop(session_id=SESSION, seq=1, offset=20 * 8000))
    updates = [o for o in outputs if isinstance(o, SpeakerUpdate)]
    assert updates[-1].named[0].speaker_name == "Ada" and 1 not in updates[-1].named
    (report,) = [o for o in outputs if isinstance(o, SessionReport)]
    assert {s.id: s.speaker_name for s in report.speakers} == {0: "Ada", 1: None}
    assert np.dot(report.speakers[1].embedding, direction(1)) == pytest.approx(1.0, abs=1e-3)


def test_without_a_registry_the_stages_name_nobody_and_each_profile_names_in_its_own_model():
    for name, config in PROFILES.items():
        stage = build_cluster(config)
        assert stage.naming is None
        assert build_cluster(config, ProfileRegistry()).naming.model_name == EMBEDDING_MODELS[name]
        assert stage.embedding_model == EMBEDDING_MODELS[name]  # named in its reports


def test_the_model_names_match_the_embed_stages():
    from pipeline.stages.accurate.track_embedding import TrackEmbeddingStage
    from pipeline.stages.fast.embedding import EmbeddingStage

    assert EMBEDDING_MODELS == {"accurate": TrackEmbeddingStage.model_name, "fast": EmbeddingStage.model_name}


def test_clients_see_names_in_camel_case_only_where_a_speaker_is_named():
    from pipeline.gateway.protocol import result_event
    from topics import NamedSpeaker, ReportedSpeaker
    from topics.messages import ReportedTurn

    ada = NamedSpeaker(profile_id="p1", speaker_name="Ada")
    update = SpeakerUpdate(
        session_id=SESSION,
        position_ms=500,
        current_speaker=0,
        active_speakers=[0, 1],
        speaking_time_ms={0: 500, 1: 200},
        ingest_ms=0,
        named={0: ada},
    )
    assert result_event(update).wire() == {
        "event": "speaker",
        "currentSpeakerId": 0,
        "activeSpeakerIds": [0, 1],
        "speakingTimeMs": {"0": 500, "1": 200},
        "speakerName": "Ada",
        "profileId": "p1",
        "namedSpeakers": {"0": {"speakerName": "Ada", "profileId": "p1"}},
    }
    unknown_now = update.model_copy(update={"current_speaker": 1})
    assert "speakerName" not in result_event(unknown_now).wire()
    assert "namedSpeakers" not in result_event(update.model_copy(update={"named": {}})).wire()
    turn = SpeakerTurn(
        session_id=SESSION, speaker=0, start_ms=0, end_ms=500, final=True, speaker_name="Ada", profile_id="p1"
    )
    assert result_event(turn).wire()["speakerName"] == "Ada"
    report = SessionReport(
        session_id=SESSION,
        duration_ms=1000,
        speakers=[
            ReportedSpeaker(id=0, total_time_ms=500, speaker_name="Ada", profile_id="p1"),
            ReportedSpeaker(id=1, total_time_ms=200),
        ],
        turns=[ReportedTurn(speaker=0, start_ms=0, end_ms=500), ReportedTurn(speaker=1, start_ms=500, end_ms=700)],
    )
    event = result_event(report).wire()
    assert event["speakers"] == [
        {"id": 0, "totalTimeMs": 500, "speakerName": "Ada", "profileId": "p1"},
        {"id": 1, "totalTimeMs": 200},
    ]
    assert [t.get("speakerName") for t in event["turns"]] == ["Ada", None]


def test_a_start_action_may_ask_not_to_identify():
    from pipeline.gateway.protocol import GatewaySession, parse_action

    action = parse_action('{"action": "start", "identify": false}')
    assert GatewaySession("p", 65536).start(action).identify is False
    assert GatewaySession("p", 65536).start(parse_action('{"action": "start"}')).identify is None
