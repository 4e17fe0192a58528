"""Compare reported speaking time with a reference (RTTM or a synthesized script).

Hypothesis speakers are matched to reference speakers by how much their turns
overlap in time (an optimal one-to-one assignment), then each reference
speaker's talk time is compared with its match's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.rttm import RttmTurn
from topics.messages import SessionReport

_GRID_S = 0.01


@dataclass(frozen=True)
class SpeakerComparison:
    reference: str
    hypothesis: int | None
    reference_ms: int
    hypothesis_ms: int

    @property
    def relative_error(self) -> float:
        return abs(self.hypothesis_ms - self.reference_ms) / max(self.reference_ms, 1)


def report_turns(report: SessionReport) -> list[RttmTurn]:
    """The report's turns in seconds, each labelled with its speaker's id as reported."""
    return [RttmTurn(str(t.speaker), t.start_ms / 1000, t.end_ms / 1000) for t in report.turns]


def _activity(turns: list[RttmTurn], speakers: list[str], length: int) -> np.ndarray:
    grid = np.zeros((len(speakers), length), bool)
    for t in turns:
        grid[speakers.index(t.speaker), round(t.start_s / _GRID_S) : round(t.end_s / _GRID_S)] = True
    return grid


def compare(reference: list[RttmTurn], report: SessionReport) -> list[SpeakerComparison]:
    """One row per reference speaker, in order of first appearance."""
    ref_speakers = list(dict.fromkeys(t.speaker for t in sorted(reference, key=lambda t: t.start_s)))
    hyp_turns = report_turns(report)
    hyp_speakers = [str(s.id) for s in report.speakers]
    length = int(max([t.end_s for t in reference + hyp_turns], default=0) / _GRID_S) + 1
    ref_grid = _activity(reference, ref_speakers, length).astype(np.int32)
    hyp_grid = _activity(hyp_turns, hyp_speakers, length).astype(np.int32)
    overlap = ref_grid @ hyp_grid.T
    rows, cols = linear_sum_assignment(-overlap) if overlap.size else ([], [])
    match = {int(r): int(c) for r, c in zip(rows, cols) if overlap[r, c] > 0}
    hyp_ms = {s.id: s.total_time_ms for s in report.speakers}
    ref_ms = {spk: int(round(ref_grid[i].sum() * _GRID_S * 1000)) for i, spk in enumerate(ref_speakers)}
    rows_out = []
    for i, speaker in enumerate(ref_speakers):
        hyp_id = report.speakers[match[i]].id if i in match else None
        rows_out.append(
            SpeakerComparison(speaker, hyp_id, ref_ms[speaker], hyp_ms.get(hyp_id, 0) if hyp_id is not None else 0)
        )
    return rows_out


def format_table(rows: list[SpeakerComparison]) -> str:
    lines = [f"{'reference':<12}{'speaker':>8}{'reference s':>13}{'reported s':>12}{'error':>8}"]
    for r in rows:
        hyp = "-" if r.hypothesis is None else str(r.hypothesis)
        lines.append(
            f"{r.reference:<12}{hyp:>8}{r.reference_ms / 1000:>13.1f}{r.hypothesis_ms / 1000:>12.1f}{r.relative_error:>8.1%}"
        )
    return "\n".join(lines)
