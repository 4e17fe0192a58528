"""RTTM, the plain-text diarization format: one SPEAKER line per stretch of one speaker's speech.

Every RTTM speakerflow reads (the references of `speakerflow eval`, `--reference`) or
writes (`speakerflow export --format rttm`, `eval --rttm-out`, a synthesized
conversation's reference) goes through this module. It sits with the runtime, not
with the offline tools, because the `export` command writes it too.

A line reads ``SPEAKER <uri> 1 <start s> <duration s> <NA> <NA> <speaker> <NA> <NA>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from topics.messages import LabeledSpan


@dataclass(frozen=True)
class RttmTurn:
    """One SPEAKER line: who spoke, from when to when, in seconds."""

    speaker: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def speaker_label(speaker: int) -> str:
    """How speakerflow names its numbered speakers in the RTTM it writes."""
    return f"spk{speaker}"


def span_turns(spans: Iterable[LabeledSpan]) -> list[RttmTurn]:
    """Speaker spans of the bus (live labels, report turns) as RTTM turns."""
    return [RttmTurn(speaker_label(s.speaker), s.start_ms / 1000, s.end_ms / 1000) for s in spans]


def read_rttm(path: Path, uri: str | None = None) -> list[RttmTurn]:
    """The SPEAKER lines of the file (of recording `uri` only, if given); other and short lines are skipped."""
    turns = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[0] != "SPEAKER" or (uri and fields[1] != uri):
            continue
        start, duration = float(fields[3]), float(fields[4])
        turns.append(RttmTurn(fields[7], start, start + duration))
    return turns


def format_rttm(uri: str, turns: Iterable[RttmTurn]) -> str:
    """The turns as SPEAKER lines of recording `uri`, in the order given."""
    if not uri or any(c.isspace() for c in uri):
        raise ValueError(f"RTTM uri must be a non-empty token without spaces: {uri!r}")
    return "".join(
        f"SPEAKER {uri} 1 {t.start_s:.3f} {t.duration_s:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n" for t in turns
    )


def write_rttm(path: Path, uri: str, turns: Iterable[RttmTurn]) -> None:
    path.write_text(format_rttm(uri, turns))
