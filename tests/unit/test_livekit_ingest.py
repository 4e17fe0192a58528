"""The LiveKit ingest's pure parts: session keys, labels, the room lease, a track's records, the room view."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from pipeline.producers.chunking import CHUNK_SAMPLES
from pipeline.producers.livekit import (
    AGENT_IDENTITY,
    RoomView,
    TrackFeed,
    rooms_to_join,
    session_id_for,
    speaker_label,
)
from topics import AudioChunk, ReportedSpeaker, SessionReport, SessionStart, SessionStop, SpeakerUpdate
from topics.messages import SessionId

SESSION_ID = TypeAdapter(SessionId)


def test_a_track_session_names_room_participant_track_and_holder():
    assert session_id_for("interview", "alice", "TR_abc", "1a2b3c4d") == "lk:interview:alice:TR_abc:1a2b3c4d"


def test_an_instance_that_takes_a_track_over_feeds_it_as_a_session_of_its_own():
    assert session_id_for("r", "alice", "TR_1", "aaaa0000") != session_id_for("r", "alice", "TR_1", "bbbb1111")


def test_names_a_session_id_may_not_hold_are_escaped_and_stay_distinct():
    ids = {session_id_for(room, "alice@example.com", "TR_1", "h") for room in ("a b", "a.b", "a:b", "a_b", "ä")}
    assert len(ids) == 5
    for session_id in ids:
        assert SESSION_ID.validate_python(session_id) == session_id
    assert session_id_for("a b", "alice", "TR_1", "h") == "lk:a.20b:alice:TR_1:h"


def test_long_names_are_cut_but_track_and_holder_keep_sessions_apart():
    first = session_id_for("r" * 200, "p" * 200, "TR_first", "1a2b3c4d")
    second = session_id_for("r" * 200, "p" * 200, "TR_second", "1a2b3c4d")
    assert first != second
    for session_id in (first, second):
        assert len(session_id) == 128
        assert SESSION_ID.validate_python(session_id) == session_id
    assert first.endswith(":TR_first:1a2b3c4d")


def test_labels_carry_the_participant_identity():
    assert [speaker_label("alice", k) for k in (0, 1)] == ["alice#0", "alice#1"]


def test_an_instance_joins_rooms_with_people_and_no_ingest():
    participants = {
        "free": ["alice", "bob"],
        "taken": ["carol", AGENT_IDENTITY],  # another instance holds it
        "empty": [],
        "mine": ["dave"],
        "only-an-agent": [AGENT_IDENTITY],
    }
    assert rooms_to_join(participants, held={"mine"}) == ["free"]


def test_rooms_to_join_are_sorted_and_none_when_all_are_held():
    participants = {"b": ["x"], "a": ["y"]}
    assert rooms_to_join(participants, held=()) == ["a", "b"]
    assert rooms_to_join(participants, held={"a", "b"}) == []


def _start() -> SessionStart:
    return SessionStart(session_id="lk:r:alice:TR_1", producer="livekit-test")


def test_a_track_feed_gathers_10ms_frames_into_bus_chunks():
    feed = TrackFeed(_start())
    frame = bytes(range(160)) * 2  # 160 samples: 10 ms at 16 kHz
    chunks = [chunk for _ in range(45) for chunk in feed.frame(frame)]
    # 45 frames are 7200 samples: two whole chunks of 3200, and 800 samples pending.
    assert [(c.seq, c.offset, c.num_samples) for c in chunks] == [
        (1, 0, CHUNK_SAMPLES),
        (2, CHUNK_SAMPLES, CHUNK_SAMPLES),
    ]
    assert b"".join(c.pcm for c in chunks) == (frame * 40)
    tail, stop = feed.stop()
    assert isinstance(tail, AudioChunk) and (tail.seq, tail.offset, tail.num_samples) == (3, 6400, 800)
    assert isinstance(stop, SessionStop) and (stop.seq, stop.offset) == (4, 7200)
    assert {r.producer for r in (*chunks, tail, stop)} == {"livekit-test"}


def test_a_track_feed_without_pending_samples_ends_with_the_stop_alone():
    feed = TrackFeed(_start(), chunk_samples=160)
    assert len(feed.frame(b"\x00" * 320)) == 1
    (stop,) = feed.stop()
    assert isinstance(stop, SessionStop) and (stop.seq, stop.offset) == (2, 160)


def test_a_frame_of_half_a_sample_is_refused():
    with pytest.raises(ValueError):
        TrackFeed(_start()).frame(b"\x00" * 3)


def _update(session_id: str, speaking: dict[int, int], active: list[int], position_ms: int = 1000) -> SpeakerUpdate:
    return SpeakerUpdate(
        session_id=session_id,
        position_ms=position_ms,
        current_speaker=active[0] if active else None,
        active_speakers=active,
        speaking_time_ms=speaking,
        ingest_ms=0,
    )


def test_the_room_view_merges_its_sessions_under_labels():
    view = RoomView("interview")
    view.add("lk:interview:alice:TR_1", "alice")
    view.add("lk:interview:bob:TR_2", "bob")
    view.update(_update("lk:interview:alice:TR_1", {0: 1500, 1: 700}, [1]))
    message = view.update(_update("lk:interview:bob:TR_2", {0: 400}, [0], position_ms=2000))
    assert message == {
        "type": "speakers",
        "sessionId": "lk:interview:bob:TR_2",
        "participant": "bob",
        "positionMs": 2000,
        "room": "interview",
        "activeSpeakers": ["alice#1", "bob#0"],
        "speakingTimeMs": {"alice#0": 1500, "alice#1": 700, "bob#0": 400},
    }


def test_a_report_names_its_speakers_by_label_and_leaves_them_in_the_view():
    view = RoomView("interview")
    view.add("s1", "alice")
    view.update(_update("s1", {0: 100}, [0]))
    report = SessionReport(
        session_id="s1",
        duration_ms=9000,
        speakers=[ReportedSpeaker(id=0, total_time_ms=4000), ReportedSpeaker(id=1, total_time_ms=3000)],
        turns=[],
    )
    assert view.report(report) == {
        "type": "report",
        "sessionId": "s1",
        "participant": "alice",
        "durationMs": 9000,
        "speakers": {"alice#0": 4000, "alice#1": 3000},
    }
    assert view.snapshot() == {
        "room": "interview",
        "activeSpeakers": [],
        "speakingTimeMs": {"alice#0": 4000, "alice#1": 3000},
    }


def test_two_tracks_of_one_participant_add_up_under_the_same_labels():
    view = RoomView("r")
    view.add("mic", "alice")
    view.add("screen", "alice")
    view.update(_update("mic", {0: 1000}, []))
    assert view.update(_update("screen", {0: 250}, []))["speakingTimeMs"] == {"alice#0": 1250}


def test_the_command_takes_one_room_or_all_and_leaves_credentials_to_the_environment():
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["livekit", "--url", "ws://127.0.0.1:7880", "--all-rooms", "--num-speakers", "2"])
    assert (args.room, args.all_rooms, args.api_key, args.api_secret) == (None, True, None, None)
    assert args.num_speakers == 2 and not args.publish_results
    for rooms in ([], ["--room", "r", "--all-rooms"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["livekit", "--url", "ws://127.0.0.1:7880", *rooms])
