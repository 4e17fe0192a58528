"""Live speaker identity on its own: cannot-link, the speaker limit and count, follow labels, evidence, twins."""

from __future__ import annotations

import numpy as np

from pipeline.config import OverlapClusteringConfig
from pipeline.stages.accurate.aggregation import WindowActivity
from pipeline.stages.accurate.speaker_identity import SpeakerIdentity, SpeakerIdentityState

# Twin merging does not look at who talked at the same time: off here, so the assignment alone is tested.
CONFIG = OverlapClusteringConfig(merge_distance=None)
FRAME_S = 0.05


def voice(index: int, towards: int | None = None, amount: float = 0.0) -> list[float]:
    vector = np.zeros(8)
    vector[index] = 1.0
    if towards is not None:
        vector[towards] = amount
    return (vector / np.linalg.norm(vector)).tolist()


def window(tracks: list[int], follows: list[int] | None = None, start_s: float = 0.0) -> WindowActivity:
    """A 5 s window in which every track talks throughout."""
    frames = int(5.0 / FRAME_S)
    return WindowActivity(
        start_s=start_s,
        end_s=start_s + 5.0,
        frame_offset_s=FRAME_S / 2,
        frame_step_s=FRAME_S,
        tracks=tracks,
        follows=follows or [-1] * len(tracks),
        activity=[[1.0] * frames for _ in tracks],
    )


def identify(identity, state, windows, embeddings, together=frozenset(), speaker_limit=20, speaker_floor=1):
    speech_s = {t: 5.0 for t in windows[-1].tracks}
    identity.identify(state, windows, embeddings, speech_s, set(together), speaker_limit, speaker_floor)


def test_two_tracks_heard_together_never_share_a_speaker():
    identity = SpeakerIdentity(CONFIG)
    state = SpeakerIdentityState()
    identify(identity, state, [window([0])], {0: voice(0)})
    # Both new tracks sound like speaker 0; talking at once, only one of them can be that speaker.
    windows = [window([1, 2], start_s=5.0)]
    identify(identity, state, windows, {1: voice(0), 2: voice(0, towards=1, amount=0.1)}, together={(1, 2)})
    assert state.speaker_of_track[1] != state.speaker_of_track[2]
    assert windows[0].speakers[0] != windows[0].speakers[1]


def test_a_speaker_talking_over_a_new_track_is_out_of_its_reach():
    identity = SpeakerIdentity(CONFIG)
    state = SpeakerIdentityState()
    identify(identity, state, [window([0])], {0: voice(0)})
    # Track 0 (speaker 0) goes on talking while track 1, which sounds just like it, starts.
    identify(identity, state, [window([0, 1], start_s=2.0)], {1: voice(0)}, together={(0, 1)})
    assert state.speaker_of_track == {0: 0, 1: 1}


def test_no_more_speakers_are_shown_than_the_limit():
    identity = SpeakerIdentity(CONFIG)
    state = SpeakerIdentityState()
    both = window([0, 1])
    identify(identity, state, [both], {0: voice(0), 1: voice(1)}, together={(0, 1)}, speaker_limit=1)
    # Two voices at once, one place: one of them is shown, the other (a voice past the count) is left unlabelled.
    assert sorted(both.speakers, key=str) == [0, None]


def test_a_track_not_embedded_yet_is_the_voice_it_follows():
    identity = SpeakerIdentity(CONFIG)
    state = SpeakerIdentityState()
    identify(identity, state, [window([0])], {0: voice(0)})
    later = window([0, 3], follows=[-1, 0], start_s=5.0)
    identify(identity, state, [later], {})
    assert state.follows == {3: 0} and later.speakers == [0, 0]
    # Its own embedding then decides: another voice.
    identify(identity, state, [window([3], start_s=6.0)], {3: voice(1)})
    assert state.speaker_of_track[3] == 1


def test_an_earlier_window_is_labelled_once_its_track_is_known():
    identity = SpeakerIdentity(CONFIG)
    state = SpeakerIdentityState()
    first = window([0])
    identify(identity, state, [first], {})
    assert first.speakers == [None]
    identify(identity, state, [first, window([0], start_s=0.5)], {0: voice(0)})
    assert first.speakers == [0]


def test_twins_merge_into_the_older_speaker_everywhere():
    identity = SpeakerIdentity(OverlapClusteringConfig(new_speaker_distance=0.25, merge_distance=0.6))
    state = SpeakerIdentityState()
    identify(identity, state, [window([0])], {0: voice(0)})
    # Distant enough to open speaker 1, yet its centroid is within the merge distance of speaker 0.
    twin = window([1], start_s=5.0)
    identify(identity, state, [twin], {1: voice(0, towards=5, amount=0.9)})
    assert state.merged_into == {1: 0}
    assert state.speaker_of_track == {1: 0} and twin.speakers == [0]
    # A retired speaker takes no new tracks.
    identify(identity, state, [window([2], start_s=10.0)], {2: voice(0, towards=5, amount=0.9)})
    assert state.speaker_of_track[2] == 0


# ---- a count given: N places, never two of them for one voice ----------------------------------

COUNTED = OverlapClusteringConfig()


def test_a_twin_opened_on_mixed_evidence_does_not_hold_one_of_the_places():
    identity = SpeakerIdentity(COUNTED)
    state = SpeakerIdentityState()
    first = window([0])
    for _ in range(3):  # voice 0, embedded three times while it talks
        identify(identity, state, [first], {0: voice(0)}, speaker_limit=2, speaker_floor=2)
    # Voice 0 with another sound bleeding in: far enough to open a speaker, too far to merge back yet.
    twin = window([1], start_s=5.0)
    identify(identity, state, [twin], {1: voice(0, towards=5, amount=1.7)}, speaker_limit=2, speaker_floor=2)
    twin_speaker = state.speaker_of_track[1]
    assert twin_speaker != 0 and not state.merged_into
    # Then the second voice of the two: it gets a place of its own, the twin is shown as voice 0.
    second = window([2], start_s=10.0)
    identify(identity, state, [second], {2: voice(1)}, speaker_limit=2, speaker_floor=2)
    shown = state.shown_as
    assert second.speakers[0] is not None and second.speakers[0] != shown[0]
    assert shown[twin_speaker] == shown[0]
    # Clients never see more ids than voices: the twin's id, now standing for nobody, went to the new voice.
    assert state.shown_ids == [0, 1] and second.speakers == [1]


def test_two_tracks_heard_together_are_never_merged_nor_shown_as_one():
    identity = SpeakerIdentity(OverlapClusteringConfig(merge_distance=0.9))  # twins merge from afar
    state = SpeakerIdentityState()
    both = window([0, 1])
    alike = {0: voice(0), 1: voice(0, towards=1, amount=0.8)}
    identify(identity, state, [both], alike, together={(0, 1)})
    assert state.speaker_of_track[0] != state.speaker_of_track[1]
    assert state.apart == {(0, 1)} and not state.merged_into
    # With one place only, one of the two is shown and the other is left unlabelled, never both as one.
    identify(identity, state, [both], alike, together={(0, 1)}, speaker_limit=1)
    assert not state.merged_into
    assert sorted(both.speakers, key=str) == [0, None]


def test_a_speaker_opened_on_one_tracks_mixed_evidence_empties_when_the_track_turns_out_another_voice():
    identity = SpeakerIdentity(CONFIG)
    state = SpeakerIdentityState()
    first = window([0])
    for _ in range(3):
        identify(identity, state, [first], {0: voice(0)})
    late = window([0, 1], start_s=2.0)
    identify(identity, state, [late], {1: voice(0, towards=5, amount=1.7)})
    assert state.speaker_of_track[1] == 1
    # Its next embedding is clearly voice 0: the track takes its evidence along, and speaker 1 is retired into 0.
    identify(identity, state, [late], {1: voice(0)})
    assert state.speaker_of_track == {0: 0, 1: 0} and state.merged_into == {1: 0}
    assert state.evidence == [5, 0] and late.speakers == [0, 0]


def test_below_the_count_a_voice_opens_a_speaker_more_readily():
    between = voice(0, towards=1, amount=1.4)  # 0.42 from voice 0: past the floor distance, short of the other
    opened = {}
    for floor in (1, 2):
        identity = SpeakerIdentity(COUNTED)
        state = SpeakerIdentityState()
        first = window([0])
        for _ in range(8):
            identify(identity, state, [first], {0: voice(0)}, speaker_limit=2, speaker_floor=floor)
        identify(identity, state, [window([1], start_s=5.0)], {1: between}, speaker_limit=2, speaker_floor=floor)
        opened[floor] = state.speaker_of_track[1] != 0
    assert opened == {1: False, 2: True}
