"""Online speaker clustering: embedded steps in, speaker updates, turns and a report out.

Each session keeps one centroid per speaker. A step's embedding joins the most
similar speaker, or opens a new one when it is unlike all of them and the
session is under its speaker limit (the count when given, else `max_speakers`).
A step's voiced time goes to its speaker; a voiced step too short to embed goes
to the speaker of the speech around it.

Past the limit, a voice unlike every speaker opens a *provisional* voice that
clients never see: its steps are labelled with the most similar speaker, or with
nobody below `ignore_similarity`. Once it has taken `provisional_min_steps` steps
it is evidence that the session holds one voice more than it may, so the cheapest
merge that gets back to the limit is made, at Ward's cost
``steps_a * steps_b / (steps_a + steps_b) * (1 - cosine)`` over the pairs at least
`ignore_similarity` alike:

- the provisional voice joins its nearest speaker: it was an odd stretch of a known voice;
- or two speakers merge: one voice had opened two of them on mixed evidence (a twin),
  and the provisional voice takes the id this frees, so a known count is never spent
  on two clusters of one voice while another voice goes unlabelled;
- or, alike to nothing, it stays ignored (extra voices, noise), as it does at the end.

The report is the session seen whole: the speech is kept in pieces of at most
`report_piece_steps` steps with the sum of their embeddings, and each piece goes to
the final speaker its embeddings are most like, which also corrects what a voice's
first words were given before its speaker opened.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.config import ClusteringConfig
from pipeline.stages.base import ClusterOutput, JsonSessionState
from pipeline.stages.speaker_naming import Centroid, SpeakerNaming, SpeakerNamingState, with_voices
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

# Embedding sums kept for the report: four decimals keep cosines to 1e-4 at a third of the JSON.
_DECIMALS = 4


def samples_to_ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


def _unit(vector: list[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    return array / np.linalg.norm(array)


class TurnInSamples(BaseModel):
    """One speaker's turn, as stream positions [start, end) in samples."""

    speaker: int
    start: int
    end: int


class Voice(BaseModel):
    """What the session knows of one voice: its confident embeddings summed, the steps it took, its voiced time."""

    model_config = ConfigDict(extra="forbid")

    centroid_sum: list[float]
    steps: int = 1
    voiced: int = 0


class ProvisionalVoice(Voice):
    """A voice heard past the speaker limit, not (yet) one of the session's speakers."""

    number: int


class Heard(BaseModel):
    """Whose voice a step was: a speaker's (by id) or a provisional voice's (by number)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    speaker: int | None = None
    provisional: int | None = None


class Piece(BaseModel):
    """Consecutive steps of one voice, kept for the report: where, how much speech, and their embeddings summed."""

    model_config = ConfigDict(extra="forbid")

    heard: Heard | None
    start: int
    end: int
    steps: int = 1
    voiced: int = 0
    embedding_sum: list[float] | None = None


class ClusteringSessionState(JsonSessionState):
    """One session's speakers, provisional voices, talk time, turns and report pieces; versioned JSON in the changelog."""

    # 3: the names of known speakers.
    VERSION = 3
    model_config = ConfigDict(extra="forbid")

    speaker_limit: int
    last_step: int = -1
    position: int = 0
    speakers: list[Voice] = []
    provisional: list[ProvisionalVoice] = []
    provisional_opened: int = 0
    # Voiced time seen before any voice could be named; it goes to the next voice named.
    unattributed: int = 0
    # The voice of the last voiced step, while speech continues.
    speaking: Heard | None = None
    turn: TurnInSamples | None = None
    pieces: list[Piece] = []
    naming: SpeakerNamingState = SpeakerNamingState()


class ClusteringStage:
    """The fast profile's cluster stage (`pipeline.stages.base.ClusterStage`)."""

    state_type = ClusteringSessionState
    input_type = StepEmbedding

    def __init__(
        self, config: ClusteringConfig, naming: SpeakerNaming | None = None, embedding_model: str | None = None
    ) -> None:
        self.config = config
        self.embedding_model = embedding_model  # the space of the embeddings it clusters, named in the report
        self._max_gap = int(config.max_turn_gap_s * SAMPLE_RATE)
        self.naming = naming  # None: speakers are never named

    def start(self, message: SessionStart) -> ClusteringSessionState:
        naming = self.naming.start(message) if self.naming is not None else SpeakerNamingState()
        return ClusteringSessionState(speaker_limit=message.speaker_limit, naming=naming)

    @staticmethod
    def centroids(state: ClusteringSessionState) -> dict[int, Centroid]:
        """Each speaker's centroid, for naming it."""
        return {i: Centroid(np.asarray(v.centroid_sum), v.steps) for i, v in enumerate(state.speakers)}

    def push(self, state: ClusteringSessionState, step: StepEmbedding) -> list[ClusterOutput]:
        """Apply one step; replayed steps are ignored."""
        if step.step <= state.last_step:
            return []
        state.last_step = step.step
        state.position = step.end
        outputs: list[ClusterOutput] = []
        heard = self._voice_of(state, step)
        state.speaking = heard
        speaker = None
        if heard is not None:
            voiced = step.voiced + state.unattributed
            state.unattributed = 0
            self._voice(state, heard).voiced += voiced
            self._keep_piece(state, heard, step, voiced)
            outputs += self._resolve(state, step.session_id)
            speaker = self._live_speaker(state, step)
        elif step.voiced and step.embedding is None:
            state.unattributed += step.voiced
        if speaker is not None:
            outputs += self._extend_turn(state, step.session_id, speaker, step.start, step.end)
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
        if self.naming is not None:
            self.naming.match(state.naming, self.centroids(state))
            outputs = self.naming.label(state.naming, outputs)
        return outputs

    def finish(self, state: ClusteringSessionState, message: SessionStop) -> list[ClusterOutput]:
        """The open turn, closed, then the report; the session lasts as long as the stop says the producer sent."""
        # Voiced time still unattributed here was never near a named voice: it stays uncounted.
        session_id = message.session_id
        outputs: list[ClusterOutput] = []
        if state.turn is not None:
            outputs.append(self._close_turn(state, session_id))
        for voice in list(state.provisional):
            nearest, similarity = self._nearest_speaker(state, voice.centroid_sum)
            if nearest is not None and similarity >= self.config.ignore_similarity:
                self._absorb(state, voice, nearest)
            else:
                self._drop(state, voice)
        self._assign_pieces(state)
        totals = [0] * len(state.speakers)
        for piece in state.pieces:
            if piece.heard is not None and piece.heard.speaker is not None:
                totals[piece.heard.speaker] += piece.voiced
        if self.naming is not None:
            outputs = self.naming.label(state.naming, outputs)
        report = SessionReport(
            session_id=session_id,
            duration_ms=samples_to_ms(message.offset),
            speakers=[ReportedSpeaker(id=i, total_time_ms=samples_to_ms(v)) for i, v in enumerate(totals)],
            turns=[
                ReportedTurn(speaker=t.speaker, start_ms=samples_to_ms(t.start), end_ms=samples_to_ms(t.end))
                for t in self._report_turns(state)
            ],
        )
        report = with_voices(report, self.centroids(state), self.embedding_model)
        if self.naming is not None:
            report = self.naming.label_report(state.naming, report, self.centroids(state))
        outputs.append(report)
        return outputs

    @staticmethod
    def speaking_time_ms(state: ClusteringSessionState) -> dict[int, int]:
        return {i: samples_to_ms(v.voiced) for i, v in enumerate(state.speakers)}

    # ---- which voice a step is -----------------------------------------------------------

    def _voice_of(self, state: ClusteringSessionState, step: StepEmbedding) -> Heard | None:
        if not step.voiced:
            return None
        if step.embedding is None:
            # Too little speech to embed: it belongs to whoever is talking through it.
            return state.speaking
        embedding = np.asarray(step.embedding, dtype=np.float64)
        voices: list[tuple[Heard, Voice]] = [(Heard(speaker=i), v) for i, v in enumerate(state.speakers)]
        voices += [(Heard(provisional=v.number), v) for v in state.provisional]
        if not voices:
            return self._open_speaker(state, embedding)
        similarities = [float(_unit(v.centroid_sum) @ embedding) for _, v in voices]
        best = int(np.argmax(similarities))
        heard, voice = voices[best]
        if similarities[best] >= self.config.new_speaker_similarity:
            voice.steps += 1
            # Only confident assignments move a centroid, so one odd window cannot drag a voice away.
            if similarities[best] >= self.config.update_similarity:
                voice.centroid_sum = (np.asarray(voice.centroid_sum) + embedding).tolist()
            return heard
        if len(state.speakers) < state.speaker_limit:
            return self._open_speaker(state, embedding)
        if len(state.provisional) < self.config.max_provisional:
            state.provisional.append(ProvisionalVoice(centroid_sum=embedding.tolist(), number=state.provisional_opened))
            state.provisional_opened += 1
            return Heard(provisional=state.provisional[-1].number)
        # As many provisional voices as may be open: the step goes to the most alike of them.
        closest = max(state.provisional, key=lambda v: float(_unit(v.centroid_sum) @ embedding))
        closest.steps += 1
        return Heard(provisional=closest.number)

    @staticmethod
    def _open_speaker(state: ClusteringSessionState, embedding: np.ndarray) -> Heard:
        state.speakers.append(Voice(centroid_sum=embedding.tolist()))
        return Heard(speaker=len(state.speakers) - 1)

    def _live_speaker(self, state: ClusteringSessionState, step: StepEmbedding) -> int | None:
        """The id clients see for the step: its speaker, or for a provisional voice the speaker most like it."""
        heard = state.speaking
        assert heard is not None
        if heard.speaker is not None:
            return heard.speaker
        evidence = step.embedding if step.embedding is not None else self._voice(state, heard).centroid_sum
        nearest, similarity = self._nearest_speaker(state, evidence)
        return nearest if similarity >= self.config.ignore_similarity else None

    @staticmethod
    def _nearest_speaker(state: ClusteringSessionState, vector: list[float]) -> tuple[int | None, float]:
        if not state.speakers:
            return None, -1.0
        similarities = np.array([_unit(v.centroid_sum) for v in state.speakers]) @ _unit(vector)
        best = int(np.argmax(similarities))
        return best, float(similarities[best])

    @staticmethod
    def _voice(state: ClusteringSessionState, heard: Heard) -> Voice:
        if heard.speaker is not None:
            return state.speakers[heard.speaker]
        return next(v for v in state.provisional if v.number == heard.provisional)

    # ---- getting back to the speaker limit ------------------------------------------------

    def _resolve(self, state: ClusteringSessionState, session_id: str) -> list[ClusterOutput]:
        """Settle every provisional voice with enough steps by the cheapest merge (see the module's docstring)."""
        outputs: list[ClusterOutput] = []
        for voice in [v for v in state.provisional if v.steps >= self.config.provisional_min_steps]:
            nearest, similarity = self._nearest_speaker(state, voice.centroid_sum)
            assert nearest is not None  # provisional voices open only once the limit is reached
            join_cost = (
                self._ward_cost(voice.steps, state.speakers[nearest].steps, similarity)
                if similarity >= self.config.ignore_similarity
                else np.inf
            )
            pair, pair_cost = self._cheapest_speaker_pair(state)
            if pair is not None and pair_cost < join_cost:
                outputs += self._merge_twins(state, session_id, *pair)
                freed = pair[1]
                state.speakers[freed] = Voice(centroid_sum=voice.centroid_sum, steps=voice.steps, voiced=voice.voiced)
                self._relabel(state, Heard(provisional=voice.number), Heard(speaker=freed))
                state.provisional.remove(voice)
            elif join_cost < np.inf:
                self._absorb(state, voice, nearest)
        return outputs

    @staticmethod
    def _ward_cost(
        steps_a: float | np.ndarray, steps_b: float | np.ndarray, similarity: float | np.ndarray
    ) -> float | np.ndarray:
        """What merging two voices loses: more, the more steps each has and the less alike they are."""
        return steps_a * steps_b / (steps_a + steps_b) * (1.0 - similarity)

    def _cheapest_speaker_pair(self, state: ClusteringSessionState) -> tuple[tuple[int, int] | None, float]:
        """(kept, freed) ids of the two speakers cheapest to merge, the one with more voiced time kept, and the cost."""
        units = np.array([_unit(v.centroid_sum) for v in state.speakers])
        steps = np.array([v.steps for v in state.speakers], dtype=np.float64)
        similarities = units @ units.T
        costs = self._ward_cost(steps[:, None], steps[None, :], similarities)
        costs[similarities < self.config.ignore_similarity] = np.inf
        costs[np.tril_indices(len(steps))] = np.inf  # each pair once, never a speaker with itself
        if not np.isfinite(costs).any():
            return None, np.inf
        a, b = (int(i) for i in np.unravel_index(int(np.argmin(costs)), costs.shape))
        pair = (a, b) if state.speakers[a].voiced >= state.speakers[b].voiced else (b, a)
        return pair, float(costs[a, b])

    def _merge_twins(
        self, state: ClusteringSessionState, session_id: str, kept: int, freed: int
    ) -> list[ClusterOutput]:
        """Speaker `freed` was `kept` all along: one voice, one speaker. A turn open under the freed id closes."""
        twin, survivor = state.speakers[freed], state.speakers[kept]
        survivor.centroid_sum = (np.asarray(survivor.centroid_sum) + np.asarray(twin.centroid_sum)).tolist()
        survivor.steps += twin.steps
        survivor.voiced += twin.voiced
        self._relabel(state, Heard(speaker=freed), Heard(speaker=kept))
        if state.turn is not None and state.turn.speaker == freed:
            return [self._close_turn(state, session_id)]
        return []

    def _absorb(self, state: ClusteringSessionState, voice: ProvisionalVoice, speaker: int) -> None:
        """The provisional voice was `speaker` all along. Its centroid stays: none of its steps was a confident match."""
        state.speakers[speaker].steps += voice.steps
        state.speakers[speaker].voiced += voice.voiced
        self._relabel(state, Heard(provisional=voice.number), Heard(speaker=speaker))
        state.provisional.remove(voice)

    def _drop(self, state: ClusteringSessionState, voice: ProvisionalVoice) -> None:
        self._relabel(state, Heard(provisional=voice.number), None)
        state.provisional.remove(voice)

    @staticmethod
    def _relabel(state: ClusteringSessionState, old: Heard, new: Heard | None) -> None:
        for piece in state.pieces:
            if piece.heard == old:
                piece.heard = new
        if state.speaking == old:
            state.speaking = new

    # ---- the report ---------------------------------------------------------------------

    def _keep_piece(self, state: ClusteringSessionState, heard: Heard, step: StepEmbedding, voiced: int) -> None:
        last = state.pieces[-1] if state.pieces else None
        if (
            last is not None
            and last.heard == heard
            and last.end == step.start
            and last.steps < self.config.report_piece_steps
        ):
            last.end = step.end
            last.steps += 1
            last.voiced += voiced
        else:
            last = Piece(heard=heard, start=step.start, end=step.end, voiced=voiced)
            state.pieces.append(last)
        if step.embedding is not None:
            total = np.asarray(step.embedding) + (0.0 if last.embedding_sum is None else np.asarray(last.embedding_sum))
            last.embedding_sum = np.round(total, _DECIMALS).tolist()

    def _assign_pieces(self, state: ClusteringSessionState) -> None:
        """Each embedded piece to the final speaker most like it, or to nobody when it is like none of them."""
        if not state.speakers:
            return
        units = np.array([_unit(v.centroid_sum) for v in state.speakers])
        for piece in state.pieces:
            if piece.embedding_sum is None or piece.heard is None:
                continue
            similarities = units @ _unit(piece.embedding_sum)
            best = int(np.argmax(similarities))
            piece.heard = Heard(speaker=best) if similarities[best] >= self.config.ignore_similarity else None

    def _report_turns(self, state: ClusteringSessionState) -> list[TurnInSamples]:
        """The pieces as turns, by the live rule: a speaker's turn survives pauses up to `max_turn_gap_s`."""
        turns: list[TurnInSamples] = []
        for piece in state.pieces:
            if piece.heard is None or piece.heard.speaker is None:
                continue
            last = turns[-1] if turns else None
            if last is not None and last.speaker == piece.heard.speaker and piece.start - last.end <= self._max_gap:
                last.end = piece.end
            else:
                turns.append(TurnInSamples(speaker=piece.heard.speaker, start=piece.start, end=piece.end))
        return turns

    # ---- live turns ---------------------------------------------------------------------

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
