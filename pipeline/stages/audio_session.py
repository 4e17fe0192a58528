"""What every stage that reads a session's raw audio keeps: which records it has applied,
the stream position, and a compact, versioned binary form for the changelog."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np

from pipeline.stages.base import StateVersionError
from topics.messages import AudioChunk, SessionStop

State = TypeVar("State", bound="AudioSessionState")


@dataclass
class AudioSessionState:
    last_seq: int = -1  # seq of the newest record applied: the start, a chunk, or the stop
    next_offset: int = 0  # stream position of the next sample expected from the producer
    ingest_ms: int = 0

    # Bump whenever a field's meaning or the layout changes: a worker that takes over a
    # partition must never resume a session from a state it would misread.
    VERSION: ClassVar[int] = 1
    # Subclasses name their numpy fields (written raw) and their JSON-able fields.
    ARRAYS: ClassVar[tuple[str, ...]] = ()
    SCALARS: ClassVar[tuple[str, ...]] = ("last_seq", "next_offset", "ingest_ms")

    def accept(self, chunk: AudioChunk, ingest_ms: int) -> np.ndarray | None:
        """The chunk's samples that continue the stream, or None for a chunk already applied."""
        if chunk.seq <= self.last_seq:
            return None
        self.last_seq = chunk.seq
        self.ingest_ms = max(self.ingest_ms, ingest_ms)
        pcm = np.frombuffer(chunk.pcm, dtype="<i2").astype(np.int16)
        if chunk.offset > self.next_offset:
            # Audio the producer says it sent but never arrived: silence keeps positions true.
            pcm = np.concatenate([np.zeros(chunk.offset - self.next_offset, np.int16), pcm])
        elif chunk.offset < self.next_offset:
            pcm = pcm[self.next_offset - chunk.offset :]
        self.next_offset += len(pcm)
        return pcm

    def accept_stop(self, stop: SessionStop) -> bool:
        """Whether the stop ends the stream now; False for a stop already applied (or older than a chunk)."""
        if stop.seq <= self.last_seq:
            return False
        self.last_seq = stop.seq
        return True

    def to_bytes(self) -> bytes:
        # A JSON header then raw arrays: compact enough to write to the changelog on every chunk.
        arrays = [np.ascontiguousarray(getattr(self, name)) for name in self.ARRAYS]
        header = {"v": self.VERSION} | {name: getattr(self, name) for name in self.SCALARS}
        header["arrays"] = [[a.dtype.str, list(a.shape)] for a in arrays]
        encoded = json.dumps(header).encode()
        return struct.pack(">I", len(encoded)) + encoded + b"".join(a.tobytes() for a in arrays)

    @classmethod
    def from_bytes(cls: type[State], data: bytes) -> State:
        (length,) = struct.unpack_from(">I", data)
        header = json.loads(data[4 : 4 + length])
        if header.get("v") != cls.VERSION:
            raise StateVersionError(f"{cls.__name__} version {header.get('v')!r} stored, {cls.VERSION} expected")
        state = cls(**{name: header[name] for name in cls.SCALARS})
        position = 4 + length
        for name, (dtype, shape) in zip(cls.ARRAYS, header["arrays"]):
            count = int(np.prod(shape))
            array = np.frombuffer(data, dtype=np.dtype(dtype), count=count, offset=position).reshape(shape)
            setattr(state, name, array.copy())
            position += array.nbytes
        return state


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs of a boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))
