"""The accurate profile's math, without models: stitching, assignment under cannot-link,
aggregation of overlapping windows, binarization, re-clustering and speaker-count estimation."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stages.accurate.aggregation import FRAME_S, Binarizer, WindowActivity, aggregate, output_grid
from pipeline.stages.accurate.reclustering import LEFT_OUT, constrained_average_linkage, keep_live_ids
from pipeline.stages.accurate.segmentation import stitch
from pipeline.stages.accurate.speaker_assignment import NEW, assign, cosine_distances

# ---- stitching consecutive windows -----------------------------------------------------------


def test_stitch_follows_a_voice_whose_slot_number_changed():
    frames, shift = 100, 10
    time = np.arange(frames + shift)
    voice_a = (time < 60).astype(float)
    voice_b = (time >= 70).astype(float)
    previous = np.stack([voice_a[:frames], voice_b[:frames], np.zeros(frames)], axis=1)
    # The next window starts `shift` frames later and numbers the voices the other way round.
    current = np.stack([voice_b[shift:], np.zeros(frames), voice_a[shift:]], axis=1)
    assert stitch(previous, current, shift, min_agreement=0.5) == {0: 1, 2: 0}


def test_stitch_leaves_a_new_voice_unmatched():
    frames, shift = 100, 10
    previous = np.zeros((frames, 3))
    previous[:50, 0] = 1.0
    current = np.zeros((frames, 3))
    current[:40, 1] = 1.0  # the same voice, renumbered
    current[90:, 0] = 1.0  # a voice that starts in the new part only
    assert stitch(previous, current, shift, min_agreement=0.5) == {1: 0}


def test_stitch_without_a_previous_window_matches_nothing():
    assert stitch(np.zeros((0, 0)), np.ones((50, 3)), 10, 0.5) == {}


# ---- assignment with cannot-link --------------------------------------------------------------


def test_two_tracks_never_share_a_speaker_even_if_both_are_closest_to_it():
    distances = np.array([[0.1, 0.5], [0.2, 0.9]])
    # Greedy would give speaker 0 to both; the optimum gives track 1 speaker 0 and track 0 speaker 1
    # (0.5 + 0.2 = 0.7 beats 0.1 + 0.9 = 1.0).
    assert assign(distances, [False, False], slots_left=0, new_speaker_distance=0.6) == [1, 0]


def test_a_distant_track_opens_a_new_speaker_when_allowed():
    distances = np.array([[0.05], [0.8]])
    assert assign(distances, [True, True], slots_left=5, new_speaker_distance=0.6) == [0, NEW]
    # Not enough speech to be trusted with a new identity: it takes the nearest free speaker, if any.
    assert assign(distances, [True, False], slots_left=5, new_speaker_distance=0.6) == [0, None]


def test_new_speakers_stop_at_the_speaker_limit():
    distances = np.array([[0.9, 0.7], [0.95, 0.99], [0.2, 0.8]])
    result = assign(distances, [True, True, True], slots_left=1, new_speaker_distance=0.6)
    assert result.count(NEW) == 1
    assert result[1] == NEW  # the track farthest from everyone gets the one free slot
    assert sorted(r for r in result if r != NEW and r is not None) == [0, 1]


def test_first_track_of_a_session_opens_the_first_speaker():
    assert assign(np.zeros((1, 0)), [True], slots_left=2, new_speaker_distance=0.6) == [NEW]
    assert assign(np.zeros((1, 0)), [False], slots_left=2, new_speaker_distance=0.6) == [None]


def test_cosine_distances():
    d = cosine_distances(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[3.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(d, [[0.0, 1 - np.sqrt(0.5)], [1.0, 1 - np.sqrt(0.5)]], atol=1e-12)


# ---- aggregation and binarization -------------------------------------------------------------


def window(
    start_s: float, activity: list[list[float]], speakers: list[int | None], step_s: float = 0.5
) -> WindowActivity:
    frames = len(activity[0])
    return WindowActivity(
        start_s=start_s,
        end_s=start_s + frames * step_s,
        frame_offset_s=step_s / 2,
        frame_step_s=step_s,
        tracks=list(range(len(activity))),
        activity=activity,
        speakers=speakers,
    )


def test_aggregation_averages_the_windows_that_cover_each_frame():
    first = window(0.0, [[1, 1, 1, 1]], [0])  # covers 0-2 s
    second = window(1.0, [[0, 0, 0, 0]], [0])  # covers 1-3 s, hears nothing
    times = np.array([0.75, 1.75, 2.75])
    activity, _ = aggregate([first, second], times)
    np.testing.assert_allclose(activity[0], [1.0, 0.5, 0.0])


def test_a_silent_window_votes_silence():
    silent = WindowActivity(start_s=0.0, end_s=2.0, frame_offset_s=0.01, frame_step_s=0.02, tracks=[], activity=[])
    talking = window(0.0, [[1, 1, 1, 1]], [0])
    activity, _ = aggregate([silent, talking], np.array([0.5, 1.5]))
    np.testing.assert_allclose(activity[0], [0.5, 0.5])


def test_aggregation_ignores_unidentified_slots_and_adds_a_split_voice_once():
    w = window(0.0, [[0.6, 0.6], [0.6, 0.6], [1, 1]], [3, 3, None])
    activity, dominant = aggregate([w], np.array([0.25, 0.75]))
    assert set(activity) == {3}
    np.testing.assert_allclose(activity[3], [1.0, 1.0])  # 0.6 + 0.6, capped at 1
    assert dominant[3].tolist() == [0, 0]


def test_overlapped_speech_gives_two_active_speakers():
    w = window(0.0, [[1, 1, 1, 0], [0, 1, 1, 1]], [0, 1])
    times = output_grid(0.0, 2.0)
    activity, _ = aggregate([w], times)
    pieces = Binarizer().push(times, activity, onset=0.5, offset=0.4)
    spans = {speaker: (round(start, 2), round(end, 2)) for speaker, start, end in pieces}
    assert spans[0][0] == 0.0 and spans[1][1] == 2.0
    assert spans[0][1] > spans[1][0]  # the two spans overlap


def test_binarizer_hysteresis_carries_over_regions():
    binarizer = Binarizer()
    times = output_grid(0.0, 0.5)
    first = binarizer.push(times, {0: np.full(len(times), 0.6)}, onset=0.5, offset=0.3)
    assert first == [(0, 0.0, pytest.approx(0.5))]
    times = output_grid(0.5, 1.0)
    # 0.4 is below the onset but above the offset: the open span goes on.
    second = binarizer.push(times, {0: np.full(len(times), 0.4)}, onset=0.5, offset=0.3)
    assert second == [(0, pytest.approx(0.5), pytest.approx(1.0))]
    times = output_grid(1.0, 1.5)
    third = binarizer.push(times, {0: np.where(times < 1.2, 0.4, 0.1)}, onset=0.5, offset=0.3)
    assert third[0][2] == pytest.approx(1.2, abs=FRAME_S)
    assert binarizer.active == {}


def test_output_grid_is_frame_centres():
    np.testing.assert_allclose(output_grid(0.5, 0.53), [0.505, 0.515, 0.525])


# ---- re-clustering and the speaker count ------------------------------------------------------


def voices(count: int, per_voice: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count, 32))
    vectors = np.concatenate([c + spread * rng.normal(size=(per_voice, 32)) for c in centres])
    return vectors, np.repeat(np.arange(count), per_voice)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


@pytest.mark.parametrize("count", [1, 2, 4, 7])
def test_the_speaker_count_is_estimated(count):
    vectors, truth = voices(count, per_voice=6, spread=0.25, seed=count)
    labels = constrained_average_linkage(
        vectors, np.ones(len(vectors)), np.zeros((len(vectors),) * 2, bool), distance=0.5
    )
    assert labels.max() + 1 == count
    assert same_partition(labels, truth)


def test_a_given_count_is_honoured():
    vectors, _ = voices(4, per_voice=5, spread=0.25, seed=3)
    labels = constrained_average_linkage(
        vectors, np.ones(len(vectors)), np.zeros((20, 20), bool), distance=0.5, num_clusters=2
    )
    assert labels.max() + 1 == 2


def test_blips_do_not_fill_a_given_count_while_two_voices_share_a_cluster():
    rng = np.random.default_rng(7)
    a, b, blip = np.eye(8)[0], np.eye(8)[1], np.eye(8)[3]
    c = (np.eye(8)[1] + 0.8 * np.eye(8)[2]) / np.sqrt(1.64)  # 0.22 from b: one cluster at the threshold
    vectors = np.concatenate([v + 0.01 * rng.normal(size=(5, 8)) for v in (a, b, c)] + [blip[None]])
    weights = np.array([10.0] * 15 + [1.5])  # the blip has enough speech to be a speaker on its own
    truth = np.array([0] * 5 + [1] * 5 + [2] * 5)
    nothing_apart = np.zeros((16, 16), bool)

    def cluster(share: float) -> np.ndarray:
        return constrained_average_linkage(
            vectors,
            weights,
            nothing_apart,
            distance=0.5,
            num_clusters=3,
            min_cluster_weight=1.0,
            min_speaker_share=share,
        )

    # Counting every cluster over a second, the threshold's cut already has three: b and c as one, and the blip.
    assert cluster(0.0)[5] == cluster(0.0)[10]
    labels = cluster(0.2)
    assert labels.max() + 1 == 3
    assert same_partition(labels[:15], truth)
    assert labels[15] != -1  # the blip joins its nearest speaker


def test_a_long_session_is_pooled_first_and_keeps_its_voices_and_constraints():
    vectors, truth = voices(3, per_voice=400, spread=0.25, seed=11)
    order = np.random.default_rng(1).permutation(len(vectors))  # the voices take turns through the session
    vectors, truth = vectors[order], truth[order]
    weights = np.ones(len(vectors))
    nothing_apart = np.zeros((len(vectors),) * 2, bool)
    pooled = constrained_average_linkage(vectors, weights, nothing_apart, distance=0.5, max_items=200)
    assert same_partition(pooled, truth)
    given = constrained_average_linkage(vectors, weights, nothing_apart, distance=0.5, num_clusters=3, max_items=200)
    assert same_partition(given, truth)
    # Two of one voice in different stretches of the session (so in different pools), said to be heard at once.
    a, b = 0, int(np.flatnonzero((truth == truth[0]) & (np.arange(len(truth)) >= 1000))[0])
    apart = nothing_apart.copy()
    apart[a, b] = apart[b, a] = True
    labels = constrained_average_linkage(vectors, weights, apart, distance=0.5, max_items=200)
    assert labels[a] != labels[b]


def test_cannot_link_keeps_two_simultaneous_voices_apart():
    vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1]])
    cannot = np.zeros((3, 3), bool)
    cannot[0, 1] = cannot[1, 0] = True  # heard at the same time
    labels = constrained_average_linkage(vectors, np.ones(3), cannot, distance=0.5)
    assert labels[0] != labels[1]
    # Linked by transitivity: once 2 joins 0, the cluster may not take 1 either.
    assert len(set(labels)) == 2


def test_a_speaker_with_too_little_speech_joins_its_neighbour():
    vectors, _ = voices(2, per_voice=4, spread=0.2, seed=5)
    outlier = vectors[:1] + 3.0  # far from both, but only a blip of speech
    all_vectors = np.concatenate([vectors, outlier])
    weights = np.array([2.0] * 8 + [0.3])
    labels = constrained_average_linkage(
        all_vectors, weights, np.zeros((9, 9), bool), distance=0.3, min_cluster_weight=1.0
    )
    assert labels.max() + 1 == 2


def test_the_maximum_count_caps_the_estimate():
    vectors, _ = voices(5, per_voice=3, spread=0.1, seed=9)
    labels = constrained_average_linkage(vectors, np.ones(15), np.zeros((15, 15), bool), distance=0.3, max_clusters=3)
    assert labels.max() + 1 == 3


def test_fewer_speakers_asked_for_than_estimated_merge_the_cheapest_first():
    vectors, truth = voices(3, per_voice=5, spread=0.1, seed=11)
    blip = voices(1, per_voice=2, spread=0.1, seed=12)[0]  # another sound, heavy enough to count as a speaker
    weights = np.array([3.0] * 15 + [0.8] * 2)
    labels = constrained_average_linkage(
        np.concatenate([vectors, blip]),
        weights,
        np.zeros((17, 17), bool),
        distance=0.3,
        min_cluster_weight=1.0,
        num_clusters=3,
    )
    # The blip joins a voice; no two voices merge to make room for it.
    assert labels.max() + 1 == 3
    assert same_partition(labels[:15], truth)


def test_a_voice_past_the_count_heard_over_every_speaker_is_left_out():
    vectors, truth = voices(3, per_voice=4, spread=0.1, seed=13)
    cannot = np.zeros((12, 12), bool)
    cannot[8:, :8] = cannot[:8, 8:] = True  # the third voice, the least heard, always talks over the other two
    weights = np.array([1.0] * 8 + [0.5] * 4)
    labels = constrained_average_linkage(vectors, weights, cannot, distance=0.3, num_clusters=2)
    assert (labels[8:] == LEFT_OUT).all()
    assert same_partition(labels[:8], truth[:8]) and labels[:8].max() + 1 == 2


def test_the_minimum_count_splits_the_estimate():
    vectors, truth = voices(2, per_voice=5, spread=0.1, seed=14)
    labels = constrained_average_linkage(vectors, np.ones(10), np.zeros((10, 10), bool), distance=5.0, min_clusters=2)
    assert labels.max() + 1 == 2
    assert same_partition(labels, truth)


def test_final_clusters_keep_the_live_ids_they_match():
    overlap = np.array([[0.0, 9.0], [8.0, 1.0], [0.5, 0.0]])  # cluster x live speaker talk time
    assert keep_live_ids(overlap) == {0: 1, 1: 0, 2: 2}
