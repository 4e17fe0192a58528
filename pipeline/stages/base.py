"""The three stage roles the dataflow is made of, and what every session state promises.

A role is a `typing.Protocol`: the Faust agents (`pipeline.agents`) and the in-process
chain (`pipeline.evaluation.chain`) call only what is declared here, so a stage can be
swapped for another of its role without touching either. Each stateful role has one
lifecycle, ``start`` → ``push``… → ``finish``, over a state the stage owns entirely: the
caller stores it as bytes (``to_bytes``/``from_bytes``) and never reads or writes its fields.

The embed role holds no session state: it maps a batch of messages, from any number of
sessions, to their embedded counterparts, so any number of embed workers share the load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

from pydantic import BaseModel

from topics import AudioChunk, BusMessage, SessionReport, SessionStart, SessionStop, SpeakerTurn, SpeakerUpdate

# The dataflow's stages, in the order audio flows through them: one worker group (consumer
# group `speakerflow-<stage>`) per name.
STAGES: tuple[str, ...] = ("segment", "embed", "cluster")

ClusterOutput = SpeakerUpdate | SpeakerTurn | SessionReport


class StateVersionError(ValueError):
    """A stored state written by another version of its stage: resuming it would be silently wrong."""


@runtime_checkable
class SessionState(Protocol):
    """One session's state as a stage keeps it between messages."""

    def to_bytes(self) -> bytes: ...

    @classmethod
    def from_bytes(cls, data: bytes) -> Self: ...


StateT = TypeVar("StateT", bound=SessionState)


class SegmentStage(Protocol[StateT]):
    """Raw audio in; speech steps or segmented windows out (``speakerflow.speech-steps``)."""

    state_type: type[StateT]
    # The model the stage runs and the device it runs on (``speakerflow_model_info``).
    model_name: str
    device: str

    def start(self, message: SessionStart) -> StateT:
        """A new session's state; records up to the start's ``seq`` count as applied."""
        ...

    def push(self, state: StateT, chunk: AudioChunk, ingest_ms: int) -> list[BusMessage]:
        """The steps or windows this chunk completes; a chunk already applied changes nothing."""
        ...

    def push_many(self, pushes: Sequence[tuple[StateT, AudioChunk, int]]) -> list[list[BusMessage] | Exception]:
        """`push` for each (state, chunk, ingest_ms) in order, batched across sessions where the model allows.

        A push that fails gives its exception in place of its outputs; the others are unaffected.
        """
        ...

    def finish(self, state: StateT, message: SessionStop) -> list[BusMessage]:
        """The rest of the stream's steps or windows, then the stop itself to pass downstream.

        A stop already applied gives nothing and changes nothing, so an empty list tells the
        caller that the session goes on; anything else, that it has ended here.
        """
        ...


def push_each(
    push: Callable[[StateT, AudioChunk, int], list[BusMessage]], pushes: Sequence[tuple[StateT, AudioChunk, int]]
) -> list[list[BusMessage] | Exception]:
    """`SegmentStage.push_many` for a stage that has nothing to batch: one push after another."""
    results: list[list[BusMessage] | Exception] = []
    for state, chunk, ingest_ms in pushes:
        try:
            results.append(push(state, chunk, ingest_ms))
        except Exception as error:
            results.append(error)
    return results


class EmbedStage(Protocol):
    """Steps or windows in, their embeddings out; stateless, one call per batch across sessions."""

    # The message type this stage embeds; every other message passes through unchanged.
    input_type: type[BusMessage]
    model_name: str
    device: str
    # A batch holds at most `max_batch` messages, gathered for at most `max_wait_s`.
    max_batch: int
    max_wait_s: float

    def process(self, batch: list[Any]) -> list[BusMessage]:
        """One output per input, in order."""
        ...


class ClusterStage(Protocol[StateT]):
    """Embeddings in; speaker updates and turns as they settle, and the report at the end."""

    state_type: type[StateT]
    input_type: type[BusMessage]

    def start(self, message: SessionStart) -> StateT: ...

    def push(self, state: StateT, message: Any) -> list[ClusterOutput]:
        """What this step or window settles; one already applied changes nothing."""
        ...

    def finish(self, state: StateT, message: SessionStop) -> list[ClusterOutput]:
        """Every turn still open, closed, then the session's report."""
        ...


class JsonSessionState(BaseModel):
    """A session state stored as versioned JSON: a state of another version fails loudly on restore.

    Bump `VERSION` whenever a field's meaning or shape changes: a worker that takes over a
    partition must never resume a session from a state it would misread.
    """

    VERSION: ClassVar[int] = 1

    def to_bytes(self) -> bytes:
        # pydantic's own serializer, wrapped by hand: a second json.dumps pass would double the cost.
        return b'{"v":%d,"state":' % self.VERSION + self.model_dump_json().encode() + b"}"

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        # The envelope is the fixed prefix `to_bytes` writes: the state inside goes straight to
        # pydantic's JSON parser (parsing to Python objects first costs three times as much).
        prefix = b'{"v":%d,"state":' % cls.VERSION
        if not (data.startswith(prefix) and data.endswith(b"}")):
            stored = data[:40].decode(errors="replace")
            raise StateVersionError(f"{cls.__name__} version {cls.VERSION} expected, stored state starts {stored!r}")
        return cls.model_validate_json(data[len(prefix) : -1])
