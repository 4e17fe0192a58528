"""What clients see live: each region's speakers `latency_s` after it, talk time, and turns.

A region is labelled from the mean activity of every window that has covered it by
then (`aggregation`), with hysteresis (`Binarizer`); several speakers may be active
at once. Each settled region makes one `SpeakerUpdate`. A speaker's turn opens with
their first span and closes after a pause longer than `max_turn_gap_s` (or at the end).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pipeline.config import OverlapClusteringConfig
from pipeline.stages.accurate.aggregation import Binarizer, WindowActivity, aggregate, output_grid, seconds_to_ms
from pipeline.stages.base import ClusterOutput
from topics.messages import LabeledSpan, SpeakerTurn, SpeakerUpdate


class TurnExtent(BaseModel):
    """How far one speaker's open turn reaches so far (the speaker is its key in `LiveLabelsState.turns`)."""

    model_config = ConfigDict(extra="forbid")

    start_ms: int
    end_ms: int


class LiveLabelsState(BaseModel):
    """How far the live labels are settled, the hysteresis in progress, talk time and open turns."""

    model_config = ConfigDict(extra="forbid")

    until_s: float = 0.0
    binarizer: Binarizer = Binarizer()
    talk_ms: dict[int, int] = {}
    turns: dict[int, TurnExtent] = {}


class LiveLabels:
    def __init__(self, config: OverlapClusteringConfig) -> None:
        self.config = config
        self._turn_gap_ms = seconds_to_ms(config.max_turn_gap_s)

    def settle(
        self,
        state: LiveLabelsState,
        session_id: str,
        windows: list[WindowActivity],
        until_s: float,
        ingest_ms: int,
    ) -> list[ClusterOutput]:
        """Label the region up to `until_s` from `windows`: its turns opened or closed, then one update."""
        if until_s <= state.until_s:
            return []
        times = output_grid(state.until_s, until_s)
        state.until_s = until_s
        activity, _ = aggregate(windows, times)
        pieces = state.binarizer.push(times, activity, self.config.onset, self.config.offset)
        outputs: list[ClusterOutput] = []
        spans = []
        for speaker, start, end in pieces:
            span = LabeledSpan(speaker=speaker, start_ms=seconds_to_ms(start), end_ms=seconds_to_ms(end))
            spans.append(span)
            state.talk_ms[speaker] = state.talk_ms.get(speaker, 0) + span.end_ms - span.start_ms
            outputs += self._extend_turn(state, session_id, span)
        position_ms = seconds_to_ms(until_s)
        for speaker, turn in sorted(state.turns.items()):
            if position_ms - turn.end_ms > self._turn_gap_ms:
                outputs.append(_turn_message(session_id, speaker, state.turns.pop(speaker), final=True))
        last = {s: float(a[-1]) for s, a in activity.items() if len(a)}
        active = sorted(state.binarizer.active, key=lambda s: -last.get(s, 0.0))
        outputs.append(
            SpeakerUpdate(
                session_id=session_id,
                position_ms=position_ms,
                current_speaker=active[0] if active else None,
                active_speakers=active,
                spans=spans,
                speaking_time_ms=dict(sorted(state.talk_ms.items())),
                ingest_ms=ingest_ms,
            )
        )
        return outputs

    @staticmethod
    def close_turns(state: LiveLabelsState, session_id: str) -> list[SpeakerTurn]:
        """Every turn still open, closed (at the end of the session)."""
        closed = [_turn_message(session_id, speaker, turn, final=True) for speaker, turn in sorted(state.turns.items())]
        state.turns.clear()
        return closed

    def _extend_turn(self, state: LiveLabelsState, session_id: str, span: LabeledSpan) -> list[ClusterOutput]:
        turn = state.turns.get(span.speaker)
        if turn is not None and span.start_ms - turn.end_ms <= self._turn_gap_ms:
            turn.end_ms = span.end_ms
            return []
        outputs: list[ClusterOutput] = []
        if turn is not None:
            outputs.append(_turn_message(session_id, span.speaker, turn, final=True))
        state.turns[span.speaker] = TurnExtent(start_ms=span.start_ms, end_ms=span.end_ms)
        outputs.append(_turn_message(session_id, span.speaker, state.turns[span.speaker], final=False))
        return outputs


def _turn_message(session_id: str, speaker: int, turn: TurnExtent, final: bool) -> SpeakerTurn:
    return SpeakerTurn(session_id=session_id, speaker=speaker, start_ms=turn.start_ms, end_ms=turn.end_ms, final=final)
