"""Live session states without Kafka: checkpoints every so many records, restore by replay, revocation."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from pipeline.agents.session_states import SessionStates, SkippedRecord, decode_checkpoint, encode_checkpoint
from pipeline.settings import Settings
from pipeline.stages.base import StateVersionError

TOPIC = "speakerflow.audio"


class Counter:
    """A stage state: the records applied, in order."""

    def __init__(self, applied: list[int] | None = None) -> None:
        self.applied = applied or []

    def to_bytes(self) -> bytes:
        return ",".join(map(str, self.applied)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Counter:
        return cls([int(x) for x in data.decode().split(",") if x])


class Table:
    """A faust table's store and changelog, in memory."""

    def __init__(self, data: dict | None = None) -> None:
        self.data = data or {}
        self.changelog: list[tuple[int, bytes, bytes | None]] = []

    def send_changelog(self, partition, key, value, value_serializer=None) -> None:
        self.changelog.append((partition, key, value))


def event(key: bytes, offset: int, partition: int = 0) -> SimpleNamespace:
    return SimpleNamespace(key=key, message=SimpleNamespace(topic=TOPIC, partition=partition, offset=offset))


def states(table: Table, every: int = 3) -> SessionStates[Counter]:
    return SessionStates(table, TOPIC, Counter.from_bytes, Settings(), checkpoint_records=every, checkpoint_s=3600)


def apply(sessions: SessionStates[Counter], key: bytes, offset: int, replay=None) -> Counter:
    async def run() -> Counter:
        state = await sessions.get(event(key, offset), replay)
        state.applied.append(offset)
        sessions.applied(event(key, offset))
        return state

    return asyncio.run(run())


def test_a_session_is_checkpointed_at_start_and_every_few_records_with_the_offset_it_covers():
    table = Table()
    sessions = states(table)
    sessions.started(event(b"s", 10), Counter())
    assert decode_checkpoint(table.data[b"s"]) == (11, b"")
    for offset in (12, 13):
        apply(sessions, b"s", offset)
    assert decode_checkpoint(table.data[b"s"]) == (11, b"")  # not due yet: the live state is ahead of it
    apply(sessions, b"s", 14)
    assert decode_checkpoint(table.data[b"s"]) == (15, b"12,13,14")
    sessions.ended(event(b"s", 20))
    assert b"s" not in table.data
    assert [(key, value is None) for _, key, value in table.changelog] == [(b"s", False)] * 2 + [(b"s", True)]


def test_a_new_owner_restores_the_checkpoint_and_replays_the_records_after_it(monkeypatch):
    sessions = states(Table({b"s": encode_checkpoint(15, b"12,13,14")}))
    read: list[tuple[int, int]] = []

    async def read_back(topic, partition, key, start, end):
        read.append((start, end))
        for offset in (15, 16):  # what the dead worker applied after its checkpoint
            yield offset, 0

    monkeypatch.setattr(sessions, "_read_back", read_back)
    state = apply(sessions, b"s", 17, replay=lambda state, offset, ingest: state.applied.append(offset))
    assert read == [(15, 17)]
    assert state.applied == [12, 13, 14, 15, 16, 17]
    # Live from now on: the next record reads nothing back.
    assert apply(sessions, b"s", 18).applied[-1] == 18 and read == [(15, 17)]


def test_records_already_in_the_checkpoint_replay_nothing(monkeypatch):
    sessions = states(Table({b"s": encode_checkpoint(15, b"12,13,14")}))
    monkeypatch.setattr(sessions, "_read_back", None)  # would fail if called
    assert apply(sessions, b"s", 14).applied == [12, 13, 14, 14]  # the stage itself ignores a replayed record


def test_a_rebalance_keeps_the_states_of_partitions_given_back_and_drops_the_others():
    table = Table()
    sessions = states(table, every=1)
    sessions.assigned({TP(TOPIC, 0), TP(TOPIC, 1)})
    sessions.started(event(b"a", 1, partition=0), Counter())
    sessions.started(event(b"b", 2, partition=1), Counter())
    sessions.revoked({TP(TOPIC, 0), TP(TOPIC, 1), TP("speakerflow-segment-segment-sessions-changelog", 1)})
    written = len(table.changelog)
    sessions.applied(event(b"a", 3, partition=0))  # handled while the partitions were taken away
    assert len(table.changelog) == written  # nothing checkpointed for a partition it may not own
    sessions.assigned({TP(TOPIC, 1)})
    assert set(sessions._live) == {b"b"}
    # The partition given back goes on from its live state: nothing is restored.
    table.data[b"b"] = b"a checkpoint that must not be read"
    assert apply(sessions, b"b", 4, replay=None).applied == [4]


def test_a_session_of_a_partition_it_no_longer_owns_is_restored_for_the_record_but_never_kept(monkeypatch):
    table = Table({b"s": encode_checkpoint(15, b"12,13,14")})
    sessions = states(table, every=1)
    sessions.assigned({TP(TOPIC, 1)})

    async def read_back(topic, partition, key, start, end):
        for offset in range(start, end):
            yield offset, 0

    monkeypatch.setattr(sessions, "_read_back", read_back)
    replay = lambda state, offset, ingest: state.applied.append(offset)  # noqa: E731
    assert apply(sessions, b"s", 16, replay).applied == [12, 13, 14, 15, 16]
    assert b"s" not in sessions._live and table.changelog == []
    sessions.started(event(b"t", 20, partition=0), Counter())
    assert b"t" not in sessions._live and b"t" not in table.data


def test_a_value_stored_before_checkpoints_fails_loudly():
    with pytest.raises(StateVersionError):
        decode_checkpoint(b'{"v":3,"state":{}}')


def test_records_the_consumer_skipped_are_read_back_and_handed_over_in_their_place(monkeypatch):
    acked = []
    sessions = SessionStates(Table(), TOPIC, Counter.from_bytes, Settings(), ack=acked.append)
    sessions.assigned({TP(TOPIC, 0), TP(TOPIC, 1)})
    read: list[tuple[int, int, int]] = []

    async def read_range(topic, partition, start, end):
        read.append((partition, start, end))
        for offset in range(start, end):
            yield SimpleNamespace(
                topic=topic,
                partition=partition,
                offset=offset,
                timestamp=1000,
                timestamp_type=0,
                key=b"s",
                value=b"",
                headers=[],
            )

    monkeypatch.setattr(sessions, "_read_range", read_range)

    def offsets(events):
        handed = asyncio.run(sessions.with_skipped(events))
        return [(e.message.partition, e.message.offset, isinstance(e, SkippedRecord)) for e in handed]

    assert offsets([event(b"s", 10), event(b"t", 3, partition=1)]) == [(0, 10, False), (1, 3, False)]
    # 11-13 of partition 0 never came; 9 is one delivered again after a seek back, which is no gap.
    assert offsets([event(b"s", 14), event(b"s", 9), event(b"t", 4, partition=1)]) == [
        (0, 11, True),
        (0, 12, True),
        (0, 13, True),
        (0, 14, False),
        (0, 9, False),
        (1, 4, False),
    ]
    assert read == [(0, 11, 14)]
    assert offsets([event(b"s", 15)]) == [(0, 15, False)]
    # A partition that went elsewhere and came back starts afresh: what others handled is no gap.
    sessions.assigned({TP(TOPIC, 1)})
    sessions.assigned({TP(TOPIC, 0), TP(TOPIC, 1)})
    assert offsets([event(b"s", 40)]) == [(0, 40, False)]
    assert read == [(0, 11, 14)]
