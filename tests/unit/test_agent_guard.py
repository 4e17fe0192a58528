"""The agents' per-record guard, without Kafka: a record that raises is counted, dead-lettered with
its origin and error, and the agent moves on to its partition's other sessions."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import REGISTRY

from pipeline.agents import embed
from pipeline.agents.app import RecordGuard, build_app, handle_session_messages
from pipeline.agents.session_states import SessionStates, encode_checkpoint
from pipeline.metrics import StageMetrics
from pipeline.settings import Settings
from pipeline.stages.base import StateVersionError
from topics import DEAD_LETTER_HEADERS, AudioChunk, SessionStart, dead_letter_headers, decode, encode
from topics.registry import DEAD_LETTER_ERROR_CHARS


def errors(stage: str) -> float:
    return REGISTRY.get_sample_value("speakerflow_errors_total", {"stage": stage, "kind": "processing"}) or 0.0


class DeadLetters:
    """Stands in for the dead-letter topic: keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send(self, **record) -> None:
        self.sent.append(record)


class Stream:
    def __init__(self, events: list[SimpleNamespace]) -> None:
        self._events = events

    async def events(self):
        for event in self._events:
            yield event


def event_of(message, offset: int, partition: int = 3) -> SimpleNamespace:
    key, value, headers = encode(message)
    record = SimpleNamespace(topic="speakerflow.audio", partition=partition, offset=offset)
    return SimpleNamespace(key=key, value=value, headers=headers, message=record)


def chunk(session_id: str, seq: int) -> AudioChunk:
    return AudioChunk(session_id=session_id, seq=seq, offset=(seq - 1) * 4, producer="test", pcm=b"\x01\x00" * 4)


async def test_a_failing_record_is_counted_dead_lettered_and_left_behind():
    dead_letters = DeadLetters()
    guard = RecordGuard("t-guard", StageMetrics("t-guard"), dead_letters)
    poisoned = event_of(chunk("s-bad", 1), offset=41)
    before = errors("t-guard")

    async with guard.record(poisoned):
        raise ValueError("stage broke")
    async with guard.record(event_of(chunk("s-good", 1), offset=42)):
        pass  # a record that succeeds sends nothing

    assert errors("t-guard") == before + 1
    (letter,) = dead_letters.sent
    assert (letter["key"], letter["value"]) == (poisoned.key, poisoned.value)
    added = dict(letter["headers"][-len(DEAD_LETTER_HEADERS) :])
    assert added == {
        "dl-error-type": b"ValueError",
        "dl-error": b"stage broke",
        "dl-stage": b"t-guard",
        "dl-topic": b"speakerflow.audio",
        "dl-partition": b"3",
        "dl-offset": b"41",
    }
    # The record as it was read comes first, so it decodes as the original message.
    assert decode(letter["key"], letter["value"], letter["headers"]) == chunk("s-bad", 1)


async def test_a_session_whose_state_cannot_be_restored_does_not_stall_its_partition():
    dead_letters = DeadLetters()
    guard = RecordGuard("t-restore", StageMetrics("t-restore"), dead_letters)

    def load(stored: bytes) -> bytes:
        if stored != b"ok":
            raise StateVersionError(f"stored state starts {stored[:8]!r}")
        return stored

    # Checkpoints that cover every record below: nothing to replay from the input topic.
    table = {b"s-old": encode_checkpoint(100, b'{"v":0,"state":{}}'), b"s-new": encode_checkpoint(100, b"ok")}
    sessions = SessionStates(SimpleNamespace(data=table), "speakerflow.audio", load, Settings())
    handled: list[tuple[str, int]] = []

    async def handle(event, message, state) -> None:
        if isinstance(message, AudioChunk) and message.seq == 2 and message.session_id == "s-new":
            raise RuntimeError("stage raised on this chunk")
        handled.append((message.session_id, message.seq))

    events = [
        event_of(chunk("s-old", 1), offset=10),
        event_of(chunk("s-new", 1), offset=11),
        event_of(chunk("s-old", 2), offset=12),
        event_of(chunk("s-new", 2), offset=13),
        event_of(SessionStart(session_id="s-third", seq=0, producer="test"), offset=14),
        event_of(chunk("s-new", 3), offset=15),
    ]
    before = errors("t-restore")
    await handle_session_messages(Stream(events), sessions, lambda *replayed: None, handle, guard)

    assert handled == [("s-new", 1), ("s-third", 0), ("s-new", 3)]
    assert errors("t-restore") == before + 3
    assert [
        (dict(letter["headers"])["dl-offset"], dict(letter["headers"])["dl-error-type"]) for letter in dead_letters.sent
    ] == [
        (b"10", b"StateVersionError"),
        (b"12", b"StateVersionError"),
        (b"13", b"RuntimeError"),
    ]


def test_dead_letter_error_messages_are_cut_to_a_header_size():
    headers = dict(dead_letter_headers([("sf-type", b"audio.chunk")], ValueError("x" * 5000), "segment", "t", 0, 1))
    assert len(headers["dl-error"]) == DEAD_LETTER_ERROR_CHARS
    assert headers["sf-type"] == b"audio.chunk"


class FakeEmbedStage:
    """An embed stage whose forward pass fails for any batch holding a step of session "s-bad"."""

    model_name, device, max_batch, max_wait_s = "fake", "cpu", 8, 0.01
    input_type = SessionStart  # stands in for the work items: any message type will do

    def process(self, batch: list[SessionStart]) -> list[SessionStart]:
        if any(m.session_id == "s-bad" for m in batch):
            raise RuntimeError("forward pass failed")
        return [m.model_copy(update={"producer": "embedded"}) for m in batch]


class BatchStream:
    def __init__(self, events: list[SimpleNamespace]) -> None:
        self._events = events

    async def take_events(self, max_batch: int, within: float):
        yield self._events


async def test_a_failing_embedding_batch_loses_only_the_record_that_fails_alone(monkeypatch):
    dead_letters, sent = DeadLetters(), []

    async def send(topic, message) -> None:
        sent.append(message)

    monkeypatch.setattr(embed, "build_embed", lambda profile: FakeEmbedStage())
    monkeypatch.setattr(embed, "send", send)
    monkeypatch.setattr(
        embed, "dead_letter_guard", lambda app, stage, metrics: RecordGuard(stage, metrics, dead_letters)
    )
    app = build_app("t-embed", Settings())
    embed.register(app, profile=None, settings=Settings())
    starts = [SessionStart(session_id=s, seq=0, producer="test") for s in ("s-a", "s-bad", "s-b")]
    events = [event_of(start, offset=offset) for offset, start in enumerate(starts)]
    for event in events:
        event.message.time_in = None
    before = errors("embed")

    (agent,) = app.agents.values()
    await agent.fun(BatchStream(events))

    assert [(m.session_id, m.producer) for m in sent] == [("s-a", "embedded"), ("s-b", "embedded")]
    assert [letter["key"] for letter in dead_letters.sent] == [b"s-bad"]
    assert errors("embed") == before + 2  # the batch, then the record that failed alone
