"""Online speaker clustering: embedded steps in, speaker updates, turns and a report out.

Each session keeps one centroid per speaker. A step's embedding joins the most
similar speaker, or opens a new one when it is unlike all of them and the
session is under its speaker limit; past the limit, voices unlike every tracked
speaker are ignored (extra voices, noise). A step's voiced time goes to its
speaker; a voiced step too short to embed goes to the speaker of the speech
around it.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.config import ClusteringConfig
from pipeline.stages.base import ClusterOutput, JsonSessionState
from topics.messages import (
    SAMPLE_RATE,
    LabeledSpan,
    ReportedSpeaker,
    ReportedTurn,
    SessionReport,
    SessionStart,
    SessionStop,
    SpeakerTurn,
    SpeakerUpdate,
    StepEmbedding,
)


def samples_to_ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


class TurnInSamples(BaseModel):
    """One speaker's turn, as stream positions [start, end) in samples."""

    speaker: int
    start: int
    end: int


class ClusteringSessionState(JsonSessionState):
    """One session's speakers, talk time and turns; versioned JSON in the changelog."""

    model_config = ConfigDict(extra="forbid")

    speaker_limit: int
    last_step: int = -1
    position: int = 0
    centroid_sums: list[list[float]] = []
    voiced_samples: list[int] = []
    # Voiced time seen before any speaker could be named; it goes to the next speaker named.
    unattributed: int = 0
    # The speaker of the last voiced step, while speech continues.
    speaking: int | None = None
    turn: TurnInSamples | None = None
    closed_turns: list[TurnInSamples] = []


class ClusteringStage:
    """The fast profile's cluster stage (`pipeline.stages.base.ClusterStage`)."""

    state_type = ClusteringSessionState
    input_type = StepEmbedding

    def __init__(self, config: ClusteringConfig) -> None:
        self.config = config
        self._max_gap = int(config.max_turn_gap_s * SAMPLE_RATE)

    def start(self, message: SessionStart) -> ClusteringSessionState:
        return ClusteringSessionState(speaker_limit=message.speaker_limit)

    def push(self, state: ClusteringSessionState, step: StepEmbedding) -> list[ClusterOutput]:
        """Apply one step; replayed steps are ignored."""
        if step.step <= state.last_step:
            return []
        state.last_step = step.step
        state.position = step.end
        outputs: list[ClusterOutput] = []
        speaker = self._speaker_of(state, step)
        if speaker is not None:
            state.voiced_samples[speaker] += step.voiced + state.unattributed
            state.unattributed = 0
            outputs += self._extend_turn(state, step.session_id, speaker, step.start, step.end)
        elif step.voiced and step.embedding is None:
            state.unattributed += step.voiced
        state.speaking = speaker
        outputs += self._close_stale_turn(state, step.session_id)
        outputs.append(
            SpeakerUpdate(
                session_id=step.session_id,
                position_ms=samples_to_ms(step.end),
                current_speaker=speaker,
                active_speakers=[] if speaker is None else [speaker],
                spans=[]
                if speaker is None
                else [
                    LabeledSpan(speaker=speaker, start_ms=samples_to_ms(a), end_ms=samples_to_ms(b))
                    for a, b in step.speech
                ],
                speaking_time_ms=self.speaking_time_ms(state),
                ingest_ms=step.ingest_ms,
            )
        )
        return outputs

    def finish(self, state: ClusteringSessionState, message: SessionStop) -> list[ClusterOutput]:
        """The open turn, closed, then the report; the session lasts as long as the stop says the producer sent."""
        # Voiced time still unattributed here was never near a named speaker: it stays uncounted.
        session_id = message.session_id
        outputs: list[ClusterOutput] = []
        if state.turn is not None:
            outputs.append(self._close_turn(state, session_id))
        totals = self.speaking_time_ms(state)
        outputs.append(
            SessionReport(
                session_id=session_id,
                duration_ms=samples_to_ms(message.offset),
                speakers=[ReportedSpeaker(id=i, total_time_ms=ms) for i, ms in totals.items()],
                turns=[
                    ReportedTurn(speaker=t.speaker, start_ms=samples_to_ms(t.start), end_ms=samples_to_ms(t.end))
                    for t in state.closed_turns
                ],
            )
        )
        return outputs

    @staticmethod
    def speaking_time_ms(state: ClusteringSessionState) -> dict[int, int]:
        return {i: samples_to_ms(v) for i, v in enumerate(state.voiced_samples)}

    def _speaker_of(self, state: ClusteringSessionState, step: StepEmbedding) -> int | None:
        if not step.voiced:
            return None
        if step.embedding is None:
            # Too little speech to embed: it belongs to whoever is talking through it.
            return state.speaking
        embedding = np.asarray(step.embedding, dtype=np.float64)
        if not state.centroid_sums:
            return self._open_speaker(state, embedding)
        sums = np.asarray(state.centroid_sums)
        similarities = sums @ embedding / np.linalg.norm(sums, axis=1)
        best = int(np.argmax(similarities))
        similarity = float(similarities[best])
        if similarity < self.config.new_speaker_similarity and len(sums) < state.speaker_limit:
            return self._open_speaker(state, embedding)
        if similarity < self.config.ignore_similarity:
            return None
        if similarity >= self.config.update_similarity:
            state.centroid_sums[best] = (sums[best] + embedding).tolist()
        return best

    @staticmethod
    def _open_speaker(state: ClusteringSessionState, embedding: np.ndarray) -> int:
        state.centroid_sums.append(embedding.tolist())
        state.voiced_samples.append(0)
        return len(state.centroid_sums) - 1

    def _extend_turn(
        self, state: ClusteringSessionState, session_id: str, speaker: int, start: int, end: int
    ) -> list[ClusterOutput]:
        if state.turn is not None and state.turn.speaker == speaker:
            state.turn.end = end
            return []
        outputs: list[ClusterOutput] = []
        if state.turn is not None:
            outputs.append(self._close_turn(state, session_id))
        state.turn = TurnInSamples(speaker=speaker, start=start, end=end)
        outputs.append(self._turn_message(session_id, state.turn, final=False))
        return outputs

    def _close_stale_turn(self, state: ClusteringSessionState, session_id: str) -> list[ClusterOutput]:
        if state.turn is not None and state.position - state.turn.end > self._max_gap:
            return [self._close_turn(state, session_id)]
        return []

    def _close_turn(self, state: ClusteringSessionState, session_id: str) -> SpeakerTurn:
        turn, state.turn = state.turn, None
        assert turn is not None
        state.closed_turns.append(turn)
        return self._turn_message(session_id, turn, final=True)

    @staticmethod
    def _turn_message(session_id: str, turn: TurnInSamples, final: bool) -> SpeakerTurn:
        return SpeakerTurn(
            session_id=session_id,
            speaker=turn.speaker,
            start_ms=samples_to_ms(turn.start),
            end_ms=samples_to_ms(turn.end),
            final=final,
        )
